"""The ``/ws`` hub, after Home Assistant's ``websocket_api``: per client one bounded bus
subscription and one writer task. A client that falls behind is disconnected with a
reason; it never grows memory and never stalls the others.

Protocol (every message is the envelope ``{"type", "data", "seq", "ts"}`` as text):

- the first message is a ``hello``: ``data = {seq, epoch, resumed, snapshot}``. Every
  event that follows has a ``seq`` greater than ``data.seq`` and none after it is
  missed. A fresh connection gets a snapshot taken at (at least) that ``seq``; one that
  resumed (``?since=N&epoch=E`` or a ``resume`` message) gets ``snapshot: null`` and
  the events after ``N`` from the ring. If those are gone (or the daemon restarted) it
  gets a ``resnapshot`` with the reason, then a fresh ``hello``;
- client → hub: ``subscribe {types, serverIds}``, ``resume {since, epoch}``, ``ping``
  (→ ``pong``). A bad message gets an ``error``; the connection stays open.
- control messages carry the ``seq`` of the stream position they describe, never a
  new number, so a client's gap check is not confused by them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from socialsync.common.events import AUDIT, ERROR, HELLO, PONG, RESNAPSHOT, SUBSCRIBED, EventFilter
from socialsync.common.wire import now_iso
from socialsync.daemon.events.bus import Event, EventBus, Subscription

log = logging.getLogger(__name__)

SnapshotFn = Callable[[], Awaitable[dict[str, Any]]]

CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER  # 1013: reconnect and resume, a little later
CLOSE_REVOKED = WSCloseCode.POLICY_VIOLATION  # 1008: the credentials are gone
CLOSE_SHUTDOWN = WSCloseCode.GOING_AWAY  # 1001
RESUME = "resume"
MAX_REASON = 123  # bytes a close frame can carry


class _Command:
    """Something the reader asks the writer to send, queued behind the events already
    waiting so the client sees one ordered stream from one writer."""

    __slots__ = ("data", "kind")

    def __init__(self, kind: str, data: Any):
        self.kind = kind
        self.data = data


class _Client:
    __slots__ = (
        "closing", "filter", "hub", "key_id", "last_seq", "peer", "shut", "sub", "transport", "writer", "ws",
    )

    def __init__(self, hub: WebSocketHub, ws: web.WebSocketResponse, transport: Any, flt: EventFilter,
                 key_id: int | None, peer: str | None):
        self.hub = hub
        self.ws = ws
        self.transport = transport
        self.filter = flt
        self.key_id = key_id
        self.peer = peer
        self.sub: Subscription | None = None
        self.last_seq = 0  # the stream position: nothing at or below it is sent again
        self.writer: asyncio.Task | None = None
        self.closing = False  # no more work for this client
        self.shut = False  # a close has been started by the hub

    def accepts(self, event: Event) -> bool:
        """The subscription's filter, and the overflow alarm: when the queue is already
        full this event cannot be kept, so the client is dropped now (the writer may be
        stuck on a client that stopped reading)."""
        flt = self.filter
        if not flt.everything and not flt.matches(event.type, event.data):
            return False
        sub = self.sub
        if sub is not None and sub.queue.full():
            self.hub._too_slow(self)
        return True


class _Snap:
    __slots__ = ("at", "data", "hello", "seq")

    def __init__(self, seq: int, data: dict[str, Any]):
        self.seq = seq
        self.at = time.monotonic()
        self.data = data
        self.hello: bytes | None = None  # the unfiltered hello, encoded once for everyone


class WebSocketHub:
    """Knobs: ``queue_size`` (events a client may be behind before it is dropped),
    ``heartbeat`` (websocket ping interval, s), ``close_timeout`` (how long a close
    handshake may take before the connection is cut), ``max_msg_size`` (largest message
    a client may send), ``compress`` (permessage-deflate; off: events are small and
    compressing them once per client costs more than it saves), ``snapshot_max_age``
    (a snapshot taken at the current ``seq`` is reused by clients that connect within
    this many seconds, so a reconnect storm costs one query)."""

    def __init__(
        self,
        bus: EventBus,
        snapshot: SnapshotFn,
        *,
        queue_size: int = 1000,
        heartbeat: float | None = 20.0,
        close_timeout: float = 2.0,
        max_msg_size: int = 64 * 1024,
        compress: bool = False,
        snapshot_max_age: float = 1.0,
        ring_size: int = 10_000,
        epoch: str | None = None,
    ):
        self.bus = bus
        self.ring_size = ring_size
        self._snapshot_fn = snapshot
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self.close_timeout = close_timeout
        self.max_msg_size = max_msg_size
        self.compress = compress
        self.snapshot_max_age = snapshot_max_age
        self.epoch = epoch or secrets.token_hex(6)
        self.stats = {"connections": 0, "too_slow": 0, "revoked": 0, "snapshots": 0}
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task] = set()
        self._snap: _Snap | None = None
        self._inflight: dict[int, asyncio.Future[_Snap]] = {}
        self._closing = False
        bus.add_listener(self._on_event)

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def oldest_seq(self) -> int | None:
        """The oldest seq the bus's ring still holds (it keeps the last ``ring_size``)."""
        seq = self.bus.seq
        return max(1, seq - self.ring_size + 1) if seq else None

    # -- the snapshot --------------------------------------------------------------

    async def snapshot(self) -> tuple[int, dict[str, Any]]:
        """``(seq, snapshot)``: the snapshot reflects at least every event up to ``seq``
        (``seq`` is read before the query), so a client that subscribed first and then
        applies the events after ``seq`` misses nothing."""
        snap = await self._snapshot()
        return snap.seq, snap.data

    async def _snapshot(self) -> _Snap:
        seq = self.bus.seq
        cached = self._snap
        if cached is not None and cached.seq == seq and time.monotonic() - cached.at <= self.snapshot_max_age:
            return cached
        future = self._inflight.get(seq)
        if future is None:
            future = asyncio.ensure_future(self._take_snapshot(seq))
            self._inflight[seq] = future
            future.add_done_callback(self._snapshot_taken)
        return await asyncio.shield(future)

    def _snapshot_taken(self, future: asyncio.Future[_Snap]) -> None:
        for seq, f in list(self._inflight.items()):
            if f is future:
                del self._inflight[seq]
        if not future.cancelled() and future.exception() is not None:
            log.error("snapshot failed: %s", future.exception())

    async def _take_snapshot(self, seq: int) -> _Snap:
        self.stats["snapshots"] += 1
        snap = _Snap(seq, await self._snapshot_fn())
        if self._snap is None or seq >= self._snap.seq:
            self._snap = snap
        return snap

    # -- a connection ----------------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        *,
        since: int | None = None,
        epoch: str | None = None,
        filter: EventFilter | None = None,
        key_id: int | None = None,
    ) -> web.WebSocketResponse:
        """Upgrade (credentials were checked before this is called) and stream until
        either side closes."""
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat, timeout=self.close_timeout, max_msg_size=self.max_msg_size,
            compress=self.compress,
        )
        transport = request.transport
        await ws.prepare(request)
        if self._closing:
            await ws.close(code=CLOSE_SHUTDOWN, message=b"daemon shutting down")
            return ws
        client = _Client(self, ws, transport, filter or EventFilter(), key_id, request.remote)
        # Subscribe before the hello's seq is read: nothing published from here on is missed.
        client.sub = self.bus.subscribe(self.queue_size, client.accepts)
        self._clients.add(client)
        self.stats["connections"] += 1
        log.debug("ws client connected peer=%s since=%s clients=%d", client.peer, since, len(self._clients))
        client.writer = asyncio.create_task(self._write(client, since, epoch), name=f"ws-writer-{client.peer}")
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._on_message(client, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self._error(client, "Binary frames are not accepted", "send JSON text messages")
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            await self._finish(client)
        return ws

    async def _finish(self, client: _Client) -> None:
        client.closing = True
        if client.sub is not None:
            client.sub.close()
        self._clients.discard(client)
        writer = client.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if not client.ws.closed and not client.shut:
            await self._close(client, WSCloseCode.OK, "")
        log.debug("ws client gone peer=%s code=%s clients=%d", client.peer, client.ws.close_code, len(self._clients))

    # -- the writer: the only task that sends to this client ------------------------------

    async def _write(self, client: _Client, since: int | None, epoch: str | None) -> None:
        ws = client.ws
        sub = client.sub
        assert sub is not None
        try:
            if since is None:
                await self._send_hello(client)
            else:
                await self._resume(client, since, epoch)
            queue = sub.queue
            while True:
                # The queue is shared with this hub's own commands, so read it directly.
                if sub.overflowed:
                    self._too_slow(client)
                    return
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = await queue.get()
                if sub.overflowed:  # the bus queued its overflow marker: stop here
                    self._too_slow(client)
                    return
                if type(item) is Event:
                    if item.seq <= client.last_seq:
                        continue
                    client.last_seq = item.seq
                    flt = client.filter  # it may have changed since the event was queued
                    if flt.everything or flt.matches(item.type, item.data):
                        await ws.send_frame(item.json, WSMsgType.TEXT)
                elif item.kind == RESUME:
                    await self._resume(client, *item.data)
                else:
                    await self._send_control(client, item.kind, item.data)
        except ConnectionError as exc:  # the peer went away mid-send
            log.debug("ws send failed peer=%s: %s", client.peer, exc)
        except Exception:
            log.exception("ws writer failed peer=%s", client.peer)
            await self._close(client, WSCloseCode.INTERNAL_ERROR, "internal error")

    async def _send_control(self, client: _Client, type: str, data: Any) -> None:
        body = orjson.dumps({"type": type, "data": data, "seq": client.last_seq, "ts": now_iso()})
        await client.ws.send_frame(body, WSMsgType.TEXT)

    async def _send_hello(self, client: _Client) -> None:
        snap = await self._snapshot()
        # The snapshot's seq is the bus's at request time, so never behind what was sent;
        # queued events up to it are in the snapshot and are dropped by the writer.
        client.last_seq = snap.seq
        if client.filter.server_ids is None:
            if snap.hello is None:
                snap.hello = self._hello(snap.seq, snap.data)
            body = snap.hello
        else:
            body = self._hello(snap.seq, client.filter.snapshot(snap.data))
        await client.ws.send_frame(body, WSMsgType.TEXT)

    def _hello(self, seq: int, snapshot: dict[str, Any] | None, resumed: bool = False) -> bytes:
        data = {"seq": seq, "epoch": self.epoch, "resumed": resumed, "snapshot": snapshot}
        return orjson.dumps({"type": HELLO, "data": data, "seq": seq, "ts": now_iso()})

    def _why_not_resumable(self, since: int, epoch: str | None) -> str | None:
        if epoch is not None and epoch != self.epoch:
            return f"the daemon restarted (epoch {epoch} is gone, now {self.epoch})"
        if since > self.bus.seq:
            return f"seq {since} is ahead of the daemon's {self.bus.seq}: it restarted"
        return None

    async def _resume(self, client: _Client, since: int, epoch: str | None) -> None:
        reason = self._why_not_resumable(since, epoch)
        events = None if reason else self.bus.since(since)
        if events is None:
            if reason is None:
                reason = f"events after seq {since} are no longer buffered (oldest kept: {self.oldest_seq})"
            await self._send_control(client, RESNAPSHOT, {"since": since, "reason": reason})
            await self._send_hello(client)
            return
        # Everything up to the bus's seq is replayed from the ring (read without an await
        # in between); queued events up to it are dropped as already sent.
        client.last_seq = self.bus.seq
        await client.ws.send_frame(self._hello(since, None, resumed=True), WSMsgType.TEXT)
        flt = client.filter
        for event in events:
            if flt.matches(event.type, event.data):
                await client.ws.send_frame(event.json, WSMsgType.TEXT)

    # -- the reader: messages from the client ------------------------------------

    def _on_message(self, client: _Client, raw: str) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._error(client, "Invalid JSON", str(exc))
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "subscribe":
            types, server_ids = msg.get("types"), msg.get("serverIds")
            if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
                self._error(client, "Invalid subscribe", "types must be a list of event type names or null")
            elif server_ids is not None and not (
                    isinstance(server_ids, list) and all(type(s) is int for s in server_ids)):
                self._error(client, "Invalid subscribe", "serverIds must be a list of server ids or null")
            else:
                client.filter = EventFilter.of(types, server_ids)
                self._enqueue(client, _Command(SUBSCRIBED, client.filter.as_json()))
        elif kind == RESUME:
            since, epoch = msg.get("since"), msg.get("epoch")
            if type(since) is not int or since < 0 or not (epoch is None or isinstance(epoch, str)):
                self._error(client, "Invalid resume", "since must be a seq (an integer ≥ 0); epoch a string")
            else:
                self._enqueue(client, _Command(RESUME, (since, epoch)))
        elif kind == "ping":
            self._enqueue(client, _Command(PONG, {"id": msg.get("id")}))
        else:
            self._error(client, "Unknown message type",
                        f"got {kind!r}; send subscribe, resume or ping" if kind else
                        'a message is a JSON object with a "type"')

    def _error(self, client: _Client, error: str, details: str) -> None:
        self._enqueue(client, _Command(ERROR, {"error": error, "details": details, "code": "VALIDATION_ERROR"}))

    def _enqueue(self, client: _Client, command: _Command) -> None:
        sub = client.sub
        if sub is None or client.closing:
            return
        try:
            sub.queue.put_nowait(command)  # type: ignore[arg-type]  # one queue, one order
        except asyncio.QueueFull:
            sub.overflowed = True
            self._too_slow(client)

    # -- dropping clients ----------------------------------------------------------

    def _too_slow(self, client: _Client) -> None:
        if client.closing:
            return
        client.closing = True
        sub = client.sub
        behind = sub.queue.qsize() if sub is not None else 0
        reason = f"client too slow: {behind} events behind (limit {self.queue_size})"
        self.stats["too_slow"] += 1
        log.warning("ws client dropped peer=%s: %s", client.peer, reason)
        self._spawn(self._close(client, CLOSE_TOO_SLOW, reason))

    def _on_event(self, event: Event) -> None:
        """Streams opened with an API key end when the key is revoked."""
        if event.type != AUDIT or not self._clients:
            return
        data = event.data
        if data.get("action") != "api_key.revoke" or data.get("outcome") != "success":
            return
        try:
            key_id = int(data.get("targetId"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        for client in list(self._clients):
            if client.key_id == key_id and not client.closing:
                client.closing = True
                self.stats["revoked"] += 1
                self._spawn(self._close(client, CLOSE_REVOKED, "credentials revoked"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, client: _Client, code: int, reason: str) -> None:
        """Close with a code and a reason; a client that does not complete the handshake
        in ``close_timeout`` (or does not read at all) has its connection cut."""
        if client.shut:
            return
        client.shut = True
        client.closing = True
        writer = client.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        message = reason.encode()[:MAX_REASON]
        try:
            await asyncio.wait_for(client.ws.close(code=code, message=message), self.close_timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        # The close frame sits behind whatever the client has not read yet. Give it
        # ``close_timeout`` to drain; a client that reads nothing has its connection cut
        # (its unread bytes would otherwise hold the socket open).
        transport = client.transport
        if transport is None:
            return
        deadline = time.monotonic() + self.close_timeout
        while transport.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if transport.get_write_buffer_size():
            transport.abort()

    async def close_all(self, code: int = CLOSE_SHUTDOWN, reason: str = "daemon shutting down") -> None:
        """Shutdown: refuse new clients, close every open one with ``code`` (1001)."""
        self._closing = True
        clients = list(self._clients)
        for client in clients:
            client.closing = True
        if clients:
            log.info("closing %d websocket clients code=%d", len(clients), code)
        await asyncio.gather(*(self._close(c, code, reason) for c in clients), return_exceptions=True)

    async def close(self) -> None:
        await self.close_all()
        self.bus.remove_listener(self._on_event)
        for future in list(self._inflight.values()):
            future.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
