"""Logging to stderr: timestamps for a terminal, syslog priority prefixes and no
timestamps when journald reads the stream (``JOURNAL_STREAM``). Configured secrets,
our own API keys, and credentials in the usual places (``Authorization:``, ``X-API-Key:``,
``token=``, the session cookie) are scrubbed from every record as a last line of
defence: code does not log them, but a library may echo a raw request."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journald() -> bool:
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines())


REDACTED = "[redacted]"
# What a credential looks like, wherever it comes from: keys we issue (``ssk_…``),
# header values, query parameters and cookies, JSON fields. Group 1 is kept.
CREDENTIALS = re.compile(
    r"(ssk_)[A-Za-z0-9_-]{16,}"
    r"|(?i:((?:authorization|proxy-authorization)\s*[:=]\s*(?:bearer\s+|basic\s+|token\s+)?))[^\s'\",]+"
    r"|(?i:((?:x-api-key|cookie|set-cookie)\s*[:=]\s*))[^\r\n'\"]+"
    r"|(?i:(\b(?:socialsync_session|api_?key|access_token|token|password|passwd|secret)=))[^&\s;,'\")]+"
    r"|(?i:(\"(?:api_?key|key|token|password|secret)\"\s*:\s*\"))[^\"]*"
)


def _keep_name(match: re.Match[str]) -> str:
    kept = next((g for g in match.groups() if g is not None), "")
    return kept + REDACTED


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return CREDENTIALS.sub(_keep_name, text)


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def add(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        scrubbed = scrub(message, self.secrets)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


SECRET_FILTER = SecretFilter()


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad header, a broken chunk, a scanner's
    garbage) as an ERROR with a traceback of its own parser. For an operator that is one
    line of noise about the client, not a fault of the daemon: a WARNING, no traceback.
    (The client gets its 400 either way.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "malformed HTTP request from %s: %s", (remote, exc.message or type(exc).__name__)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


_SERVER_ID = re.compile(r"\bserver_id=(\d+)")
MAX_EVENT_MESSAGE = 2000


class EventLogHandler(logging.Handler):
    """Log records of ``level`` and above, published as ``log`` events (``LogData``:
    level, ``logger: message``, the ``server_id=N`` the message names) so the console's
    log pane and any subscriber see what the daemon warns about. Scrubbed like stderr.
    At most ``rate`` a second: the rest are counted and the count published once the
    next second allows. Records from other threads reach the loop's thread through
    ``call_soon_threadsafe``; a record logged while publishing one is not published."""

    def __init__(self, publish: Callable[[dict[str, Any]], None], loop: asyncio.AbstractEventLoop,
                 level: int = logging.WARNING, rate: int = 20) -> None:
        super().__init__(level)
        self.addFilter(SECRET_FILTER)
        self._publish = publish
        self._loop = loop
        self._thread = threading.get_ident()
        self._rate = rate
        self._second = 0.0
        self._sent = 0
        self._dropped = 0
        self._busy = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"{record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f" ({type(exc).__name__}: {exc})"
            found = _SERVER_ID.search(message)
            data = {"level": record.levelname.lower(), "message": message[:MAX_EVENT_MESSAGE],
                    "serverId": int(found[1]) if found else None}
            if threading.get_ident() == self._thread:
                self._deliver(data)
            else:
                self._loop.call_soon_threadsafe(self._deliver, data)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass
        except Exception:
            self.handleError(record)

    def _deliver(self, data: dict[str, Any]) -> None:
        if self._busy:
            return
        now = time.monotonic()
        if now - self._second >= 1.0:
            self._second, self._sent = now, 0
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                self._send({"level": "warning", "serverId": None,
                            "message": f"socialsync.daemon.logs: {dropped} log line(s) not published "
                                       f"(more than {self._rate} a second; stderr has them all)"})
        if self._sent >= self._rate:
            self._dropped += 1
            return
        self._send(data)

    def _send(self, data: dict[str, Any]) -> None:
        self._sent += 1
        self._busy = True
        try:
            self._publish(data)
        finally:
            self._busy = False


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    for secret in secrets:
        SECRET_FILTER.add(secret)
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SECRET_FILTER)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
    # aiosqlite's DEBUG is every statement with its parameters (hashes, prompts, the
    # instances' keys): too much, and not ours to show.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    # Python's warnings get the same prefixes and the same scrubbing.
    logging.captureWarnings(True)
