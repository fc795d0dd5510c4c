"""Generate: prompt, negative prompt, size, steps, cfg, sampler and workflow, on a server.
The daemon's refusals (a server not ready, a bad value) are shown under the form."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Input, Label, Select, Static

from socialsync.tui.format import describe_error
from socialsync.tui.screens.base import VIEWER_REASON, LiveScreen
from socialsync.tui.state import Changed
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.labeled_select import LabeledSelect
from socialsync.tui.widgets.role_notice import RoleNotice

SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "ddim", "uni_pc", "lcm")
BUILT_IN = 0  # the Select value of the built-in txt2img workflow
NUMBERS = (  # (parameter, label, default, type)
    ("width", "width", "512", int),
    ("height", "height", "512", int),
    ("steps", "steps", "20", int),
    ("cfg_scale", "cfg", "7.0", float),
)


class GenerateScreen(LiveScreen):
    TITLE = "Generate"

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="generate.back"),
        Binding("ctrl+s", "submit", "Generate", id="generate.submit"),
    ]
    OPERATOR_ONLY = frozenset({"submit"})

    def __init__(self, server_id: int | None = None) -> None:
        super().__init__()
        self.server_id = server_id

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield RoleNotice(actions="generating")
        with VerticalScroll(id="generate-form"):
            yield Label("New generation", classes="section")
            yield LabeledSelect(self._server_options(), label="server", prompt="pick a server", id="g-server")
            prompt = Input(placeholder="a lighthouse at dusk, oil painting", id="g-prompt")
            prompt.border_title = "prompt"
            yield prompt
            negative = Input(placeholder="blurry, low quality", id="g-negative")
            negative.border_title = "negative prompt"
            yield negative
            with Grid(id="g-numbers"):
                for param, label, default, _ in NUMBERS:
                    box = Input(value=default, id=f"g-{param}", type="number" if param == "cfg_scale" else "integer")
                    box.border_title = label
                    yield box
                yield LabeledSelect([(s, s) for s in SAMPLERS], label="sampler", prompt="server default",
                                    id="g-sampler", classes="wide")
                yield LabeledSelect([("built-in txt2img", BUILT_IN)], label="workflow", value=BUILT_IN,
                                    allow_blank=False, id="g-workflow", classes="wide")
            yield Static("", id="g-error")
            with Horizontal(id="g-buttons"):
                yield Button("Generate", id="g-submit", variant="success", disabled=self.ss.read_only)
                yield Button("Back", id="g-back")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        select = self.query_one("#g-server", Select)
        ready = [s for s in self.live.servers.values() if str(s.setup_status) == "ready"]
        chosen = self.server_id if self.server_id in self.live.servers else (ready[0].id if ready else None)
        if chosen is not None:
            select.value = chosen
        if self.ss.read_only:
            self._error(f"Generating is disabled: {VIEWER_REASON}.")
        self.load_workflows()
        self.query_one("#g-prompt", Input).focus()

    def _server_options(self) -> list[tuple[str, int]]:
        options = []
        for s in sorted(self.live.servers.values(), key=lambda s: s.id):
            ready = "ready" if str(s.setup_status) == "ready" else f"{s.status}/{s.setup_status}"
            options.append((f"{s.name} (#{s.id}, {ready})", s.id))
        return options

    def on_live_changed(self, message: Changed) -> None:
        if message.servers:
            select = self.query_one("#g-server", Select)
            value = select.value
            select.set_options(self._server_options())
            if isinstance(value, int) and value in self.live.servers:
                select.value = value

    @work(group="workflows", exclusive=True, exit_on_error=False)
    async def load_workflows(self) -> None:
        try:
            workflows = await self.ss.client.request("GET", "/api/workflows") or []
        except Exception:
            return  # the built-in one still works
        options = [("built-in txt2img", BUILT_IN)] + [(f"{w['name']} (#{w['id']})", int(w["id"])) for w in workflows]
        self.query_one("#g-workflow", Select).set_options(options)

    # -- submit -------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        """The request, from the form; ``ValueError`` names a field that is not a number."""
        params: dict[str, Any] = {}
        for param, label, _, kind in NUMBERS:
            raw = self.query_one(f"#g-{param}", Input).value.strip()
            if raw:
                try:
                    params[param] = kind(raw)
                except ValueError:
                    raise ValueError(f"{label} must be a number, not {raw!r}") from None
        sampler = self.query_one("#g-sampler", Select).value
        if isinstance(sampler, str):
            params["sampler"] = sampler
        body: dict[str, Any] = {
            "prompt": self.query_one("#g-prompt", Input).value,
            "negativePrompt": self.query_one("#g-negative", Input).value,
            "parameters": params,
        }
        workflow = self.query_one("#g-workflow", Select).value
        if isinstance(workflow, int) and workflow != BUILT_IN:
            body["workflowId"] = workflow
        return body

    @on(Button.Pressed, "#g-submit")
    @on(Input.Submitted)
    def action_submit(self) -> None:
        if not self.operator_allowed("generate"):
            return
        server = self.query_one("#g-server", Select).value
        if not isinstance(server, int):
            self._error("Pick a server first.")
            return
        try:
            body = self.body()
        except ValueError as exc:
            self._error(str(exc))
            return
        self.query_one("#g-submit", Button).disabled = True
        self.query_one("#g-error", Static).update(Text("Submitting …", style="bright_black"))
        self.submit(server, body)

    @on(Button.Pressed, "#g-back")
    def _back(self) -> None:
        self.app.pop_screen()

    @work(group="submit", exclusive=True, exit_on_error=False)
    async def submit(self, server: int, body: dict[str, Any]) -> None:
        result = await self.ss.client.request("POST", f"/api/comfy/{server}/generate", json=body)
        self.ss.generation_started(result or {}, server)

    def _error(self, text: str) -> None:
        self.query_one("#g-error", Static).update(Text(text, style="bold red"))

    def show_error(self, exc: BaseException) -> bool:
        self._error(describe_error(exc))
        self.query_one("#g-submit", Button).disabled = self.ss.read_only
        return True
