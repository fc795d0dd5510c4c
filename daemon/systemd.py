"""systemd integration without libsystemd: ``sd_notify(3)`` over a datagram socket, the
watchdog pinger and the one-line ``STATUS=`` summary, all driven by the event loop.

Everything here is a no-op outside systemd (no ``$NOTIFY_SOCKET``). The watchdog ping
is a task on the event loop, never a thread: when the loop is blocked the pings stop
and systemd restarts the daemon, which is the point of ``WatchdogSec=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from socialsync.daemon import keys
from socialsync.daemon.events import Event

log = logging.getLogger(__name__)

StatusSource = Callable[[web.Application], Awaitable[str]]
#: What the fleet part of ``STATUS=`` says; the app may provide its own (the fleet
#: service knows best), otherwise ``fleet_summary`` counts rows.
STATUS_SOURCE: web.AppKey[StatusSource] = web.AppKey("systemd_status_source")

STATUS_INTERVAL = 15.0  # seconds between two refreshes of STATUS= when nothing happens
STATUS_DEBOUNCE = 1.0  # after a fleet event, wait this long so a burst is one refresh
STATUS_EVENTS = ("server_", "generation_")  # event type prefixes that change the counts


def notify_address(value: str | None) -> str | None:
    """The socket address in ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract
    namespace. Anything else (``vsock:…``) is not for us."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET not understood, not notifying systemd value=%s", value)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """``WATCHDOG_USEC`` in seconds, or None when no watchdog is asked of this process
    (``WATCHDOG_PID``, when set, names the process that must ping)."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Notifier:
    """``sd_notify(3)``: one datagram per message. Never blocks and never raises: the
    daemon's work does not depend on systemd hearing it."""

    def __init__(self, address: str | None):
        self.address = address
        self._sock: socket.socket | None = None
        self._failed = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(notify_address(environ.get("NOTIFY_SOCKET")))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one message; True when it was sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            # Warn once, then quietly: a missing socket must not flood the log every ping.
            (log.debug if self._failed else log.warning)("sd_notify failed error=%s", exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", status_field(status))

    def status(self, status: str) -> bool:
        return self.send(status_field(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str, timeout: float | None = None) -> bool:
        fields = ["STOPPING=1", status_field(status)]
        if timeout is not None:
            # Tell systemd how long our own shutdown may take, whatever TimeoutStopSec= says.
            fields.append(f"EXTEND_TIMEOUT_USEC={int(timeout * 1_000_000)}")
        return self.send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_field(text: str) -> str:
    return "STATUS=" + " ".join(text.split())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


async def fleet_summary(app: web.Application) -> str:
    """``3 servers (2 ready), 1 generation running, 4 queued`` from the database."""
    row = await app[keys.DB].fetchone(
        "SELECT"
        " (SELECT count(*) FROM servers WHERE status != 'destroyed'),"
        " (SELECT count(*) FROM servers WHERE status = 'running' AND setup_status = 'ready'),"
        " (SELECT count(*) FROM generations WHERE status = 'processing'),"
        " (SELECT count(*) FROM generations WHERE status = 'queued')"
    )
    servers, ready, running, queued = (int(v or 0) for v in (row or (0, 0, 0, 0)))
    text = f"{_plural(servers, 'server')} ({ready} ready), {_plural(running, 'generation')} running"
    return f"{text}, {queued} queued" if queued else text


class Systemd:
    """The daemon's side of a ``Type=notify`` service with ``WatchdogSec=``.

    ``start_watchdog()`` as early as possible; ``ready()`` once the sockets listen
    (sends ``READY=1`` and starts refreshing ``STATUS=``); ``stopping()`` on SIGTERM;
    ``aclose()`` last.
    """

    def __init__(self, notifier: Notifier, watchdog: float | None = None, *,
                 status_interval: float = STATUS_INTERVAL, status_debounce: float = STATUS_DEBOUNCE):
        self.notifier = notifier
        self.watchdog = watchdog
        self.status_interval = status_interval
        self.status_debounce = status_debounce
        self.prefix = ""
        self.last_status: str | None = None
        self._app: web.Application | None = None
        self._dirty = asyncio.Event()
        self._pinger: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **kw: float) -> Systemd:
        notifier = Notifier.from_environ(environ)
        interval = watchdog_interval(environ) if notifier.enabled else None
        return cls(notifier, interval, **kw)

    # -- watchdog ------------------------------------------------------------------------
    def start_watchdog(self) -> None:
        if self.watchdog is None or self._pinger is not None:
            return
        period = self.watchdog / 2
        log.info("systemd watchdog enabled interval=%.3fs ping_every=%.3fs", self.watchdog, period)
        self._pinger = asyncio.create_task(self._ping(period), name="systemd-watchdog")

    async def _ping(self, period: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(period)

    # -- ready and status ----------------------------------------------------------------
    async def ready(self, app: web.Application, listening: str) -> None:
        self._app = app
        self.prefix = f"listening {listening}"
        if not self.notifier.enabled:
            return
        self.last_status = await self._compose()
        self.notifier.ready(self.last_status)
        app[keys.BUS].add_listener(self._on_event)
        self._refresher = asyncio.create_task(self._refresh(), name="systemd-status")

    def _on_event(self, event: Event) -> None:
        if event.type.startswith(STATUS_EVENTS):
            self._dirty.set()

    async def _compose(self) -> str:
        assert self._app is not None
        source = self._app.get(STATUS_SOURCE, fleet_summary)
        try:
            summary = await source(self._app)
        except Exception as exc:
            log.warning("status summary failed error=%s", exc)
            summary = "fleet status unavailable"
        return f"{self.prefix}; {summary}"

    async def _refresh(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.status_interval)
                await asyncio.sleep(self.status_debounce)
            self._dirty.clear()
            status = await self._compose()
            if status != self.last_status:
                self.notifier.status(status)
                self.last_status = status

    # -- stopping ------------------------------------------------------------------------
    async def stopping(self, status: str = "shutting down", timeout: float | None = None) -> None:
        """``STOPPING=1``. The status refresher stops here: it reads the database, which
        is about to close."""
        if self._app is not None:
            self._app[keys.BUS].remove_listener(self._on_event)
        await _cancel(self._refresher)
        self._refresher = None
        self.notifier.stopping(status, timeout)

    async def aclose(self) -> None:
        await _cancel(self._refresher)
        await _cancel(self._pinger)
        self._refresher = self._pinger = None
        self.notifier.close()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])  # without re-raising its CancelledError as ours
