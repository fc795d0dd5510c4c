"""Launch: search Vast's offers with the filters of ``/api/vast-offers``, sort the
results, and rent one after a dialog that shows its price per hour and per day."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, Static

from socialsync.tui.format import describe_error, money, price, to_decimal
from socialsync.tui.screens.base import VIEWER_REASON, LiveModal, LiveScreen
from socialsync.tui.widgets.connection_banner import ConnectionBanner
from socialsync.tui.widgets.labeled_select import LabeledSelect
from socialsync.tui.widgets.role_notice import RoleNotice

REGIONS = ("north-america", "south-america", "europe", "asia-pacific", "middle-east", "africa")
ORDERS = (("price", "price"), ("reliab.", "reliability"), ("VRAM", "gpu_ram"), ("DLPerf", "dlperf"),
          ("score", "score"))
TEXT_FILTERS = (  # (query parameter, label, placeholder, tooltip)
    ("gpuName", "GPU", "RTX 4090", "GPU model name (part of it is enough)"),
    ("minGpus", "GPUs≥", "1", "at least this many GPUs"),
    ("maxGpus", "GPUs≤", "8", "at most this many GPUs"),
    ("minGpuRam", "VRAM≥", "24", "at least this much VRAM per GPU, in GB"),
    ("maxPrice", "$/h≤", "0.60", "at most this price per hour, in $"),
    ("minReliability", "rel≥", "0.98", "host reliability at least this (0 to 1)"),
    ("country", "cntry", "US", "two-letter country code"),
    ("minDisk", "disk≥", "100", "at least this much disk, in GB"),
    ("limit", "limit", "50", "at most this many offers"),
)
# (key, label, sort value of an offer)
OFFER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("gpu", "GPU"), ("count", "×"), ("vram", "VRAM"), ("price", "$/h"), ("day", "$/day"), ("location", "Location"),
    ("reliability", "Rel."), ("disk", "Disk"), ("dlperf", "DLPerf"), ("net", "Net↓"), ("offer", "Offer"),
)
SORT_KEYS = {
    "gpu": lambda o: ((o.get("gpu") or "").lower(), o.get("gpuCount") or 0),
    "count": lambda o: o.get("gpuCount") or 0,
    "vram": lambda o: o.get("gpuRam") or 0,
    "price": lambda o: to_decimal(o.get("pricePerHour")) or Decimal(0),
    "day": lambda o: to_decimal(o.get("pricePerDay")) or Decimal(0),
    "location": lambda o: o.get("location") or "",
    "reliability": lambda o: o.get("reliability") or 0,
    "disk": lambda o: o.get("disk") or 0,
    "dlperf": lambda o: o.get("dlperf") or 0,
    "net": lambda o: o.get("internetDown") or 0,
    "offer": lambda o: int(o["offerId"]) if str(o.get("offerId", "")).isdigit() else 0,
}


def _num(value: Any, unit: str = "", places: int = 0) -> str:
    if value is None:
        return "—"
    return f"{float(value):.{places}f}{unit}"


def offer_cells(o: dict[str, Any]) -> list[Any]:
    return [
        o.get("gpu") or "—",
        Text(str(o.get("gpuCount") or "—"), justify="right"),
        Text(_num(o.get("gpuRam"), " GB"), justify="right"),
        Text(price(o.get("pricePerHour")), style="bold", justify="right"),
        Text(money(o.get("pricePerDay")), justify="right"),
        o.get("location") or o.get("country") or "—",
        Text(_num((o.get("reliability") or 0) * 100, "%", 1) if o.get("reliability") is not None else "—",
             justify="right"),
        Text(_num(o.get("disk"), " GB"), justify="right"),
        Text(_num(o.get("dlperf"), "", 1), justify="right"),
        Text(_num(o.get("internetDown"), ""), justify="right"),
        Text(str(o.get("offerId")), style="bright_black"),
    ]


class LaunchScreen(LiveScreen):
    TITLE = "Launch"

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="launch.back"),
        Binding("ctrl+s", "search", "Search", id="launch.search"),
        Binding("s", "sort", "Sort", id="launch.sort"),
        Binding("r", "rent", "Rent", id="launch.rent"),
    ]
    OPERATOR_ONLY = frozenset({"rent"})

    def __init__(self) -> None:
        super().__init__()
        self.offers: list[dict[str, Any]] = []
        self.sort_column = "price"
        self.sort_reverse = False

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield RoleNotice(actions="renting")
        with Grid(id="offer-filters"):
            for param, label, placeholder, tooltip in TEXT_FILTERS:
                box = Input(placeholder=placeholder, id=f"f-{param}", tooltip=tooltip)
                box.border_title = label
                yield box
            yield LabeledSelect([(r, r) for r in REGIONS], label="region", prompt="any", id="f-region")
            yield LabeledSelect(list(ORDERS), label="order", value="price", allow_blank=False, id="f-order")
            yield Button("Search", id="search", variant="primary")
        yield Static("Searching …", id="offer-status")
        yield DataTable(id="offers", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#offers", DataTable)
        for key, label in OFFER_COLUMNS:
            table.add_column(label, key=key)
        self.action_search()

    # -- search -------------------------------------------------------------------------

    def params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        for param, _, _, _ in TEXT_FILTERS:
            value = self.query_one(f"#f-{param}", Input).value.strip()
            if value:
                params[param] = value
        region = self.query_one("#f-region", Select).value
        if isinstance(region, str):
            params["region"] = region
        order = self.query_one("#f-order", Select).value
        if isinstance(order, str):
            params["order"] = order
        return params

    def action_search(self) -> None:
        self.query_one("#offer-status", Static).update("Searching …")
        self.search(self.params())

    @on(Input.Submitted)
    @on(Button.Pressed, "#search")
    def _submit(self) -> None:
        self.action_search()

    @on(Select.Changed)
    def _select_changed(self) -> None:
        if self.is_mounted and self.query("#offers"):
            self.action_search()

    @work(group="search", exclusive=True, exit_on_error=False)
    async def search(self, params: dict[str, str]) -> None:
        self.offers = await self.ss.client.request("GET", "/api/vast-offers", params=params) or []
        order = params.get("order", "price")
        self.sort_column = {"gpu_ram": "vram", "score": "dlperf"}.get(order, order)
        self.sort_reverse = order in ("reliability", "gpu_ram", "dlperf", "score")
        self.fill()
        filters = ", ".join(f"{k}={v}" for k, v in params.items()) or "no filter"
        self.query_one("#offer-status", Static).update(
            f"{len(self.offers)} offer(s) ({filters}). Enter or click a row to rent it; click a column to sort.")
        if self.offers:
            self.query_one("#offers", DataTable).focus()

    def show_error(self, exc: BaseException) -> bool:
        status = self.query_one("#offer-status", Static)
        status.update(Text(f"Search failed — {describe_error(exc)}", style="bold red"))
        return True

    # -- the table ----------------------------------------------------------------------

    def fill(self) -> None:
        table = self.query_one("#offers", DataTable)
        current = self.selected_offer()
        table.clear()
        keyfn = SORT_KEYS[self.sort_column]
        for o in sorted(self.offers, key=keyfn, reverse=self.sort_reverse):
            table.add_row(*offer_cells(o), key=str(o["offerId"]))
        for key, label in OFFER_COLUMNS:
            arrow = (" ▼" if self.sort_reverse else " ▲") if key == self.sort_column else ""
            table.columns[key].label = Text(label + arrow)  # type: ignore[index]
        table.border_title = f"Offers — sorted by {dict(OFFER_COLUMNS)[self.sort_column]}"
        if current is not None:
            try:
                table.move_cursor(row=table.get_row_index(str(current["offerId"])))
            except Exception:
                pass

    @on(DataTable.HeaderSelected, "#offers")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        self.sort_reverse = not self.sort_reverse if key == self.sort_column else False
        self.sort_column = key
        self.fill()

    def action_sort(self) -> None:
        keys = [k for k, _ in OFFER_COLUMNS]
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.sort_reverse = False
        self.fill()

    def selected_offer(self) -> dict[str, Any] | None:
        table = self.query_one("#offers", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((o for o in self.offers if str(o["offerId"]) == key), None)

    @on(DataTable.RowSelected, "#offers")
    def _row_selected(self) -> None:
        self.action_rent()

    def action_rent(self) -> None:
        offer = self.selected_offer()
        if offer is None:
            self.notify("Search, then pick an offer.", severity="warning")
            return

        def launched(result: dict[str, Any] | None) -> None:
            if result:
                self.ss.launched(result)

        self.app.push_screen(RentDialog(offer), launched)


class RentDialog(LiveModal):
    """Confirm a rental: what, where, how much per hour and per day; name and image."""

    DEFAULT_CSS = """
    RentDialog { align: center middle; }
    RentDialog > Vertical {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: thick $warning; background: $surface; padding: 0 1;
    }
    RentDialog .title { text-style: bold; }
    RentDialog #rent-error { color: $error; text-style: bold; height: auto; }
    RentDialog Horizontal { height: auto; align-horizontal: right; }
    RentDialog Button { margin-left: 2; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, offer: dict[str, Any]) -> None:
        super().__init__()
        self.offer = offer

    def compose(self) -> ComposeResult:
        o = self.offer
        what = f"{o.get('gpuCount') or 1}× {o.get('gpu') or '?'}"
        where = o.get("location") or o.get("country") or "unknown location"
        with Vertical():
            yield Label(f"Rent offer {o['offerId']}: {what} in {where}?", classes="title")
            yield Static(
                f"Price: [b]{price(o.get('pricePerHour'))}/h[/b] = [b]{money(o.get('pricePerDay'))}/day[/b] "
                f"while running (disk is billed until destroyed).\n"
                f"VRAM {_num(o.get('gpuRam'), ' GB')} · RAM {_num(o.get('ram'), ' GB')} · "
                f"disk {_num(o.get('disk'), ' GB')} · reliability "
                f"{_num((o.get('reliability') or 0) * 100, '%', 1)}")
            name = Input(placeholder=f"server-{o['offerId']}", id="rent-name")
            name.border_title = "name (optional)"
            yield name
            image = Input(placeholder="the daemon's default ComfyUI image", id="rent-image")
            image.border_title = "docker image (optional)"
            yield image
            yield Static("", id="rent-error")
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button(f"Rent for {price(o.get('pricePerHour'))}/h", id="rent", variant="warning",
                             disabled=self.ss.read_only)
        if self.ss.read_only:
            self.call_after_refresh(self._say_read_only)

    def _say_read_only(self) -> None:
        self.query_one("#rent-error", Static).update(f"Renting is disabled: {VIEWER_REASON}.")

    def on_mount(self) -> None:
        self.query_one("#rent-name", Input).focus()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#rent")
    @on(Input.Submitted)
    def _rent(self) -> None:
        if self.ss.read_only:
            self._say_read_only()
            return
        body: dict[str, Any] = {"offerId": self.offer["offerId"]}
        name = self.query_one("#rent-name", Input).value.strip()
        image = self.query_one("#rent-image", Input).value.strip()
        if name:
            body["name"] = name
        if image:
            body["image"] = image
        self.query_one("#rent", Button).disabled = True
        self.query_one("#rent-error", Static).update("Renting …")
        self.rent(body)

    @work(group="rent", exclusive=True, exit_on_error=False)
    async def rent(self, body: dict[str, Any]) -> None:
        result = await self.ss.client.request("POST", "/api/vast-servers", json=body)
        self.dismiss(result)

    def show_error(self, exc: BaseException) -> bool:
        self.query_one("#rent-error", Static).update(describe_error(exc))
        self.query_one("#rent", Button).disabled = self.ss.read_only
        return True
