"""The ZeroMQ transport of the event stream (it lives here because ``common`` must not
import ``zmq``). The zguide "Clone" order:

1. connect a SUB socket to the endpoint ``GET /api/events/info`` names, subscribe;
2. wait for the first message: the daemon greets every new subscription with a
   heartbeat, so from then on nothing published is missed;
3. take the snapshot over HTTP (``GET /api/events/snapshot``: the snapshot and its seq);
4. hand the stream a ``hello`` with it, then every message; the stream drops events
   with ``seq`` ≤ the snapshot's and re-snapshots on a gap (``resync``).

Reconnecting after a drop (``open(since, epoch)``) resumes instead of step 3: the
events after ``since`` come from the daemon's replay ring (``GET /api/events``) behind
a resumed ``hello``; if the ring no longer has them, or the daemon restarted, a
``resnapshot`` and a fresh snapshot follow, as over ``/ws``.

It subscribes to every topic and lets the stream filter, because gap detection needs
the whole sequence. Heartbeats also bound how long a dead daemon goes unnoticed.

Usage: ``DaemonClient(url, key, transports={"zmq": ZmqTransport})`` or ``daemon_client()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio
from yarl import URL

from socialsync.common.client import DaemonClient, EventTransport, TransportClosed
from socialsync.common.events import HELLO, RESNAPSHOT, EventFilter

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ZmqTransport(EventTransport):
    name = "zmq"
    server_filters = False

    def __init__(
        self,
        client: DaemonClient,
        flt: EventFilter,
        *,
        endpoint: str | None = None,
        context: zmq.asyncio.Context | None = None,
        heartbeat_timeout: float | None = None,
        rcvhwm: int = 100_000,
    ):
        self.client = client
        self.filter = flt
        self.endpoint = endpoint
        self._context = context
        self._timeout = heartbeat_timeout
        self.rcvhwm = rcvhwm
        self._sock: zmq.asyncio.Socket | None = None
        self._pending: deque[dict[str, Any]] = deque()

    def _reachable(self, endpoint: str) -> str | None:
        """Why this endpoint cannot work from here, or None."""
        if endpoint.startswith("ipc://"):
            if not self.client.is_local:
                return f"the daemon at {self.client.base_url} is not on this machine"
            path = Path(endpoint[len("ipc://"):])
            if not path.exists():
                return f"{path} does not exist here"
            return None
        if endpoint.startswith("tcp://"):
            host = URL(endpoint.replace("tcp://", "http://", 1)).host or ""
            if host in LOOPBACK_HOSTS and not self.client.is_local:
                return f"{endpoint} is the daemon's loopback, not this machine's"
        return None

    async def open(self, since: int | None, epoch: str | None) -> None:
        info = await self.client.events_info()
        endpoint = self.endpoint or info.zmq_endpoint
        if not endpoint:
            raise TransportClosed("the daemon publishes no ZeroMQ stream", fallback=True)
        why = self._reachable(endpoint)
        if why:
            raise TransportClosed(why, fallback=True)
        if self._timeout is None:
            self._timeout = max(3 * (info.zmq_heartbeat or 1.0), 2.0)
        ctx = self._context or zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock = sock
        try:
            first = await self._recv_raw()
        except TransportClosed as exc:
            raise TransportClosed(f"no message from {endpoint}: {exc.reason}", fallback=True) from exc
        if since is not None:
            # Back from a drop: what was published meanwhile comes from the daemon's ring
            # (GET /api/events); the stream drops what the socket then repeats.
            missed = await self.client.missed_events(since, epoch)
            if missed is not None:
                self._pending.append({"type": HELLO, "data": {"seq": since, "epoch": missed["epoch"],
                                                              "resumed": True, "snapshot": None},
                                      "seq": since, "ts": ""})
                self._pending.extend(missed["events"])
                self._pending.append(first)
                return
            self._pending.append({"type": RESNAPSHOT, "data": {"since": since, "reason": "the events missed are "
                                  "no longer buffered, or the daemon restarted"}, "seq": since, "ts": ""})
        self._pending.append(await self._hello())
        self._pending.append(first)

    async def _hello(self) -> dict[str, Any]:
        snap = await self.client.snapshot_raw()
        data = {"seq": snap["seq"], "epoch": snap["epoch"], "resumed": False, "snapshot": snap["snapshot"]}
        return {"type": HELLO, "data": data, "seq": snap["seq"], "ts": ""}

    async def _recv_raw(self) -> dict[str, Any]:
        sock = self._sock
        if sock is None:
            raise TransportClosed("not connected")
        try:
            async with asyncio.timeout(self._timeout):
                frames = await sock.recv_multipart()
        except TimeoutError:
            raise TransportClosed(f"no heartbeat from the daemon in {self._timeout:.1f} s") from None
        except zmq.ZMQError as exc:
            raise TransportClosed(f"ZeroMQ receive failed: {exc}") from exc
        return orjson.loads(frames[-1])

    async def recv(self) -> dict[str, Any]:
        if self._pending:
            return self._pending.popleft()
        return await self._recv_raw()

    async def resync(self, since: int, epoch: str | None) -> None:
        hello = await self._hello()
        reason = "re-snapshot after a gap" if hello["data"]["epoch"] == epoch else "the daemon restarted"
        self._pending.append({"type": RESNAPSHOT, "data": {"since": since, "reason": reason},
                              "seq": since, "ts": ""})
        self._pending.append(hello)

    async def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.close(linger=0)
            self._sock = None


def daemon_client(base_url: str, api_key: str | None = None, **kw: Any) -> DaemonClient:
    """A client whose ``events(transport="auto")`` prefers ZeroMQ on the daemon's machine."""
    transports = {"zmq": ZmqTransport, **kw.pop("transports", {})}
    return DaemonClient(base_url, api_key, transports=transports, **kw)
