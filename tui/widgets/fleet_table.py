"""The fleet as a table: one row per server, keyed by its id, changed cell by cell.

``sync(ids)`` redraws the rows of the servers that changed: it compares each cell with
what is on screen and calls ``update_cell`` only for those that differ, so a burst of
events for one server is one repaint, and a status change is one cell. Rows are added
and removed only when a server appears, is destroyed, or enters or leaves the filter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import textual
from rich.text import Text
from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist, RowKey

from socialsync.common.servers import Server
from socialsync.tui.format import SETUP_STYLES, STATUS_STYLES, duration, gpu_label, money, price, to_decimal
from socialsync.tui.state import LiveState

STATUS_ORDER = {s: i for i, s in enumerate(("running", "loading", "launching", "stopped", "offline", "error"))}
SETUP_ORDER = {s: i for i, s in enumerate(("ready", "installing", "pending", "failed"))}


class Cell(Text):
    """A cell's text and the value it sorts by."""

    __slots__ = ("key",)

    def __init__(self, text: str, key: Any, style: str = "", justify: str | None = None):
        super().__init__(text, style=style, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
        self.key = key


# (key, label, fixed width or None for "fit the content"). The first seven fit 80
# columns with typical names; the id and location follow (scroll right, or a wider
# terminal).
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("name", "Name", None),
    ("gpu", "GPU", None),
    ("status", "Status/setup", 18),
    ("price", "$/h", 6),
    ("uptime", "Up", 6),
    ("cost", "Cost", 7),
    ("gens", "Gen", 3),
    ("id", "#", 4),
    ("location", "Location", None),
)
LABELS = {key: label for key, label, _ in COLUMNS}
#: A cell as plain values: (text, style, sort key, justify).
Spec = tuple[str, str, Any, str | None]
FIT = {key for key, _, width in COLUMNS if width is None}
RIGHT = ("id", "price", "uptime", "cost", "gens")
FIRST_CHUNK = 40  # rows added before the first paint of a big fleet, at least (a screenful: see _first_chunk)
CHUNK = 250  # rows added per repaint after that
RESORT_INTERVAL = 2.0  # seconds a changed sort value may wait before its row moves
TIME_COLUMNS = ("uptime", "cost")


def matches(server: Server, text: str) -> bool:
    if not text:
        return True
    hay = " ".join(str(v) for v in (
        f"#{server.id}", server.name, server.gpu, server.status, server.setup_status, server.location,
        server.vast_id,
    ) if v).lower()
    return all(word in hay for word in text.lower().split())


class FleetTable(DataTable):
    """Servers by id; see the module docstring."""

    DEFAULT_CSS = """
    FleetTable { height: 1fr; }
    FleetTable.-stale { opacity: 70%; }
    """

    class Sorted(Message):
        """The sort column or direction changed."""

        def __init__(self, column: str, reverse: bool) -> None:
            super().__init__()
            self.column = column
            self.reverse = reverse

    def __init__(self, live: LiveState, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.live = live
        self.filter_text = ""
        self.sort_column = "id"
        self.sort_reverse = False
        self._shown: dict[tuple[int, str], tuple[Any, ...]] = {}
        self.cell_updates = 0
        #: Write fixed-width cells in place (see ``_apply``). It knows the table's caches as
        #: Textual 8 has them (a test checks what is drawn); other versions take the slow way.
        self.fast_updates = textual.__version__.startswith("8.")
        self._backlog: list[int] | None = None
        self._resort_timer: Timer | None = None

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            justify = "right" if key in RIGHT else "left"
            self.add_column(Text(label, justify=justify), key=key, width=width)  # type: ignore[arg-type]
        self.sync(None)

    # -- cells ------------------------------------------------------------------------

    def specs(self, s: Server, columns: tuple[str, ...] | None = None) -> dict[str, Spec]:
        """What each cell of a server's row shows (only ``columns`` when given), as plain
        values: comparing them is cheap, building a ``Text`` is not."""
        usage = self.live.usage_now(s.id)
        running, cost = usage if usage is not None else (None, None)
        time_specs = {
            "uptime": (duration(running), "", running or 0.0, "right"),
            "cost": (money(cost) if cost is not None else "—", "", cost or Decimal(0), "right"),
        }
        if columns == TIME_COLUMNS:
            return time_specs
        status = str(s.status)
        setup = str(s.setup_status)
        gens = self.live.running_generations(s.id)
        hourly = to_decimal(s.price_per_hour)
        return {
            "id": (str(s.id), "bright_black", s.id, "right"),
            "name": (s.name, "", (s.name.lower(), s.id), None),
            "gpu": (gpu_label(s.gpu, s.gpu_count), "", ((s.gpu or "").lower(), s.gpu_count or 0), None),
            "status": (f"{status}/{setup}", f"{STATUS_STYLES.get(status, '')}|{SETUP_STYLES.get(setup, '')}",
                       (STATUS_ORDER.get(status, 99), SETUP_ORDER.get(setup, 99)), None),
            "location": (s.location or "—", "", (s.location or "").lower(), None),
            "price": (price(hourly).lstrip("$") if hourly is not None else "—", "", hourly or Decimal(0), "right"),
            **time_specs,
            "gens": (str(gens) if gens else "·", "bold cyan" if gens else "bright_black", gens, "right"),
        }

    def cells(self, s: Server, columns: tuple[str, ...] | None = None) -> dict[str, Cell]:
        return {c: make_cell(c, spec) for c, spec in self.specs(s, columns).items()}

    # -- sync ---------------------------------------------------------------------------

    def sync(self, ids: Iterable[int] | None, columns: tuple[str, ...] | None = None) -> None:
        """Bring the rows of ``ids`` (None: every server) up to date."""
        if not self.columns:
            return
        servers = self.live.servers
        if ids is None:
            ids = set(servers) | {int(k.value) for k in self.rows if k.value is not None}
        new: list[tuple[int, Server]] = []
        changes: dict[int, dict[str, Cell]] = {}
        for sid in ids:
            key = str(sid)
            server = servers.get(sid)
            present = key in self.rows
            if server is None or not matches(server, self.filter_text):
                if present:
                    self._remove(sid)
                continue
            if not present:
                new.append((sid, server))
                continue
            specs = self.specs(server, columns)
            shown = self._shown
            for c, spec in specs.items():
                sig = spec[:2]
                if shown.get((sid, c)) != sig:
                    shown[(sid, c)] = sig
                    changes.setdefault(sid, {})[c] = make_cell(c, spec)
        if changes:
            self._apply(changes)
        if new:
            self._add(new)
        if any(self.sort_column in row for row in changes.values()):
            self._order_changed()

    # -- adding rows ----------------------------------------------------------------------

    def _add(self, new: list[tuple[int, Server]]) -> None:
        """Add rows. A big first load is drawn a screenful first: the rest follows in
        chunks after each repaint (a table measures every cell it is given), and the
        cells of those rows are worked out when their chunk is added."""
        column = self.sort_column
        computed: dict[int, dict[str, Spec]] = {}

        def specs_of(sid: int, server: Server) -> dict[str, Spec]:
            specs = computed.get(sid)
            if specs is None:
                specs = computed[sid] = self.specs(server)
            return specs

        if column == "id":  # the id is its own sort key: no cell is needed to sort
            new.sort(key=lambda item: item[0], reverse=self.sort_reverse)
        else:
            new.sort(key=lambda item: (specs_of(*item)[column][2], item[0]), reverse=self.sort_reverse)
        first = self._first_chunk()
        first_load = self._backlog is None and not self.rows
        if first_load and len(new) > first:
            self._backlog = [sid for sid, _ in new[first:]]
            new = new[:first]
            self.call_after_refresh(self._load_more)
        for sid, server in new:
            specs = specs_of(sid, server)
            self.add_row(*(make_cell(c, specs[c]) for c, _, _ in COLUMNS), key=str(sid))
            for c, _, _ in COLUMNS:
                self._shown[(sid, c)] = specs[c][:2]
        if self._backlog is None:
            self.resort()
        if first_load:
            self._measure_now()

    def _first_chunk(self) -> int:
        """Rows enough to fill the screen: the table cannot show more than the terminal's
        height (the rest follows after the first paint)."""
        try:
            height = self.app.size.height
        except Exception:  # no app yet
            height = 0
        return max(FIRST_CHUNK, height + 10)

    def _measure_now(self) -> None:
        """Measure the rows just added now rather than when the table is next idle (as
        ``DataTable._on_idle`` would): a repaint due before that would draw them with the
        columns' old widths, only to be drawn again once measured. Textual 8's internals;
        other versions measure at idle as usual."""
        if not self.fast_updates or not getattr(self, "_require_update_dimensions", False):
            return
        try:
            new_rows = self._new_rows.copy()
            self._new_rows.clear()
            self._require_update_dimensions = False
            self._update_dimensions(new_rows)
        except AttributeError:  # pragma: no cover  (internals not as expected: idle measures)
            self._require_update_dimensions = True

    def _load_more(self) -> None:
        backlog = self._backlog or []
        chunk, self._backlog = backlog[:CHUNK], backlog[CHUNK:]
        if chunk:
            self.sync(chunk)
        if self._backlog:
            self.call_after_refresh(self._load_more)
        else:
            self._backlog = None
            self.resort()

    # -- changing rows --------------------------------------------------------------------

    def _order_changed(self) -> None:
        """A sort value changed: the new value is drawn at once, in place; the rows move
        at the next re-sort, at most ``RESORT_INTERVAL`` later (a re-sort repaints the
        whole table, and a busy fleet would otherwise re-sort on every flush)."""
        if self._resort_timer is None:
            self._resort_timer = self.set_timer(RESORT_INTERVAL, self._resort_due)

    def _resort_due(self) -> None:
        self._resort_timer = None
        self.resort()

    def _apply(self, changes: dict[int, dict[str, Cell]]) -> None:
        """Write changed cells. Cells whose width is fixed and that do not move a row go
        the fast way: only those rows' cached renderings are dropped and only those rows
        are repainted, so a change off screen costs no repaint at all. Anything else
        (a column that fits its content, the sort column) goes through ``update_cell``,
        which invalidates the whole table."""
        fast: dict[int, dict[str, Cell]] = {}
        for sid, row in changes.items():
            for c, cell in row.items():
                if c in FIT or not self.fast_updates:
                    try:
                        self.update_cell(str(sid), c, cell, update_width=c in FIT)
                    except CellDoesNotExist:
                        continue
                else:
                    fast.setdefault(sid, {})[c] = cell
                self.cell_updates += 1
        if fast and not self._write_in_place(fast):
            for sid, row in fast.items():  # the table's internals are not what we expect
                for c, cell in row.items():
                    with contextlib.suppress(CellDoesNotExist):
                        self.update_cell(str(sid), c, cell)

    def _write_in_place(self, changes: dict[int, dict[str, Cell]]) -> bool:
        try:
            data = self._data
            column_keys = {k.value: k for k in self.columns}
            row_keys = {}
            for sid, row in changes.items():
                row_key = RowKey(str(sid))
                cells = data[row_key]
                for c, cell in row.items():
                    cells[column_keys[c]] = cell
                row_keys[row_key] = self._row_locations.get(row_key)
            # Drop what was rendered of these rows (and only of them): cells and row
            # strips by row key, renderables by row index, lines by y.
            for cache in (self._cell_render_cache, self._row_render_cache):
                for cache_key in [k for k in cache.keys() if k[0] in row_keys]:
                    cache.discard(cache_key)
            indexes = {index for index in row_keys.values() if index is not None}
            renderables = self._row_renderable_cache
            for cache_key in [k for k in renderables.keys() if k[1] in indexes]:
                renderables.discard(cache_key)
            header = self.header_height if self.show_header else 0
            lines = {header + index for index in indexes}
            for cache_key in [k for k in self._line_cache.keys() if k[0] in lines]:
                self._line_cache.discard(cache_key)
        except (AttributeError, KeyError, TypeError, IndexError):
            return False
        for index in row_keys.values():
            if index is not None:
                self.refresh_row(index)
        return True

    def _remove(self, sid: int) -> None:
        try:
            self.remove_row(str(sid))
        except RowDoesNotExist:
            pass
        for c, _, _ in COLUMNS:
            self._shown.pop((sid, c), None)

    def sync_time(self) -> None:
        """Uptime and cost move with the clock (or were fetched again): redraw the cells
        whose text changed."""
        self.sync([int(k.value) for k in self.rows if k.value is not None], TIME_COLUMNS)

    # -- filter and sort ------------------------------------------------------------

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.sync(None)

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        if column not in LABELS:
            return
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else column in ("price", "cost", "uptime",
                                                                                          "gens")
        self.sort_column, self.sort_reverse = column, reverse
        self.resort()
        for key, label, _ in COLUMNS:
            arrow = (" ▼" if reverse else " ▲") if key == column else ""
            self.columns[key].label = Text(label + arrow)  # type: ignore[index]
        self._require_update_dimensions = True
        self.refresh()
        self.post_message(self.Sorted(column, reverse))

    def resort(self) -> None:
        """Sort again, keeping the cursor on the same server."""
        current = self.selected_id()
        column = self.sort_column
        keyfn: Callable[[Any], Any] = (lambda v: (v[0].key, v[1].key)) if column != "id" else (lambda v: v.key)
        cols = (column, "id") if column != "id" else ("id",)
        self.sort(*cols, key=keyfn, reverse=self.sort_reverse)
        if current is not None:
            self.select(current, scroll=False)

    # -- the cursor ---------------------------------------------------------------------

    def selected_id(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return int(key.value) if key.value is not None else None

    def select(self, sid: int, *, scroll: bool = True) -> bool:
        try:
            index = self.get_row_index(str(sid))
        except RowDoesNotExist:
            return False
        self.move_cursor(row=index, scroll=scroll)
        return True


def make_cell(column: str, spec: Spec) -> Cell:
    text, style, key, justify = spec
    if column == "status":  # "status/setup", each in its colour
        status_style, setup_style = style.split("|")
        status, setup = text.split("/", 1)
        cell = Cell(status, key, status_style)
        cell.append("/", style="bright_black")
        cell.append(setup, style=setup_style)
        return cell
    return Cell(text, key, style, justify)
