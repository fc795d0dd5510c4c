"""The ``/ws`` hub, after Home Assistant's ``websocket_api``: per client one bounded queue
and one writer task. A client that falls behind is disconnected with a reason; it never
grows memory and never stalls the others. The hub is one bus listener: each event is
encoded once (the bus's JSON, one websocket frame around it) and a client that is
keeping up gets it written straight to its transport, so the cost per client per event
is a list append and, once per loop iteration, one ``transport.write``.

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
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from socialsync.common.events import AUDIT, ERROR, HELLO, PONG, RESNAPSHOT, SUBSCRIBED, EventFilter
from socialsync.common.wire import now_iso
from socialsync.daemon.events.bus import Event, EventBus

log = logging.getLogger(__name__)

SnapshotFn = Callable[[], Awaitable[dict[str, Any]]]

CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER  # 1013: reconnect and resume, a little later
CLOSE_REVOKED = WSCloseCode.POLICY_VIOLATION  # 1008: the credentials are gone
CLOSE_SHUTDOWN = WSCloseCode.GOING_AWAY  # 1001
RESUME = "resume"
MAX_REASON = 123  # bytes a close frame can carry
# Events go straight to a client's transport while it buffers less than this (asyncio's
# default high-water mark, where it would pause writing); past it they wait in the
# client's queue, which is what the slow-client policy bounds.
WRITE_HIGH_WATER = 64 * 1024
BATCH_BYTES = 256 * 1024  # the most one write of queued events carries
_PACK_LEN2 = struct.Struct("!BBH").pack
_PACK_LEN3 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, uncompressed websocket text frame (RFC 6455 §5.2). A
    server's frame carries no per-connection state, so one event's frame is built
    once and written as is to every client that did not negotiate compression."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _PACK_LEN2(0x81, 126, n) + payload
    return _PACK_LEN3(0x81, 127, n) + payload


def frame_of(event: Event) -> bytes:
    frame = event.frame
    if frame is None:
        frame = event.frame = text_frame(event.json)
    return frame


class _Command:
    """Something the reader asks the writer to send, queued behind the events already
    waiting so the client sees one ordered stream from one writer."""

    __slots__ = ("data", "kind")

    def __init__(self, kind: str, data: Any):
        self.kind = kind
        self.data = data


class _Client:
    """One connection. Its queue (``pending``: events and the reader's commands, in
    order) is bounded by the hub's ``queue_size``. While the writer task is parked on an
    empty queue (``idle``) and the transport has room, the hub sends events itself: the
    first event of a loop iteration is written at once, the rest go to ``out`` and one
    callback at the end of the iteration writes every client's ``out`` with one
    ``transport.write`` (no queue hop, no task wake per client per event; a burst
    becomes one write per client per iteration)."""

    __slots__ = (
        "closing", "drain", "everything", "filter", "idle", "key_id", "last_seq", "out", "out_size", "peer",
        "pending", "raw", "shut", "transport", "waiter", "writer", "ws",
    )

    def __init__(self, ws: web.WebSocketResponse, transport: Any, drain: Callable[[], Awaitable[None]],
                 flt: EventFilter, key_id: int | None, peer: str | None):
        self.ws = ws
        self.transport = transport
        self.drain = drain  # waits while the transport is above its high-water mark
        # Frames can be shared and written directly unless the client negotiated
        # compression (a per-connection deflate context).
        self.raw = transport is not None and not ws.compress
        self.filter = flt
        self.everything = flt.everything
        self.key_id = key_id
        self.peer = peer
        self.pending: deque[Event | _Command] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.idle = False  # the writer is parked on an empty queue: events may be written directly
        self.out: list[bytes] = []  # frames to write at the end of this loop iteration
        self.out_size = 0
        self.last_seq = 0  # the stream position: nothing at or below it is sent again
        self.writer: asyncio.Task | None = None
        self.closing = False  # no more work for this client
        self.shut = False  # a close has been started by the hub

    def set_filter(self, flt: EventFilter) -> None:
        self.filter = flt
        self.everything = flt.everything


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
        self._targets: tuple[_Client, ...] = ()  # the clients, as the fan-out iterates them
        self._dirty: list[_Client] = []  # clients with frames in ``out``
        self._in_iteration = False  # an event was fanned out in this loop iteration
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._snap: _Snap | None = None
        self._inflight: dict[int, asyncio.Future[_Snap]] = {}
        self._closing = False
        bus.add_listener(self._on_event, first=True)

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
        payload_writer = await ws.prepare(request)
        if self._closing:
            await ws.close(code=CLOSE_SHUTDOWN, message=b"daemon shutting down")
            return ws
        client = _Client(ws, transport, payload_writer.drain, filter or EventFilter(), key_id, request.remote)
        # Join the fan-out before the hello's seq is read: nothing published from here on is missed.
        self._clients.add(client)
        self._targets = tuple(self._clients)
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
        client.pending.clear()
        self._clients.discard(client)
        self._targets = tuple(self._clients)
        writer = client.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if not client.ws.closed and not client.shut:
            await self._close(client, WSCloseCode.OK, "")
        log.debug("ws client gone peer=%s code=%s clients=%d", client.peer, client.ws.close_code, len(self._clients))

    # -- the writer: the only task that sends to this client ------------------------------

    async def _write(self, client: _Client, since: int | None, epoch: str | None) -> None:
        pending = client.pending
        loop = asyncio.get_running_loop()
        try:
            if since is None:
                await self._send_hello(client)
            else:
                await self._resume(client, since, epoch)
            while True:
                if not pending:
                    # Parked: from here the fan-out writes this client's events itself,
                    # until it queues something (a command, or an event it cannot write).
                    waiter = client.waiter = loop.create_future()
                    client.idle = client.raw
                    try:
                        await waiter
                    finally:
                        client.waiter = None
                        client.idle = False
                    self._flush_client(client)  # what the fan-out already took comes first
                    continue
                if type(pending[0]) is Event:
                    await self._send_queued(client)
                    continue
                item = pending.popleft()
                assert isinstance(item, _Command)
                if item.kind == RESUME:
                    await self._resume(client, *item.data)
                else:
                    await self._send_control(client, item.kind, item.data)
        except ConnectionError as exc:  # the peer went away mid-send
            log.debug("ws send failed peer=%s: %s", client.peer, exc)
        except Exception:
            log.exception("ws writer failed peer=%s", client.peer)
            await self._close(client, WSCloseCode.INTERNAL_ERROR, "internal error")

    async def _send_queued(self, client: _Client) -> None:
        """The run of events at the head of the queue, as one write when the frames can
        be shared. Events at or below ``last_seq`` were already sent (a hello's snapshot
        or a replay covers them); the filter is read now, it may have changed."""
        pending = client.pending
        batch: list[Event] = []
        size = 0
        while pending and size < BATCH_BYTES and type(pending[0]) is Event:
            event = pending.popleft()
            assert isinstance(event, Event)
            if event.seq <= client.last_seq:
                continue
            client.last_seq = event.seq
            if client.everything or client.filter.matches(event.type, event.data):
                batch.append(event)
                size += len(event.json)
        await self._send_events(client, batch)

    async def _send_events(self, client: _Client, events: Iterable[Event]) -> None:
        if not client.raw:
            for event in events:
                await client.ws.send_frame(event.json, WSMsgType.TEXT)
            return
        frames = [frame_of(event) for event in events]
        if not frames:
            return
        transport = client.transport
        if transport.is_closing() or client.ws.closed:
            raise ConnectionResetError("the websocket is closing")
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        await client.drain()

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

    def missed(self, since: int, epoch: str | None) -> tuple[list[Event] | None, str | None]:
        """The events after ``since`` from the ring, or (None, why they cannot be replayed)."""
        reason = self._why_not_resumable(since, epoch)
        events = None if reason else self.bus.since(since)
        if events is None and reason is None:
            reason = f"events after seq {since} are no longer buffered (oldest kept: {self.oldest_seq})"
        return events, reason

    async def _resume(self, client: _Client, since: int, epoch: str | None) -> None:
        events, reason = self.missed(since, epoch)
        if events is None:
            await self._send_control(client, RESNAPSHOT, {"since": since, "reason": reason})
            await self._send_hello(client)
            return
        # Everything up to the bus's seq is replayed from the ring (read without an await
        # in between); queued events up to it are dropped as already sent.
        client.last_seq = self.bus.seq
        await client.ws.send_frame(self._hello(since, None, resumed=True), WSMsgType.TEXT)
        flt = client.filter
        matching = [event for event in events if flt.matches(event.type, event.data)]
        for start in range(0, len(matching), 1000):  # bounded writes, flow control between them
            await self._send_events(client, matching[start:start + 1000])

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
                client.set_filter(EventFilter.of(types, server_ids))
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
        if not client.closing:
            self._push(client, command)

    def _push(self, client: _Client, item: Event | _Command) -> None:
        """Queue behind what is already waiting (one queue, one order) and wake the
        writer. A client whose queue is already full is dropped now: the writer may be
        stuck on a client that stopped reading."""
        pending = client.pending
        if len(pending) >= self.queue_size:
            self._too_slow(client)
            return
        pending.append(item)
        client.idle = False
        waiter = client.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the fan-out: one call per event, for every client -------------------------

    def _on_event(self, event: Event) -> None:
        """The bus listener. An event's frame is built once. A client whose writer is
        parked and whose transport has room gets it written now if it is the first
        event of this loop iteration (no added latency), else appended to ``out``
        (a burst: ``_flush`` writes it all at the end of the iteration, before the loop
        runs anything else that was waiting). Other clients have it queued for their
        writer."""
        first = not self._in_iteration
        if first and self._targets:
            self._in_iteration = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._flush)
        frame = None
        for client in self._targets:
            if client.closing:
                continue
            if not client.everything and not client.filter.matches(event.type, event.data):
                continue
            if client.idle and client.out_size + client.transport.get_write_buffer_size() < WRITE_HIGH_WATER:
                if frame is None:
                    frame = frame_of(event)
                if not client.out:
                    if first:
                        self._write_now(client, frame)
                        client.last_seq = event.seq
                        continue
                    self._dirty.append(client)
                client.out.append(frame)
                client.out_size += len(frame)
                client.last_seq = event.seq
                continue
            self._push(client, event)
        if event.type == AUDIT:
            self._on_audit(event)

    def _flush(self) -> None:
        self._in_iteration = False
        dirty, self._dirty = self._dirty, []
        for client in dirty:
            self._flush_client(client)

    def _flush_client(self, client: _Client) -> None:
        out = client.out
        if not out:
            return
        client.out = []
        client.out_size = 0
        self._write_now(client, out[0] if len(out) == 1 else b"".join(out))

    def _write_now(self, client: _Client, data: bytes) -> None:
        transport = client.transport
        if client.closing or client.ws.closed or transport.is_closing():
            return  # it is being closed: nothing more goes out before the close frame
        try:
            transport.write(data)
        except Exception as exc:  # a broken transport: this client only
            log.debug("ws write failed peer=%s: %s", client.peer, exc)
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        """The connection is broken: stop its writer, let its reader end the handler."""
        client.closing = True
        client.idle = False
        transport = client.transport
        if transport is not None:
            transport.abort()

    # -- dropping clients ----------------------------------------------------------

    def _too_slow(self, client: _Client) -> None:
        if client.closing:
            return
        client.closing = True
        behind = len(client.pending)
        reason = f"client too slow: {behind} events behind (limit {self.queue_size})"
        self.stats["too_slow"] += 1
        log.warning("ws client dropped peer=%s: %s", client.peer, reason)
        self._spawn(self._close(client, CLOSE_TOO_SLOW, reason))

    def _on_audit(self, event: Event) -> None:
        """Streams opened with an API key end when the key is revoked."""
        if not self._clients:
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
