"""The line that says the daemon is gone, and that what is shown is as of then."""

from __future__ import annotations

from textual.widgets import Static

from socialsync.tui.format import clock_time
from socialsync.tui.state import Connection


def short_reason(reason: str, limit: int = 60) -> str:
    """The gist of a transport error: "connection refused", not the whole traceback line."""
    low = reason.lower()
    if "connect call failed" in low or "connection refused" in low or "cannot connect" in low:
        return "connection refused"
    if "no heartbeat" in low:
        return reason.split(":")[-1].strip() if ":" in reason else reason
    if "reset by peer" in low or "connection closed" in low or "server disconnected" in low:
        return "connection lost"
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def banner_text(c: Connection, base_url: str) -> str:
    if c.state == "connecting":
        return f"Connecting to {base_url} …"
    if c.state == "down":
        since = f" since {clock_time(c.down_since)}" if c.down_since else ""
        when = "now" if c.retry_in < 0.5 else f"in {c.retry_in:.0f} s"
        retry = f"; retrying {when} (attempt {c.attempt})" if c.attempt else ""
        as_of = f" Everything shown is as of {clock_time(c.as_of)} UTC." if c.as_of else ""
        return f"⚠ Daemon at {base_url} unreachable{since} ({short_reason(c.reason)}){retry}.{as_of}"
    if c.state == "resyncing":
        seq = f" from event #{c.last_seq}" if c.last_seq is not None else ""
        as_of = f" Shown: as of {clock_time(c.as_of)} UTC." if c.as_of else ""
        return f"↻ Reconnected — catching up{seq} ({c.reason}).{as_of}"
    if c.state == "refused":
        return f"⚠ The daemon refused this console: {c.reason}; retrying in {c.retry_in:.0f} s."
    return ""


class ConnectionBanner(Static):
    """Hidden while the stream is live; otherwise says what is wrong and since when."""

    DEFAULT_CSS = """
    ConnectionBanner {
        display: none;
        height: auto;
        padding: 0 1;
        background: $error;
        color: $text;
        text-style: bold;
    }
    ConnectionBanner.-connecting, ConnectionBanner.-resyncing { background: $warning; color: $background; }
    ConnectionBanner.-shown { display: block; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._show, init=True)

    def _show(self, connection: Connection) -> None:
        text = banner_text(connection, getattr(self.app, "base_url", ""))
        self.set_class(bool(text), "-shown")
        for state in ("connecting", "resyncing", "down", "refused"):
            self.set_class(connection.state == state, f"-{state}")
        self.update(text)
