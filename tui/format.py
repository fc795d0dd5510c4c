"""How the console writes values: money, durations, times, statuses in colour.

Pure functions of their arguments (no clock, no app), so screens stay deterministic
under test and every screen writes a figure the same way."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from rich.text import Text

from socialsync.common.errors import ApiError

STATUS_STYLES = {
    "running": "bold green",
    "launching": "yellow",
    "loading": "yellow",
    "stopped": "bright_black",
    "error": "bold red",
    "offline": "red",
    "destroyed": "bright_black strike",
}
SETUP_STYLES = {
    "ready": "bold green",
    "installing": "yellow",
    "pending": "bright_black",
    "failed": "bold red",
}
GENERATION_STYLES = {
    "queued": "bright_black",
    "processing": "cyan",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}
DOWNLOAD_STYLES = {
    "queued": "bright_black",
    "running": "cyan",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}


def to_decimal(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def money(value: object, *, places: int = 2, dollar: bool = True) -> str:
    """``"0.3492"`` → ``$0.35``; None → ``—``."""
    d = to_decimal(value)
    if d is None:
        return "—"
    q = Decimal(1).scaleb(-places)
    text = f"{d.quantize(q):,f}"
    return f"${text}" if dollar else text


def price(value: object) -> str:
    """A price per hour as Vast quotes it (up to four decimals): ``$0.3492``."""
    d = to_decimal(value)
    if d is None:
        return "—"
    return f"${d.quantize(Decimal('0.0001')).normalize():f}" if d < 1 else f"${d.quantize(Decimal('0.01')):f}"


def duration(seconds: float | None) -> str:
    """``42s``, ``12m05s``, ``3h07m``, ``2d04h``; None → ``—``."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def millis(ms: int | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.1f}s" if ms < 60_000 else duration(ms / 1000)


def parse_time(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def epoch(value: object) -> float | None:
    dt = parse_time(value)
    return None if dt is None else dt.timestamp()


def clock_time(ts: float | None) -> str:
    """``17:30:12`` (UTC, as every time of the API)."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def stamp(value: object) -> str:
    """``2026-12-03 17:30:12`` (UTC) from an API time."""
    dt = parse_time(value)
    return "—" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def styled(value: str | None, styles: dict[str, str]) -> Text:
    value = value or "—"
    return Text(value, style=styles.get(value, ""))


def gpu_label(gpu: str | None, count: int | None) -> str:
    if not gpu:
        return "—"
    return f"{gpu} ×{count}" if count else gpu


def size(n: int | float | None) -> str:
    if n is None:
        return "—"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def shorten(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def describe_error(exc: BaseException) -> str:
    """What an operator reads when something failed: the daemon's message and code."""
    if isinstance(exc, ApiError):
        text = f"{exc.error} [{exc.code}]"
        if exc.details:
            text += f": {exc.details}"
        fields = exc.body.get("fields") if isinstance(exc.body, dict) else None
        if fields:
            parts = []
            for f in fields[:5]:
                loc = f.get("loc") or f.get("field") or f.get("path")
                if isinstance(loc, list):
                    loc = ".".join(str(p) for p in loc)
                msg = f.get("msg") or f.get("message") or ""
                parts.append(f"{loc}: {msg}" if loc else str(msg))
            if parts and not exc.details:
                text += ": " + "; ".join(parts)
        return text
    name = type(exc).__name__
    if name == "DaemonUnavailable":
        return f"The daemon cannot be reached [UNAVAILABLE]: {exc}"
    return f"{name}: {exc}" if str(exc) else name
