"""Home: the fleet table under the dashboard line; filter with ``/``, sort with ``s``."""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static

from socialsync.tui.screens.base import LiveScreen
from socialsync.tui.state import Changed
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.fleet_table import COLUMNS, LABELS, FleetTable
from socialsync.tui.widgets.role_notice import RoleNotice
from socialsync.tui.widgets.stats_bar import StatsBar

SORT_CYCLE = ("id", "name", "status", "price", "uptime", "cost", "gens", "gpu")
TIME_TICK = 5.0  # seconds between redraws of uptime and cost (text that moves with the clock)
TABLE_INTERVAL = 0.5  # seconds between two syncs (so two repaints) of the table at most


class FleetScreen(LiveScreen):
    TITLE = "Fleet"
    AUTO_FOCUS = "#servers"

    BINDINGS = [
        Binding("o", "open", "Open", id="fleet.open", show=False),
        Binding("slash", "filter", "Filter", id="fleet.filter"),
        Binding("s", "sort", "Sort", id="fleet.sort"),
        Binding("r", "reverse", "Reverse sort", id="fleet.reverse", show=False),
        Binding("g", "generate", "Generate", id="fleet.generate"),
        Binding("d", "destroy", "Destroy", id="fleet.destroy", show=False),
        Binding("escape", "clear_filter", "Clear filter", id="fleet.clear_filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="fleet")
        self._pending: set[int] = set()
        self._pending_all = False
        self._pending_usage = False
        self._sync_timer: Timer | None = None
        self._last_sync = 0.0

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield StatsBar(id="stats")
        yield RoleNotice()
        yield Input(placeholder="filter: name, GPU, status, location, #id — enter to keep, esc to clear",
                    id="filter")
        yield FleetTable(self.live, id="servers")
        yield Static(id="fleet-empty")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.table.border_title = "Servers"
        self.watch(self.app, "connection", self._connection_changed, init=True)
        self._update_footer_line()
        if self.ss.time_ticks:
            self.set_interval(TIME_TICK, self._tick)

    @property
    def table(self) -> FleetTable:
        return self.query_one(FleetTable)

    def on_live_changed(self, message: Changed) -> None:
        """Changes wait here until the table's next repaint is due (at most one per
        ``TABLE_INTERVAL``): a busy fleet costs a couple of repaints a second, however
        many events it sends; a lone change is drawn at once."""
        if message.resynced:
            self._pending_all = True
        self._pending.update(message.servers)
        self._pending_usage = self._pending_usage or message.usage
        if self._sync_timer is not None:
            return
        wait = self._last_sync + TABLE_INTERVAL - time.monotonic()
        if wait > 0:
            self._sync_timer = self.set_timer(wait, self._sync_table)
        else:
            self._sync_table()

    def _sync_table(self) -> None:
        self._sync_timer = None
        self._last_sync = time.monotonic()
        ids, self._pending = (None if self._pending_all else self._pending), set()
        usage, self._pending_usage, self._pending_all = self._pending_usage, False, False
        self.table.sync(ids)
        if usage and ids is not None:
            self.table.sync_time()
        pending = self.ss.pending_select
        if pending is not None and self.table.select(pending):
            self.ss.pending_select = None
        self._update_footer_line()

    def _tick(self) -> None:
        self.table.sync_time()

    def _connection_changed(self, connection) -> None:
        self.table.set_class(connection.stale, "-stale")
        self._update_footer_line()

    def _update_footer_line(self) -> None:
        table = self.table
        total = len(self.live.servers)
        shown = table.row_count
        arrow = "▼" if table.sort_reverse else "▲"
        parts = [f"{shown} of {total}" if table.filter_text else f"{total} server{'s' if total != 1 else ''}",
                 f"sort: {LABELS[table.sort_column]} {arrow}"]
        if table.filter_text:
            parts.append(f"filter: {table.filter_text!r}")
        if self.ss.connection.stale:
            parts.append("STALE")
        table.border_subtitle = " · ".join(parts)
        empty = self.query_one("#fleet-empty", Static)
        if not self.live.synced:
            empty.update("Waiting for the daemon's first snapshot …")
        elif total == 0:
            empty.update("No servers yet. Press l (or ctrl+p → Launch) to rent one from the Vast offers.")
        elif shown == 0:
            empty.update("No server matches the filter (esc clears it).")
        else:
            empty.update("")
        empty.display = not self.live.synced or total == 0 or shown == 0

    # -- filter and sort ------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-shown")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        self.table.set_filter(event.value)
        self._update_footer_line()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.remove_class("-shown")
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("-shown")
        self.table.set_filter("")
        self.table.focus()
        self._update_footer_line()

    def action_sort(self) -> None:
        table = self.table
        i = SORT_CYCLE.index(table.sort_column) if table.sort_column in SORT_CYCLE else -1
        table.sort_by(SORT_CYCLE[(i + 1) % len(SORT_CYCLE)])

    def action_reverse(self) -> None:
        self.table.sort_by(self.table.sort_column, not self.table.sort_reverse)

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in {c for c, _, _ in COLUMNS}:
            self.table.sort_by(key)

    @on(FleetTable.Sorted)
    def _sorted(self) -> None:
        self._update_footer_line()

    # -- actions on the selected server ---------------------------------------------

    def _selected(self) -> int | None:
        sid = self.table.selected_id()
        if sid is None:
            self.notify("No server selected.", severity="warning")
        return sid

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.ss.open_server(int(event.row_key.value))

    def action_open(self) -> None:
        sid = self._selected()
        if sid is not None:
            self.ss.open_server(sid)

    def action_generate(self) -> None:
        sid = self.table.selected_id()
        self.ss.action_generate(sid)

    def action_destroy(self) -> None:
        sid = self._selected()
        if sid is not None and self.operator_allowed("destroy a server"):
            self.ss.confirm_destroy(sid)
