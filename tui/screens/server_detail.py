"""One server: its fields, status history, models and downloads, and its actions
(stop/start, reboot, destroy after a dialog that names it and its cost, generate,
download a model from the catalogue)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Footer, Label, Static, TabbedContent, TabPane

from socialsync.common.errors import ApiError
from socialsync.common.servers import Server
from socialsync.tui.format import (
    DOWNLOAD_STYLES,
    SETUP_STYLES,
    STATUS_STYLES,
    describe_error,
    duration,
    gpu_label,
    money,
    price,
    size,
    stamp,
)
from socialsync.tui.screens.base import VIEWER_REASON, LiveModal, LiveScreen
from socialsync.tui.screens.dialogs import ConfirmDialog
from socialsync.tui.state import Changed
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.role_notice import RoleNotice

TIME_TICK = 5.0  # seconds between redraws of uptime and cost, as on the fleet (no request: the local clock)
TABS = (("tab-overview", "Overview"), ("tab-history", "History"), ("tab-models", "Models"),
        ("tab-downloads", "Downloads"))
DOWNLOAD_COLUMNS = (("id", "#"), ("name", "Model"), ("folder", "Folder"), ("status", "Status"), ("done", "Done"),
                    ("rate", "Rate"), ("error", "Error"))


class ServerDetailScreen(LiveScreen):
    # The footer must fit 80 columns: the actions that also have a button on the Overview
    # tab (stop/start, reboot, destroy) and the tab keys are not in it; every one is in
    # the palette (ctrl+p) and in the keys panel (?).
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="server.back"),
        Binding("t", "stop_start", "Stop/Start", id="server.stop_start", show=False),
        Binding("b", "reboot", "Reboot", id="server.reboot", show=False),
        Binding("d", "destroy", "Destroy", id="server.destroy", show=False),
        Binding("g", "generate", "Generate", id="server.generate"),
        Binding("m", "download_model", "Get model", id="server.download_model"),
        Binding("right_square_bracket", "next_tab", "Next tab", id="server.next_tab", show=False),
        Binding("left_square_bracket", "previous_tab", "Previous tab", id="server.previous_tab", show=False),
        Binding("ctrl+r", "refresh", "Refresh", id="server.refresh", show=False),
    ]

    def __init__(self, server_id: int) -> None:
        super().__init__()
        self.server_id = server_id
        self.server: Server | None = None
        self.gone = False
        self.models_error: str | None = None

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield RoleNotice()
        yield Label(f"Server #{self.server_id}", id="server-title", classes="section")
        with TabbedContent(id="server-tabs"):
            with TabPane("Overview", id="tab-overview"), VerticalScroll():
                yield Static("Loading …", id="server-fields")
                with Horizontal(id="server-actions"):
                    yield Button("Stop", id="a-stop_start")
                    yield Button("Reboot", id="a-reboot")
                    yield Button("Destroy", id="a-destroy", variant="error")
                    yield Button("Generate", id="a-generate", variant="success")
                    yield Button("Get model", id="a-download_model")
                yield Static("", id="server-actions-why")
            with TabPane("History", id="tab-history"):
                yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
            with TabPane("Models", id="tab-models"):
                yield Static("", id="models-status")
                yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
            with TabPane("Downloads", id="tab-downloads"):
                yield Static("m downloads a model from the catalogue.", id="downloads-status")
                yield DataTable(id="downloads", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        history = self.query_one("#history", DataTable)
        for key, label in (("at", "When (UTC)"), ("status", "Status"), ("setup", "Setup"), ("reason", "Reason")):
            history.add_column(label, key=key)
        models = self.query_one("#models", DataTable)
        for key, label in (("folder", "Folder"), ("name", "File"), ("size", "Size")):
            models.add_column(label, key=key)
        downloads = self.query_one("#downloads", DataTable)
        for key, label in DOWNLOAD_COLUMNS:
            downloads.add_column(label, key=key)
        self.server = self.live.servers.get(self.server_id)
        self.show_server()
        self.load_server()
        self.load_history()
        self.load_models()
        self.load_downloads()
        if self.ss.time_ticks:
            self.set_interval(TIME_TICK, self._tick)

    def _tick(self) -> None:
        """Uptime and cost move with the clock: recompute them from the figures known here."""
        if self.server is not None and self.live.usage_now(self.server_id) is not None:
            self.show_server()

    # -- loading ------------------------------------------------------------------------

    @work(group="server", exclusive=True, exit_on_error=False)
    async def load_server(self) -> None:
        try:
            data = await self.ss.client.request("GET", f"/api/vast-servers/{self.server_id}")
        except ApiError as exc:
            if exc.status == 404:
                self.gone = True
                self.show_server()
                return
            raise
        self.server = Server.model_validate(data)
        self.gone = str(self.server.status) == "destroyed"
        self.show_server()

    @work(group="history", exclusive=True, exit_on_error=False)
    async def load_history(self) -> None:
        rows = await self.ss.client.request("GET", f"/api/vast-servers/{self.server_id}/history") or []
        table = self.query_one("#history", DataTable)
        table.clear()
        for h in rows:
            status, setup = str(h.get("status")), str(h.get("setupStatus"))
            table.add_row(stamp(h.get("at")), Text(status, style=STATUS_STYLES.get(status, "")),
                          Text(setup, style=SETUP_STYLES.get(setup, "")), h.get("reason") or "")
        table.border_title = f"{len(rows)} change(s), newest first"

    @work(group="models", exclusive=True, exit_on_error=False)
    async def load_models(self) -> None:
        status = self.query_one("#models-status", Static)
        table = self.query_one("#models", DataTable)
        try:
            data = await self.ss.client.request("GET", f"/api/comfy/{self.server_id}/models")
        except ApiError as exc:
            table.clear()
            status.update(Text(f"Models unavailable — {describe_error(exc)}", style="yellow"))
            return
        table.clear()
        for folder, files in (data.get("folders") or {}).items():
            for f in files:
                table.add_row(folder, f.get("name"), size(f.get("size")) if f.get("size") else "—")
        stale = " (ComfyUI did not answer: last known list)" if data.get("stale") else ""
        status.update(f"{data.get('count', table.row_count)} model(s), listed {stamp(data.get('refreshedAt'))}"
                      f"{stale}. m downloads one from the catalogue.")

    @work(group="downloads", exclusive=True, exit_on_error=False)
    async def load_downloads(self) -> None:
        try:
            rows = await self.ss.client.request("GET", f"/api/comfy/{self.server_id}/models/downloads") or []
        except ApiError as exc:
            self.query_one("#downloads-status", Static).update(Text(describe_error(exc), style="yellow"))
            return
        known = self.live.downloads.setdefault(self.server_id, {})
        for d in rows:
            known.setdefault(int(d["id"]), {}).update(d)
        self.show_downloads()

    # -- drawing ------------------------------------------------------------------------

    def show_server(self) -> None:
        s = self.server
        title = self.query_one("#server-title", Label)
        if s is None:
            title.update(f"Server #{self.server_id}" + (" — not found (destroyed?)" if self.gone else ""))
            self._update_buttons()
            return
        status, setup = str(s.status), str(s.setup_status)
        head = Text(f"{s.name} (#{s.id}) ")
        head.append(status, style=STATUS_STYLES.get(status, ""))
        head.append(" / ")
        head.append(setup, style=SETUP_STYLES.get(setup, ""))
        if self.gone:
            head.append("  — destroyed", style="bold red")
        head.append("   [ ] switch tabs", style="dim")  # the tab keys are not in the footer: no room at 80 columns
        title.update(head)
        usage = self.live.usage_now(s.id)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bright_black", no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row("Status", f"{status} / {setup}" + (f" — {s.status_message}" if s.status_message else ""))
        grid.add_row("GPU", gpu_label(s.gpu, s.gpu_count) + (
            f" ({s.metadata.get('vramTotalGb')} GB)" if s.metadata.get("vramTotalGb") else ""))
        grid.add_row("CPU / RAM / disk", f"{s.cpu_cores or '—'} cores / {s.ram or '—'} GB / {s.disk or '—'} GB")
        grid.add_row("Price", f"{price(s.price_per_hour)}/h" if s.price_per_hour else "—")
        if usage is not None:
            grid.add_row("Uptime / cost", f"{duration(usage[0])} running / {money(usage[1])} so far")
        grid.add_row("Location", s.location or "—")
        grid.add_row("Vast id", s.vast_id or "— (attached)")
        grid.add_row("ComfyUI", s.server_url or "—")
        grid.add_row("SSH", s.ssh_connection or "—")
        if s.metadata.get("comfyuiVersion"):
            grid.add_row("ComfyUI version", str(s.metadata["comfyuiVersion"]))
        grid.add_row("Running now", str(self.live.running_generations(s.id)) + " generation(s)")
        grid.add_row("Created / updated", f"{stamp(s.created_at.isoformat())} / {stamp(s.updated_at.isoformat())}")
        self.query_one("#server-fields", Static).update(grid)
        self._update_buttons()

    def _update_buttons(self) -> None:
        s = self.server
        stop = self.query_one("#a-stop_start", Button)
        stop.label = "Start" if s is not None and str(s.status) == "stopped" else "Stop"
        why = ""
        if self.ss.read_only:
            why = f"Actions are disabled: {VIEWER_REASON}."
        elif self.gone or s is None:
            why = "This server is gone; nothing to do."
        for button in self.query("#server-actions Button").results(Button):
            button.disabled = bool(why)
        if not why and s is not None and str(s.setup_status) != "ready":
            self.query_one("#a-generate", Button).disabled = True
            self.query_one("#a-download_model", Button).disabled = True
            why = "Generate and Get model wait until ComfyUI is ready."
        self.query_one("#server-actions-why", Static).update(why)

    def show_downloads(self) -> None:
        """Rows keyed by download id, changed in place (``model_download`` events come a
        few times a second per download)."""
        table = self.query_one("#downloads", DataTable)
        rows = sorted(self.live.downloads.get(self.server_id, {}).values(), key=lambda d: -int(d["id"]))
        added = False
        for d in rows:
            status = str(d.get("status"))
            done = d.get("bytesDone") or 0
            total = d.get("bytesTotal")
            pct = f"{done * 100 // total}% of {size(total)}" if total else size(done) if done else "—"
            rate = f"{size(d['rate'])}/s" if d.get("rate") else "—"
            cells = {"id": str(d["id"]), "name": d.get("name") or d.get("filename"), "folder": d.get("folder"),
                     "status": Text(status, style=DOWNLOAD_STYLES.get(status, "")), "done": pct, "rate": rate,
                     "error": d.get("error") or ""}
            key = str(d["id"])
            if key in table.rows:
                for column, value in cells.items():
                    # A status or an error that grows must widen its column, not be cut.
                    table.update_cell(key, column, value, update_width=True)
            else:
                table.add_row(*cells.values(), key=key)
                added = True
        if added:
            table.sort("id", key=lambda v: -int(v))
        table.border_title = f"{len(rows)} download(s)"
        if table.row_count:
            self._show_download_status(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def on_live_changed(self, message: Changed) -> None:
        if message.usage:
            self.show_server()
        if message.resynced:
            self.load_server()
            self.load_history()
            self.load_downloads()
            return
        if self.server_id in message.servers:
            before = self.server
            now = self.live.servers.get(self.server_id)
            if now is None:
                self.load_server()  # destroyed (or gone): the daemon says which
            else:
                was_ready = before is not None and str(before.setup_status) == "ready"
                self.server = now
                self.show_server()
                if str(now.setup_status) == "ready" and not was_ready:
                    self.load_models()
            self.load_history()
        if self.server_id in message.downloads:
            self.show_downloads()
            if any(str(d.get("status")) == "completed" for d in self.live.downloads[self.server_id].values()):
                self.load_models()

    @on(DataTable.RowHighlighted, "#downloads")
    def _download_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_download_status(event.row_key.value)

    def _show_download_status(self, key: str | None) -> None:
        """The whole story of the highlighted download (its error does not fit a cell),
        redrawn when the cursor moves and when the download changes."""
        d = self.live.downloads.get(self.server_id, {}).get(int(key)) if key is not None else None
        if not d:
            return
        text = Text(f"#{d['id']} {d.get('folder')}/{d.get('filename')}: {d.get('status')}")
        if d.get("error"):
            text.append(f" — {d['error']}", style="red")
        self.query_one("#downloads-status", Static).update(text)

    # -- actions ------------------------------------------------------------------------

    @on(Button.Pressed, "#server-actions Button")
    def _button(self, event: Button.Pressed) -> None:
        action = (event.button.id or "").removeprefix("a-")
        self.run_action(action)

    # -- tabs ---------------------------------------------------------------------------

    def _step_tab(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        ids = [tab_id for tab_id, _ in TABS]
        i = ids.index(tabs.active) if tabs.active in ids else 0
        tabs.active = ids[(i + step) % len(ids)]

    def action_next_tab(self) -> None:
        self._step_tab(1)

    def action_previous_tab(self) -> None:
        self._step_tab(-1)

    def action_show_tab(self, tab_id: str) -> None:
        self.query_one(TabbedContent).active = tab_id

    def palette_commands(self) -> list[tuple[str, str, str]]:
        """(title, action, help) the palette offers on this screen besides its bindings."""
        return [(f"Show the {label} tab", f"show_tab('{tab_id}')", "key ] next tab, key [ previous")
                for tab_id, label in TABS]

    def action_refresh(self) -> None:
        self.load_server()
        self.load_history()
        self.load_models()
        self.load_downloads()

    def _usable(self, what: str) -> bool:
        if not self.operator_allowed(what):
            return False
        if self.gone or self.server is None:
            self.notify("This server is gone.", severity="warning")
            return False
        return True

    def action_stop_start(self) -> None:
        if not self._usable("stop or start a server"):
            return
        assert self.server is not None
        target = "running" if str(self.server.status) == "stopped" else "stopped"
        if target == "stopped":
            body = (f"Stop {self.server.name} (#{self.server_id})? The GPU is released (running generations "
                    "fail); the disk is kept and still billed. Start it again later — if the host has a GPU free.")
            self.app.push_screen(ConfirmDialog(f"Stop {self.server.name}?", body, "Stop"),
                                 lambda ok: ok and self.set_status(target))
        else:
            self.set_status(target)

    @work(group="actions", exit_on_error=False)
    async def set_status(self, status: str) -> None:
        data = await self.ss.client.request("PATCH", f"/api/vast-servers/{self.server_id}", json={"status": status})
        self.server = Server.model_validate(data)
        self.show_server()
        self.notify(f"{self.server.name}: {'starting' if status == 'running' else 'stopping'}.")

    def action_reboot(self) -> None:
        if self._usable("reboot a server"):
            assert self.server is not None
            body = f"Reboot {self.server.name} (#{self.server_id})? Its container restarts; running generations fail."
            self.app.push_screen(ConfirmDialog(f"Reboot {self.server.name}?", body, "Reboot"),
                                 lambda ok: ok and self.reboot())

    @work(group="actions", exit_on_error=False)
    async def reboot(self) -> None:
        data = await self.ss.client.request("POST", f"/api/vast-servers/{self.server_id}/reboot")
        self.server = Server.model_validate(data)
        self.show_server()
        self.notify(f"{self.server.name}: rebooting.")

    def action_destroy(self) -> None:
        if self._usable("destroy a server"):
            self.ss.confirm_destroy(self.server_id)

    def action_generate(self) -> None:
        self.ss.action_generate(self.server_id)

    def action_download_model(self) -> None:
        if self._usable("download a model"):
            self.app.push_screen(CatalogDialog(self.server_id), self._download_started)

    def _download_started(self, accepted: dict[str, Any] | None) -> None:
        if accepted:
            d = accepted.get("download") or {}
            if d.get("id") is not None:
                self.live.downloads.setdefault(self.server_id, {})[int(d["id"])] = d
            self.show_downloads()
            self.query_one(TabbedContent).active = "tab-downloads"
            self.notify(accepted.get("message", "Download started."), title="Model download")


class CatalogDialog(LiveModal):
    """The curated catalogue for one server; enter downloads the highlighted model."""

    DEFAULT_CSS = """
    CatalogDialog { align: center middle; }
    CatalogDialog > Vertical {
        width: 90%; height: 90%; border: thick $primary; background: $surface; padding: 0 1;
    }
    CatalogDialog DataTable { height: 1fr; }
    CatalogDialog #catalog-about { height: auto; max-height: 5; }
    CatalogDialog #catalog-error { color: $error; text-style: bold; height: auto; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, server_id: int) -> None:
        super().__init__()
        self.server_id = server_id
        self.models: dict[str, dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Model catalogue for server #{self.server_id} — enter downloads, esc closes",
                        classes="section")
            yield DataTable(id="catalog", cursor_type="row", zebra_stripes=True)
            yield Static("", id="catalog-about")
            yield Static("Loading …", id="catalog-error")

    def on_mount(self) -> None:
        table = self.query_one("#catalog", DataTable)
        for key, label in (("name", "Model"), ("size", "Size"), ("have", "Have"), ("family", "Family"),
                           ("gated", "Gated"), ("folder", "Folder")):
            table.add_column(label, key=key)
        table.focus()
        self.load()

    @work(group="catalog", exclusive=True, exit_on_error=False)
    async def load(self) -> None:
        data = await self.ss.client.request("GET", f"/api/comfy/{self.server_id}/available-models")
        table = self.query_one("#catalog", DataTable)
        for folder, entries in (data.get("folders") or {}).items():
            for m in entries:
                self.models[m["id"]] = m
                table.add_row(m.get("name"), size(m.get("size")),
                              Text("✓", style="green") if m.get("installed") else "", m.get("family"),
                              Text("token", style="yellow") if m.get("gated") else "", folder, key=m["id"])
        self.query_one("#catalog-error", Static).update("")
        self._about()

    @on(DataTable.RowHighlighted)
    def _about(self) -> None:
        m = self._highlighted()
        about = self.query_one("#catalog-about", Static)
        if m is None:
            about.update("")
            return
        about.update(f"{m.get('description', '')}\n{m.get('filename')} · licence {m.get('license')} · {m.get('url')}")

    def _highlighted(self) -> dict[str, Any] | None:
        table = self.query_one("#catalog", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.models.get(str(key))

    @on(DataTable.RowSelected)
    def action_download(self) -> None:
        m = self._highlighted()
        if m is None:
            return
        if self.ss.read_only:
            self.query_one("#catalog-error", Static).update(f"Downloads are disabled: {VIEWER_REASON}.")
            return
        self.query_one("#catalog-error", Static).update(f"Starting the download of {m.get('name')} …")
        self.download(m)

    @work(group="download", exclusive=True, exit_on_error=False)
    async def download(self, m: dict[str, Any]) -> None:
        body = {"name": m["name"], "url": m["url"], "folder": m["folder"], "filename": m.get("filename")}
        if m.get("sha256"):
            body["sha256"] = m["sha256"]
        accepted = await self.ss.client.request("POST", f"/api/comfy/{self.server_id}/models", json=body)
        self.dismiss(accepted)

    def show_error(self, exc: BaseException) -> bool:
        self.query_one("#catalog-error", Static).update(describe_error(exc))
        return True

    def action_cancel(self) -> None:
        self.dismiss(None)
