"""The dashboard line over the fleet: servers ready, burn rate, spend today, credit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rich.text import Text
from textual.widgets import Static

from socialsync.tui.format import clock_time, epoch, money, to_decimal
from socialsync.tui.state import Connection


def stats_text(stats: dict[str, Any] | None, now: float, connection: Connection, error: str | None = None,
               *, generations: bool = True) -> Text:
    text = Text(no_wrap=False)
    if stats is None:
        text.append(f"Dashboard unavailable: {error}" if error else "Dashboard: loading …", style="bright_black")
        return text
    servers = stats.get("servers") or {}
    spend = stats.get("spend") or {}
    gens = stats.get("generations") or {}
    burn = to_decimal(spend.get("burnRate")) or Decimal(0)
    today = to_decimal(spend.get("today")) or Decimal(0)
    as_of = epoch(stats.get("asOf"))
    if as_of is not None and connection.live:
        # Spend grows with the burn rate between two fetches.
        today += burn * Decimal(repr(max(0.0, now - as_of))) / Decimal(3600)

    def item(label: str, value: str, style: str = "bold") -> None:
        if text.plain:
            text.append(" │ ", style="bright_black")
        text.append(f"{label} ", style="bright_black")
        text.append(value, style=style)

    item("Ready", f"{servers.get('ready', 0)}/{servers.get('total', 0)}", "bold green")
    item("Burn", f"{money(burn)}/h", "bold yellow")
    item("Today", money(today))
    credit = stats.get("vastCredit")
    item("Credit", money(credit) if credit is not None else "—", "bold cyan")
    if generations:
        item("Running", str(gens.get("processing", 0)), "bold")
        item("Queued", str(gens.get("queued", 0)), "bold")
    if not connection.live and connection.as_of:
        text.append(f"  (as of {clock_time(connection.as_of)})", style="bold red")
    elif error:
        text.append(f"  (stats: {error})", style="red")
    return text


class StatsBar(Static):
    DEFAULT_CSS = """
    StatsBar { height: auto; padding: 0 1; background: $boost; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "stats", self._redraw)
        self.watch(self.app, "connection", self._redraw, init=True)

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self, _: object = None) -> None:
        """One line if it can be: the generation counts give way first on a narrow terminal."""
        app: Any = self.app
        text = stats_text(app.stats, app.clock(), app.connection, app.stats_error)
        if self.size.width and text.cell_len > self.size.width - 2:
            text = stats_text(app.stats, app.clock(), app.connection, app.stats_error, generations=False)
        self.update(text)
