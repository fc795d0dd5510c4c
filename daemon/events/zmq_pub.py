"""The ZeroMQ stream: the daemon binds an XPUB socket and publishes every bus event as
two frames, ``[type, envelope]`` (the topic is the event type, so subscribers filter
by prefix; the envelope is the same JSON as on ``/ws``).

Subscribers follow the zguide "Clone" pattern: connect and subscribe, take a snapshot
over HTTP (``GET /api/events/snapshot`` or ``/api/events/info`` for the ``seq``), then
apply the events whose ``seq`` is larger. Two extras make that reliable:

- a ``heartbeat`` message (topic ``heartbeat``, ``data = {epoch, interval}``, ``seq`` =
  the last event's) every ``heartbeat`` seconds, so a subscriber notices a dead daemon, a
  restart (new epoch) and lost trailing events (``seq`` beyond its own);
- the socket is an XPUB: when a subscription arrives the daemon answers at once with a
  heartbeat, so a subscriber knows its subscription is live (no "slow joiner" guess)
  before it takes the snapshot.

Publishing never blocks the loop: a non-blocking send from a bus listener; at the
high-water mark ZeroMQ drops (a subscriber sees the ``seq`` gap and re-snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

import orjson
import zmq

from socialsync.common.events import HEARTBEAT
from socialsync.common.wire import now_iso
from socialsync.daemon.events.bus import Event, EventBus

log = logging.getLogger(__name__)

IPC_PREFIX = "ipc://"
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
HEARTBEAT_TOPIC = HEARTBEAT.encode()
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class EndpointError(RuntimeError):
    """The configured endpoint cannot be bound (in use, not a socket, path too long)."""


class PathTooLong(EndpointError):
    """The ipc path does not fit in a unix socket address."""


def default_endpoint(run_dir: Path) -> str:
    return f"{IPC_PREFIX}{run_dir / 'events.sock'}"


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len(IPC_PREFIX):]) if endpoint.startswith(IPC_PREFIX) else None


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def prepare_ipc(path: Path) -> None:
    """Create the runtime dir; replace a stale socket file, refuse a live or foreign one."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise PathTooLong(
            f"ipc path too long for a unix socket ({len(os.fsencode(path))} > {SUN_PATH_MAX} bytes): {path}; "
            "set runtime_dir or events.zmq_endpoint to a shorter path")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise EndpointError(f"{path} exists and is not a socket; not removing it")
    if _socket_alive(path):
        raise EndpointError(f"{path} is in use: is another daemon running with this runtime dir?")
    path.unlink()
    log.info("removed stale event socket path=%s", path)


class ZmqPublisher:
    """Knobs: ``hwm`` (SNDHWM: messages queued per subscriber before ZeroMQ drops),
    ``linger_ms`` (how long close waits to flush), ``heartbeat`` (seconds)."""

    def __init__(
        self,
        bus: EventBus,
        endpoint: str,
        *,
        hwm: int = 10_000,
        linger_ms: int = 250,
        heartbeat: float = 1.0,
        epoch: str = "",
    ):
        self.bus = bus
        self.requested = endpoint
        self.endpoint: str | None = None  # as bound (a tcp wildcard port resolved)
        self.hwm = hwm
        self.linger_ms = linger_ms
        self.heartbeat = heartbeat
        self.epoch = epoch
        self.stats = {"sent": 0, "errors": 0, "subscriptions": 0, "heartbeats": 0}
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._ipc: Path | None = None
        self._ipc_ino: int | None = None
        self._task: asyncio.Task | None = None
        self._topics: dict[str, bytes] = {}
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._check_scheduled = False

    @property
    def socket(self) -> zmq.Socket | None:
        return self._sock

    def open(self) -> None:
        """Bind (synchronous and quick); start publishing the bus's events."""
        self._ipc = ipc_path(self.requested)
        if self._ipc is not None:
            prepare_ipc(self._ipc)
        ctx = zmq.Context(io_threads=1)
        sock = ctx.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only a topic's first
            sock.bind(self.requested)
        except zmq.ZMQError as exc:
            sock.close(0)
            ctx.term()
            raise EndpointError(f"cannot bind the event socket {self.requested}: {exc}") from exc
        self._ctx, self._sock = ctx, sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._ipc is not None:
            self._ipc_ino = self._ipc.stat().st_ino
        loop = self._loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        loop.add_reader(self._fd, self._drain)
        self.bus.add_listener(self.publish, first=True)
        self._task = asyncio.create_task(self._heartbeats(), name="zmq-heartbeat")
        log.info("publishing events endpoint=%s hwm=%d", self.endpoint, self.hwm)

    def publish(self, event: Event) -> None:
        """The bus listener: one non-blocking two-frame send."""
        sock = self._sock
        if sock is None:
            return
        topic = self._topics.get(event.type)
        if topic is None:
            topic = self._topics[event.type] = event.type.encode()
        self._send(sock, topic, event.json)

    def _send(self, sock: zmq.Socket, topic: bytes, body: bytes) -> None:
        try:
            sock.send(topic, _MORE)  # two plain sends: a third of send_multipart's cost
            sock.send(body, _NOBLOCK)
            self.stats["sent"] += 1
        except zmq.ZMQError as exc:  # XPUB drops at the HWM itself; Again is not expected
            self.stats["errors"] += 1
            if self.stats["errors"] <= 10:
                log.warning("event publish failed endpoint=%s: %s", self.endpoint, exc)
        # A send may process the socket's pending commands and swallow the FD's edge, so
        # look for subscriptions after sending: once per loop iteration, not per event.
        if not self._check_scheduled and self._loop is not None:
            self._check_scheduled = True
            self._loop.call_soon(self._check)

    def _check(self) -> None:
        self._check_scheduled = False
        sock = self._sock
        if sock is not None and sock.getsockopt(_EVENTS) & _POLLIN:
            self._drain()

    def _heartbeat(self) -> None:
        sock = self._sock
        if sock is None:
            return
        body = orjson.dumps({
            "type": HEARTBEAT,
            "data": {"epoch": self.epoch, "interval": self.heartbeat},
            "seq": self.bus.seq,
            "ts": now_iso(),
        })
        self.stats["heartbeats"] += 1
        self._send(sock, HEARTBEAT_TOPIC, body)

    def _drain(self) -> None:
        """Read subscription messages; greet each new subscriber with a heartbeat."""
        sock = self._sock
        if sock is None:
            return
        greet = False
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            if msg[:1] == b"\x01":
                self.stats["subscriptions"] += 1
                topic = msg[1:]
                greet = greet or HEARTBEAT_TOPIC.startswith(topic)
        if greet:
            self._heartbeat()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            self._drain()
            self._heartbeat()

    async def close(self) -> None:
        """Stop publishing, close the socket (with its linger) and remove the ipc file."""
        self.bus.remove_listener(self.publish)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        sock, ctx = self._sock, self._ctx
        self._sock = self._ctx = None
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        if sock is not None:
            sock.close(linger=self.linger_ms)
        if ctx is not None:
            await asyncio.to_thread(ctx.term)  # waits up to the linger; never on the loop
        if self._ipc is not None:
            with contextlib.suppress(FileNotFoundError):
                if self._ipc.stat().st_ino == self._ipc_ino:  # ours, not a successor's
                    self._ipc.unlink()
        log.info("event socket closed endpoint=%s", self.endpoint)
