"""The in-process event bus: every state change becomes one envelope
``{"type", "data", "seq", "ts"}`` handed to every transport without blocking the
publisher. The JSON is encoded once per event, however many clients receive it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import orjson
from pydantic import BaseModel

from socialsync.common.wire import iso

log = logging.getLogger(__name__)


class Event:
    """One envelope. ``json`` is encoded on first use and shared by every transport;
    ``frame`` is where the /ws hub keeps the websocket frame around it, built once."""

    __slots__ = ("_json", "data", "frame", "seq", "ts", "type")

    def __init__(self, type: str, data: dict[str, Any], seq: int, ts: str):
        self.type = type
        self.data = data
        self.seq = seq
        self.ts = ts
        self._json: bytes | None = None
        self.frame: bytes | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data, "seq": self.seq, "ts": self.ts}

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = orjson.dumps(self.as_dict())
        return self._json

    def __repr__(self) -> str:
        return f"Event({self.type!r}, seq={self.seq})"


_OVERFLOW: Any = object()  # queued in place of events once a subscription overflows


class Subscription:
    """A bounded queue of events for one consumer. When the consumer falls behind the
    queue is not allowed to grow: it is marked ``overflowed`` and stops receiving, and
    the consumer decides what that means (a /ws client is disconnected with a reason)."""

    def __init__(self, bus: EventBus, maxsize: int, accept: Callable[[Event], bool] | None):
        self._bus = bus
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.accept = accept
        self.overflowed = False

    def deliver(self, event: Event) -> None:
        if self.overflowed or (self.accept is not None and not self.accept(event)):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            # Wake a consumer blocked in get() so it learns of the overflow at once.
            self.queue.get_nowait()
            self.queue.put_nowait(_OVERFLOW)

    async def get(self) -> Event | None:
        """The next event, or None once this subscription has overflowed."""
        if self.overflowed:
            return None
        event = await self.queue.get()
        return None if event is _OVERFLOW else event

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, ring_size: int = 10_000):
        self._seq = 0
        # The ring keeps plain ``(type, data, seq, ts)`` tuples, not the Events: the
        # collector stops tracking a tuple of strings, ints and plain JSON dicts, so a
        # full ring costs the garbage collector nothing (10,000 live Event objects made
        # every collection walk them, and each one survived into the oldest generation).
        self._ring: deque[tuple[str, dict[str, Any], int, str]] = deque(maxlen=ring_size)
        self._subscriptions: list[Subscription] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._ts_ms = -1
        self._ts = ""

    @property
    def seq(self) -> int:
        """The seq of the last event published (0 before the first)."""
        return self._seq

    def publish(self, type: str, data: dict[str, Any] | BaseModel) -> Event:
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json", by_alias=True)
        self._seq += 1
        ts = self._now()
        event = Event(type, data, self._seq, ts)
        self._ring.append((type, data, self._seq, ts))
        for sub in self._subscriptions:
            sub.deliver(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed type=%s", type)
        return event

    def _now(self) -> str:
        """``now_iso()``, formatted once per millisecond: the events of a burst share
        the string instead of formatting a datetime each (a quarter of a publish)."""
        ms = time.time_ns() // 1_000_000
        if ms != self._ts_ms:
            self._ts_ms = ms
            second, milli = divmod(ms, 1000)
            self._ts = iso(datetime.fromtimestamp(second, UTC).replace(microsecond=milli * 1000))  # type: ignore[assignment]
        return self._ts

    def subscribe(self, maxsize: int = 1000, accept: Callable[[Event], bool] | None = None) -> Subscription:
        sub = Subscription(self, maxsize, accept)
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def add_listener(self, listener: Callable[[Event], None], *, first: bool = False) -> None:
        """A synchronous, non-blocking callback for every event (e.g. the ZeroMQ PUB).
        ``first``: called before the listeners already added (the transports, so an
        event leaves the process before the bookkeeping listeners run)."""
        if first:
            self._listeners.insert(0, listener)
        else:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def since(self, seq: int) -> list[Event] | None:
        """Events after ``seq``, or None when some of them have left the ring."""
        if seq >= self._seq:
            return []
        ring = self._ring
        if not ring or ring[0][2] > seq + 1:
            return None
        return [Event(*item) for item in islice(ring, seq + 1 - ring[0][2], None)]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)
