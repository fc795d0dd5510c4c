"""The line that says the daemon is gone, and that what is shown is as of then."""

from __future__ import annotations

import time

from textual.timer import Timer
from textual.widgets import Static

from socialsync.tui.format import clock_time
from socialsync.tui.state import Connection

NO_ANSWER = "no answer, timed out"


def short_reason(reason: str, limit: int = 60, timeout: float | None = None) -> str:
    """The gist of a transport error: "connection refused", not the whole traceback line.
    A timeout says so: its exception has no message, so the reason may be empty or end
    with the request's "GET http://…: " and nothing after it."""
    text = reason.strip()
    low = text.lower()
    if "no heartbeat" in low:
        return text.split(":")[-1].strip() if ":" in text else text
    if "no answer in" in low:
        return text[low.index("no answer in"):]
    if not low or low.endswith(":") or "timeout" in low or "timed out" in low:
        return f"no answer in {timeout:g} s" if timeout else NO_ANSWER
    if "connect call failed" in low or "connection refused" in low or "cannot connect" in low:
        return "connection refused"
    if "reset by peer" in low or "connection closed" in low or "server disconnected" in low:
        return "connection lost"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_text(c: Connection, now: float | None = None) -> str:
    """"retrying in 4 s (attempt 2)" while waiting; once the wait is over, the try is
    under way (and may hang until it times out): "retrying (attempt 2) …"."""
    attempt = f" (attempt {c.attempt})" if c.attempt else ""
    left = c.retry_in if c.retry_at is None else c.retry_at - (time.monotonic() if now is None else now)
    if left >= 0.5:
        return f"retrying in {left:.0f} s{attempt}"
    return f"retrying{attempt} …"


def banner_text(c: Connection, base_url: str, *, timeout: float | None = None, now: float | None = None) -> str:
    if c.state == "connecting":
        return f"Connecting to {base_url} …"
    if c.state == "down":
        since = f" since {clock_time(c.down_since)}" if c.down_since else ""
        retry = f"; {retry_text(c, now)}" if c.attempt or c.retry_at is not None else ""
        as_of = f" Everything shown is as of {clock_time(c.as_of)} UTC." if c.as_of else ""
        end = "" if retry.endswith("…") else "."
        return (f"⚠ Daemon at {base_url} unreachable{since} ({short_reason(c.reason, timeout=timeout)}){retry}{end}"
                f"{as_of}")
    if c.state == "resyncing":
        seq = f" from event #{c.last_seq}" if c.last_seq is not None else ""
        as_of = f" Shown: as of {clock_time(c.as_of)} UTC." if c.as_of else ""
        return f"↻ Reconnected — catching up{seq} ({c.reason}).{as_of}"
    if c.state == "refused":
        retry = retry_text(c, now)
        return f"⚠ The daemon refused this console: {c.reason}; {retry}{'' if retry.endswith('…') else '.'}"
    return ""


class ConnectionBanner(Static):
    """Hidden while the stream is live; otherwise says what is wrong and since when, and
    counts down to the next try (each second, when the app's time ticks)."""

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

    _countdown: Timer | None = None

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._show, init=True)

    def _show(self, connection: Connection) -> None:
        self._draw(connection)
        for state in ("connecting", "resyncing", "down", "refused"):
            self.set_class(connection.state == state, f"-{state}")
        waiting = connection.state in ("down", "refused") and connection.retry_at is not None \
            and connection.retry_at > time.monotonic()
        if waiting and getattr(self.app, "time_ticks", True):
            if self._countdown is None:
                self._countdown = self.set_interval(1.0, self._tick)
            else:
                self._countdown.resume()
        elif self._countdown is not None:
            self._countdown.pause()

    def _draw(self, connection: Connection) -> None:
        client = getattr(self.app, "client", None)
        timeout = getattr(client, "timeout", None)
        text = banner_text(connection, getattr(self.app, "base_url", ""),
                           timeout=timeout if isinstance(timeout, int | float) else None)
        self.set_class(bool(text), "-shown")
        self.update(text)

    def _tick(self) -> None:
        connection: Connection = self.app.connection  # type: ignore[attr-defined]
        self._draw(connection)
        if connection.retry_at is None or connection.retry_at <= time.monotonic():
            assert self._countdown is not None
            self._countdown.pause()  # the try is under way: the text says so until the next change
