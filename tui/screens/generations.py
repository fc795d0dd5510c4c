"""Generations: the running ones with a progress bar each, the finished ones below."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Label, Static
from textual.widgets.data_table import RowDoesNotExist

from socialsync.tui.format import GENERATION_STYLES, clock_time, millis, shorten
from socialsync.tui.screens.base import LiveScreen
from socialsync.tui.state import Changed, GenerationLive
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.generation_row import GenerationRow
from socialsync.tui.widgets.role_notice import RoleNotice

LINGER = 6.0  # seconds a finished generation keeps its full bar among the running ones
RECENT_COLUMNS = (("id", "#", 5), ("status", "Status", 9), ("duration", "Took", 6), ("finished", "Finished", 8),
                  ("server", "Server", None), ("prompt", "Prompt", None))


class GenerationsScreen(LiveScreen):
    TITLE = "Generations"
    AUTO_FOCUS = "#recent"

    BINDINGS = [
        Binding("o", "open", "Open", id="generations.open"),
        Binding("g", "generate", "Generate", id="generations.generate"),
        Binding("x", "cancel_generation", "Cancel", id="generations.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__(id="generations")
        self._rows: dict[int, GenerationRow] = {}
        self._removals: dict[int, object] = {}

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield RoleNotice(actions="generating and cancelling")
        yield Label("Running", classes="section")
        with VerticalScroll(id="active", can_focus=False):
            yield Static("Nothing is running. Press g to start a generation.", id="no-active")
        yield Label("Recent", classes="section")
        yield DataTable(id="recent", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#recent", DataTable)
        for key, label, width in RECENT_COLUMNS:
            table.add_column(label, key=key, width=width)
        for g in self.live.active_generations():
            self._show_active(g)
        self._sync_recent(list(self.live.recent))
        self._update_empty()

    # -- live ---------------------------------------------------------------------------

    def on_live_changed(self, message: Changed) -> None:
        if message.resynced:
            for gid in list(self._rows):
                if gid not in self.live.generations:
                    self._remove_row(gid)
            ids = set(self.live.generations) | set(message.generations)
        else:
            ids = message.generations
        for gid in sorted(ids):
            g = self.live.generations.get(gid)
            if g is not None and (g.active or gid in self._rows):
                self._show_active(g)
        self._sync_recent([gid for gid in message.generations if gid in self.live.recent]
                          if not message.resynced else list(self.live.recent))
        self._update_empty()

    def _show_active(self, g: GenerationLive) -> None:
        row = self._rows.get(g.id)
        name = self.ss.server_name(g.server_id)
        if row is None:
            if not g.active:
                return
            row = GenerationRow(g, name)
            self._rows[g.id] = row
            self.query_one("#active", VerticalScroll).mount(row)
        else:
            row.show(g, name)
        if not g.active and g.id not in self._removals:
            self._removals[g.id] = self.set_timer(LINGER, lambda gid=g.id: self._remove_row(gid))

    def _remove_row(self, gid: int) -> None:
        self._removals.pop(gid, None)
        row = self._rows.pop(gid, None)
        if row is not None:
            row.remove()
        self._update_empty()

    def _update_empty(self) -> None:
        self.query_one("#no-active").display = not self._rows

    def _sync_recent(self, ids: list[int]) -> None:
        table = self.query_one("#recent", DataTable)
        added = False
        for gid in ids:
            g = self.live.recent.get(gid)
            if g is None:
                continue
            cells = {
                "id": Text(str(g.id), justify="right"),
                "status": Text(g.status, style=GENERATION_STYLES.get(g.status, "")),
                "duration": Text(millis(g.duration_ms), justify="right"),
                "finished": clock_time(g.finished_at),
                "server": self.ss.server_name(g.server_id),
                "prompt": shorten(g.prompt or "…", 60),
            }
            key = str(gid)
            if key in table.rows:
                for column, value in cells.items():
                    table.update_cell(key, column, value, update_width=column in ("prompt", "server"))
            else:
                table.add_row(*cells.values(), key=key)
                added = True
        if added:
            table.sort("id", key=lambda t: int(t.plain), reverse=True)
        table.border_title = f"Finished ({table.row_count})"

    # -- actions ------------------------------------------------------------------------

    def _focused_generation(self) -> int | None:
        focused = self.focused
        if isinstance(focused, GenerationRow):
            return focused.generation_id
        table = self.query_one("#recent", DataTable)
        if table.row_count:
            try:
                key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
            except (RowDoesNotExist, Exception):
                return None
            return int(key.value) if key.value is not None else None
        return None

    @on(GenerationRow.Opened)
    def _row_opened(self, event: GenerationRow.Opened) -> None:
        self.ss.open_generation(event.generation_id)

    @on(DataTable.RowSelected, "#recent")
    def _recent_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.ss.open_generation(int(event.row_key.value))

    def action_open(self) -> None:
        gid = self._focused_generation()
        if gid is None:
            self.notify("No generation selected (tab to a running one, or to the table).", severity="warning")
        else:
            self.ss.open_generation(gid)

    def action_generate(self) -> None:
        self.ss.action_generate(None)

    def action_cancel_generation(self) -> None:
        gid = self._focused_generation()
        g = self.live.generations.get(gid) if gid is not None else None
        if g is None or not g.active:
            self.notify("Select a running generation to cancel.", severity="warning")
            return
        if self.operator_allowed("cancel a generation"):
            self.cancel(g.id)

    @work(group="actions", exit_on_error=False)
    async def cancel(self, gid: int) -> None:
        await self.ss.client.request("DELETE", f"/api/generations/{gid}")
        self.notify(f"Generation #{gid} cancelled.")
