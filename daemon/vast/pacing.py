"""Client-side pacing: a minimum interval between two calls to the same Vast endpoint.

Vast enforces its rate limits as a minimum interval per endpoint and identity (reference §2).
Spacing our own calls the same way means we rarely earn a 429 at all. Waiting is an
``asyncio.sleep`` on a reserved slot, so the loop keeps running while a call waits its turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["DEFAULT_PACING", "Pacer"]

#: Seconds between two calls per endpoint key. Vast's thresholds (§2), rounded up a little
#: where the unit is uncertain; bundles search is "10 per minute per IP".
DEFAULT_PACING: Mapping[str, float] = {
    "bundles": 6.0,
    "create": 4.5,
    "list": 1.0,
    "show": 2.0,
    "manage": 1.0,
    "reboot": 1.0,
    "destroy": 3.0,
    "request_logs": 1.0,
    "ssh": 1.0,
    "user": 1.0,
}


class Pacer:
    """Hands out call slots per key, at least ``interval[key]`` seconds apart.

    A slot is reserved synchronously (no await between reading and writing the next free
    time), so concurrent callers queue in order without a lock. Keys missing from the
    table, or with an interval of 0, are never delayed.
    """

    def __init__(
        self,
        intervals: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.intervals: dict[str, float] = dict(DEFAULT_PACING if intervals is None else intervals)
        self._clock = clock
        self._sleep = sleep
        self._next_free: dict[str, float] = {}

    def reserve(self, key: str) -> float:
        """Reserve the next slot for ``key``; return how many seconds to wait for it."""
        interval = max(0.0, float(self.intervals.get(key, 0.0)))
        if interval == 0.0:
            return 0.0
        now = self._clock()
        slot = max(now, self._next_free.get(key, now))
        self._next_free[key] = slot + interval
        return slot - now

    async def wait(self, key: str) -> float:
        """Wait for ``key``'s next slot; return the seconds waited."""
        delay = self.reserve(key)
        if delay > 0:
            await self._sleep(delay)
        return delay

    def push_back(self, key: str, seconds: float) -> None:
        """Keep ``key`` quiet for ``seconds`` from now (after the server said we were too fast)."""
        if seconds <= 0:
            return
        until = self._clock() + seconds
        self._next_free[key] = max(self._next_free.get(key, until), until)
