"""One generation that is running: its prompt, server, step and a progress bar."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label, ProgressBar

from socialsync.tui.state import GenerationLive


class GenerationRow(Horizontal, can_focus=True):
    """Focus it and press enter (or click it) to open the generation."""

    DEFAULT_CSS = """
    GenerationRow { height: 1; width: 1fr; }
    GenerationRow:focus { background: $boost; }
    GenerationRow .gen-prompt { width: 1fr; min-width: 10; text-wrap: nowrap; text-overflow: ellipsis; }
    GenerationRow .gen-meta { width: auto; padding: 0 1; color: $text-muted; }
    GenerationRow ProgressBar { width: 28; }
    GenerationRow ProgressBar Bar { width: 20; }
    GenerationRow.-completed Bar > .bar--complete { color: $success; }
    GenerationRow.-failed .gen-meta, GenerationRow.-cancelled .gen-meta { color: $error; }
    """

    BINDINGS = [Binding("enter", "open", "Open", show=False)]

    class Opened(Message):
        def __init__(self, generation_id: int) -> None:
            super().__init__()
            self.generation_id = generation_id

    def __init__(self, generation: GenerationLive, server_name: str, **kw) -> None:
        super().__init__(id=f"gen-{generation.id}", **kw)
        self.generation_id = generation.id
        self._prompt = Label(classes="gen-prompt")
        self._meta = Label(classes="gen-meta")
        self._bar = ProgressBar(total=100, show_eta=False)
        self._initial = (generation, server_name)

    def compose(self) -> ComposeResult:
        yield self._prompt
        yield self._meta
        yield self._bar

    def on_mount(self) -> None:
        self.show(*self._initial)

    @property
    def progress(self) -> float:
        return self._bar.progress

    def show(self, g: GenerationLive, server_name: str) -> None:
        # The whole prompt (one line): it takes the width the row has free and ends with
        # "…" where it is cut.
        prompt = " ".join(g.prompt.split()) if g.prompt is not None else "…"
        self._prompt.update(Text(f"#{g.id} {prompt}"))
        # While it runs, the step says so (and leaves the prompt more room); otherwise the status.
        state = "" if g.status == "processing" and g.steps else f" · {g.status}"
        step = f" · step {g.step}/{g.steps}" if g.steps else ""
        self._meta.update(f"{server_name}{step}{state}")
        self._bar.update(progress=g.progress)
        for status in ("completed", "failed", "cancelled"):
            self.set_class(g.status == status, f"-{status}")

    def on_click(self) -> None:
        self.post_message(self.Opened(self.generation_id))

    def action_open(self) -> None:
        self.post_message(self.Opened(self.generation_id))
