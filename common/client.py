"""The async client of the daemon's own API, for the console, the CLI and the tests.

- ``await client.request(method, path, json=..., params=...)``: the parsed JSON, or
  ``ApiError`` (the seed's ``{error, details, code}`` with the status) when the daemon
  refuses, or ``DaemonUnavailable`` when it cannot be reached.
- ``client.events(...)``: the live stream as an async iterator of ``Hello`` (start from
  this state), ``Envelope`` (apply this event), ``Resnapshot`` (why a new ``Hello``
  follows), ``Disconnected`` and ``Reconnected``. It resumes after a dropped connection
  (``?since=<last seq>``: the daemon replays what was missed, or says to re-snapshot),
  drops duplicates, detects gaps (a ``seq`` that skips) and re-synchronises, and
  reconnects with jittered exponential backoff.

Transports are pluggable: the websocket one lives here; the ZeroMQ one lives in
``socialsync.tui.zmq_transport`` because ``common`` must not import ``zmq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from socialsync.common.errors import ApiError
from socialsync.common.events import (
    ERROR,
    HEARTBEAT,
    HELLO,
    PONG,
    RESNAPSHOT,
    SUBSCRIBED,
    Envelope,
    EventFilter,
    EventsInfo,
    Snapshot,
    SnapshotResponse,
)

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class DaemonUnavailable(Exception):
    """The daemon could not be reached: connection refused or reset, a timeout."""


# -- what the event stream yields -------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Where the stream starts. With a ``snapshot``: replace your state with it; every
    event that follows has ``seq > self.seq``. Without (``resumed``): your state is
    still good; the events you missed after ``seq`` follow."""

    seq: int
    epoch: str
    snapshot: Snapshot | None
    resumed: bool = False
    transport: str = "ws"


@dataclass(frozen=True)
class Resnapshot:
    """The missed events cannot be replayed (or a gap was seen): a ``Hello`` with a full
    snapshot follows."""

    reason: str
    since: int | None = None


@dataclass(frozen=True)
class Disconnected:
    """The connection is gone (or could not be made); the next try is in ``retry_in`` s."""

    reason: str
    code: int | None = None
    retry_in: float = 0.0
    attempt: int = 0


@dataclass(frozen=True)
class Reconnected:
    attempts: int
    downtime: float
    transport: str


StreamItem = Hello | Envelope | Resnapshot | Disconnected | Reconnected
_END = object()


# -- transports -------------------------------------------------------------------------


class TransportClosed(Exception):
    """A transport's connection ended or could not be made. ``fallback``: this transport
    cannot work here at all (``auto`` then uses the websocket)."""

    def __init__(self, reason: str, code: int | None = None, *, retry_after: float | None = None,
                 fallback: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.retry_after = retry_after
        self.fallback = fallback


class EventTransport(ABC):
    """One connection's worth of messages (dicts shaped as the envelope); the stream
    owns the state, the gap checks and the reconnection."""

    name = "?"
    #: True when the daemon applies the filter, so ``seq`` jumps between the events
    #: received are expected and only duplicates can be detected.
    server_filters = False

    @abstractmethod
    async def open(self, since: int | None, epoch: str | None) -> None:
        """Connect. The first message ``recv`` returns is a ``hello`` (or a
        ``resnapshot`` then a ``hello``). Raise ``TransportClosed`` when it cannot."""

    @abstractmethod
    async def recv(self) -> dict[str, Any]:
        """The next message; ``TransportClosed`` when the connection ends."""

    @abstractmethod
    async def resync(self, since: int, epoch: str | None) -> None:
        """After a gap: arrange for a ``hello`` (resumed, or a fresh snapshot after a
        ``resnapshot``) to come from ``recv``."""

    async def subscribe(self, flt: EventFilter) -> None:  # noqa: B027  (optional)
        """The filter changed (transports that filter locally need do nothing)."""

    @abstractmethod
    async def close(self) -> None: ...


TransportFactory = Callable[["DaemonClient", EventFilter], EventTransport]


class WebSocketTransport(EventTransport):
    name = "ws"

    def __init__(self, client: DaemonClient, flt: EventFilter, *, heartbeat: float = 20.0,
                 max_msg_size: int = 64 << 20):
        self.client = client
        self.filter = flt
        self.server_filters = not flt.everything
        self.heartbeat = heartbeat
        self.max_msg_size = max_msg_size
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def params(self, since: int | None, epoch: str | None) -> dict[str, str]:
        params = {}
        if since is not None:
            params["since"] = str(since)
            if epoch:
                params["epoch"] = epoch
        if self.filter.types is not None:
            params["types"] = ",".join(sorted(self.filter.types))
        if self.filter.server_ids is not None:
            params["serverIds"] = ",".join(str(s) for s in sorted(self.filter.server_ids))
        return params

    async def open(self, since: int | None, epoch: str | None) -> None:
        params = self.params(since, epoch)
        try:
            self._ws = await self.client.session.ws_connect(
                self.client.url("/ws"), params=params, headers=self.client.auth_headers,
                heartbeat=self.heartbeat, max_msg_size=self.max_msg_size, compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 429:
                retry = exc.headers.get("Retry-After") if exc.headers else None
                raise TransportClosed("rate limited", exc.status,
                                      retry_after=float(retry) if retry else None) from exc
            if 400 <= exc.status < 500:
                # The handshake hides the body: ask the same route over plain HTTP, which
                # answers with the daemon's own error (401, 403, 400 with its fields).
                await self.client.request("GET", "/ws", params=params)
                raise ApiError(exc.status, "HTTP_ERROR", exc.message or "websocket refused") from exc
            raise TransportClosed(f"websocket refused: {exc.status} {exc.message}", exc.status) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportClosed(f"cannot connect to {self.client.base_url}: {exc or type(exc).__name__}") from exc

    async def recv(self) -> dict[str, Any]:
        ws = self._ws
        if ws is None:
            raise TransportClosed("not connected")
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                return orjson.loads(msg.data)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                raise TransportClosed(msg.extra or "closed by the daemon", msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                raise TransportClosed("connection closed", ws.close_code)
            if msg.type is aiohttp.WSMsgType.ERROR:
                raise TransportClosed(f"connection failed: {ws.exception()}", ws.close_code)

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise TransportClosed("not connected")
        try:
            await self._ws.send_frame(orjson.dumps(message), aiohttp.WSMsgType.TEXT)
        except (ConnectionError, RuntimeError) as exc:
            raise TransportClosed(f"send failed: {exc}") from exc

    async def resync(self, since: int, epoch: str | None) -> None:
        await self._send({"type": "resume", "since": since, "epoch": epoch})

    async def subscribe(self, flt: EventFilter) -> None:
        self.filter = flt
        self.server_filters = not flt.everything
        await self._send({"type": "subscribe", **flt.as_json()})

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()


# -- the client -------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``initial * factor**attempt`` capped at
    ``maximum``, then scaled by a random factor in ``[1 - jitter, 1]``."""

    initial: float = 0.25
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 30))
        return base * (1 - self.jitter * random.random())


class DaemonClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        transports: dict[str, TransportFactory] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self.transports: dict[str, TransportFactory] = {"ws": WebSocketTransport, **(transports or {})}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=None),
                cookie_jar=aiohttp.CookieJar(unsafe=True),
            )
        return self._session

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def host(self) -> str:
        return URL(self.base_url).host or ""

    @property
    def is_local(self) -> bool:
        return self.host in LOOPBACK

    def url(self, path: str) -> str:
        return self.base_url + path

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """The parsed JSON body (None for 204). ``ApiError`` when the daemon refuses,
        ``DaemonUnavailable`` when it cannot be reached."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self.session.request(
                method, self.url(path), json=json, params=query, headers=self.auth_headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await resp.read()
                status, reason, ctype = resp.status, resp.reason or "", resp.content_type
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            why = f"no answer in {self.timeout:g} s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise DaemonUnavailable(f"{method} {self.url(path)}: {why}") from exc
        body: Any = None
        if raw:
            if ctype == "application/json":
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    body = raw.decode(errors="replace")
            else:
                body = raw.decode(errors="replace")
        if status >= 400:
            if isinstance(body, dict) and "code" in body:
                raise ApiError(status, str(body["code"]), str(body.get("error", reason)),
                               str(body.get("details", "")), body)
            raise ApiError(status, f"HTTP_{status}", reason, str(body or "")[:500])
        return body

    async def events_info(self) -> EventsInfo:
        return EventsInfo.model_validate(await self.request("GET", "/api/events/info"))

    async def snapshot(self) -> SnapshotResponse:
        """The snapshot over HTTP and the ``seq`` it is at least as new as."""
        return SnapshotResponse.model_validate(await self.request("GET", "/api/events/snapshot"))

    async def snapshot_raw(self) -> dict[str, Any]:
        return await self.request("GET", "/api/events/snapshot")

    async def missed_events(self, since: int, epoch: str | None) -> dict[str, Any] | None:
        """``{seq, epoch, events}``: the events after ``since`` from the daemon's replay
        ring; None when it cannot replay them (gone from the ring, or another epoch)."""
        try:
            return await self.request("GET", "/api/events", params={"since": since, "epoch": epoch})
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise

    def events(
        self,
        types: Iterable[str] | None = None,
        server_ids: Iterable[int] | None = None,
        transport: str = "auto",
        since: int | None = None,
        *,
        epoch: str | None = None,
        backoff: Backoff | None = None,
    ) -> EventStream:
        """The live stream. ``transport``: "ws", "zmq" (a registered transport) or "auto"
        (ZeroMQ when registered and reachable, otherwise the websocket). ``since`` (with
        the ``epoch`` it belongs to) resumes a stream from an earlier run."""
        if transport != "auto" and transport not in self.transports:
            raise ValueError(f"unknown transport {transport!r}; registered: {', '.join(self.transports)}")
        return EventStream(self, EventFilter.of(types, server_ids), transport, since, epoch, backoff or Backoff())


class EventStream:
    """Iterate it (``async for item in stream``) or use it as an async context manager
    to be sure the connection is closed. ``last_seq``/``epoch`` tell where it is.

    The connection is served by one task that fills a bounded buffer: a consumer may
    cancel a wait (``asyncio.wait_for(anext(stream), 1)``) without losing the stream, and
    a consumer that stops reading pushes back on the transport (the daemon then drops
    the websocket, or ZeroMQ drops messages) instead of growing memory; either way the
    stream recovers with a resume or a re-snapshot."""

    def __init__(self, client: DaemonClient, flt: EventFilter, transport: str, since: int | None,
                 epoch: str | None, backoff: Backoff, buffer: int = 1000):
        self.client = client
        self.filter = flt
        self.choice = transport
        self.backoff = backoff
        self.buffer = buffer
        self.last_seq: int | None = since
        self.epoch = epoch
        self.gaps = 0
        self.reconnects = 0
        self.transport: EventTransport | None = None
        self._resume = since is not None
        self._resyncing = False
        self._no_fallback_to: set[str] = set()
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._closed = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> StreamItem:
        if self._queue is None:
            if self._closed:
                raise StopAsyncIteration
            self._queue = asyncio.Queue(self.buffer)
            self._task = asyncio.create_task(self._pump(), name="event-stream")
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later call ends too
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item

    async def _pump(self) -> None:
        assert self._queue is not None
        gen = self._run()
        try:
            async for item in gen:
                await self._queue.put(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
        finally:
            await gen.aclose()
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_END)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def subscribe(self, types: Iterable[str] | None = None, server_ids: Iterable[int] | None = None) -> None:
        """Change the filter of the running stream."""
        self.filter = EventFilter.of(types, server_ids)
        if self.transport is not None:
            await self.transport.subscribe(self.filter)

    def _make_transport(self) -> EventTransport:
        name = self.choice
        if name == "auto":
            name = "zmq" if "zmq" in self.client.transports and "zmq" not in self._no_fallback_to else "ws"
        return self.client.transports[name](self.client, self.filter)

    async def _run(self) -> AsyncIterator[StreamItem]:
        attempt = 0
        down_since: float | None = None
        connected_before = False
        while True:
            transport = self._make_transport()
            self.transport = transport
            try:
                since = self.last_seq if self._resume else None
                try:
                    await transport.open(since, self.epoch)
                except TransportClosed as exc:
                    if exc.fallback and self.choice == "auto" and transport.name != "ws":
                        log.info("event transport %s unusable (%s); using the websocket", transport.name, exc.reason)
                        self._no_fallback_to.add(transport.name)
                        continue
                    raise
                if connected_before:
                    self.reconnects += 1
                    downtime = time.monotonic() - down_since if down_since is not None else 0.0
                    yield Reconnected(attempt, downtime, transport.name)
                connected_before = True
                self._resyncing = False
                while True:
                    msg = await transport.recv()
                    item = await self._handle(transport, msg)
                    if item is not None:
                        if isinstance(item, Hello):
                            attempt = 0
                            down_since = None
                        yield item
            except (TransportClosed, DaemonUnavailable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 429:
                    raise  # refused (credentials, role, parameters): retrying will not help
                if down_since is None:
                    down_since = time.monotonic()
                closed = exc if isinstance(exc, TransportClosed) else TransportClosed(
                    str(exc), getattr(exc, "status", None))
                delay = closed.retry_after if closed.retry_after is not None else self.backoff.delay(attempt)
                attempt += 1
                yield Disconnected(closed.reason, closed.code, delay, attempt)
                await asyncio.sleep(delay)
            finally:
                await transport.close()
                self.transport = None

    async def _handle(self, transport: EventTransport, msg: dict[str, Any]) -> StreamItem | None:
        kind = msg.get("type")
        data = msg.get("data") or {}
        if kind == HELLO:
            self._resyncing = False
            self.epoch = data.get("epoch") or self.epoch
            seq = int(data.get("seq", msg.get("seq", 0)))
            snapshot = data.get("snapshot")
            if snapshot is None:
                self.last_seq = seq
                self._resume = True
                return Hello(seq, self.epoch or "", None, True, transport.name)
            self.last_seq = seq
            self._resume = True
            snap = Snapshot.model_validate(self.filter.snapshot(snapshot))
            return Hello(seq, self.epoch or "", snap, False, transport.name)
        if kind == RESNAPSHOT:
            return Resnapshot(str(data.get("reason", "")), data.get("since"))
        if kind in (PONG, SUBSCRIBED):
            return None
        if kind == ERROR:
            log.warning("daemon refused a stream message: %s (%s)", data.get("error"), data.get("details"))
            return None
        if kind == HEARTBEAT:
            await self._check_heartbeat(transport, msg)
            return None
        seq = msg.get("seq")
        if not isinstance(seq, int) or self._resyncing:
            return None
        last = self.last_seq
        if last is not None:
            if seq <= last:
                return None  # a duplicate (replay overlap)
            if seq != last + 1 and not transport.server_filters:
                await self._gap(transport, f"gap: expected seq {last + 1}, got {seq}")
                return None
        self.last_seq = seq
        if not self.filter.matches(kind or "", data):
            return None
        return Envelope.model_validate(msg)

    async def _check_heartbeat(self, transport: EventTransport, msg: dict[str, Any]) -> None:
        if self._resyncing or self.last_seq is None:
            return
        epoch = (msg.get("data") or {}).get("epoch")
        if epoch and self.epoch and epoch != self.epoch:
            await self._gap(transport, f"the daemon restarted (epoch {self.epoch} → {epoch})")
        elif isinstance(msg.get("seq"), int) and msg["seq"] > self.last_seq and not transport.server_filters:
            await self._gap(transport, f"gap: the daemon is at seq {msg['seq']}, the last received is {self.last_seq}")

    async def _gap(self, transport: EventTransport, reason: str) -> None:
        self.gaps += 1
        self._resyncing = True
        log.info("event stream resync: %s", reason)
        assert self.last_seq is not None
        await transport.resync(self.last_seq, self.epoch)
