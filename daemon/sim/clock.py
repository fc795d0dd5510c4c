"""A clock the simulators share, so tests can move time instead of sleeping.

``Clock`` is wall time. ``ManualClock`` only moves when a test calls ``advance``; its
``sleep`` returns once the clock has been advanced far enough, so simulated background
work (boots, generations) runs exactly when the test says time has passed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

__all__ = ["Clock", "ManualClock"]


class Clock:
    """Wall-clock time in epoch seconds; ``sleep`` is a real ``asyncio.sleep``."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock(Clock):
    """A clock that stands still until ``advance()`` (or ``set()``) moves it forward."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (≥ 0), wake due sleepers, return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        return self.set(self._now + seconds)

    def set(self, when: float) -> float:
        """Jump to the absolute time ``when`` (not earlier than now)."""
        if when < self._now:
            raise ValueError("a clock does not go backwards")
        self._now = float(when)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced by ``seconds`` (at once if ``seconds`` ≤ 0)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def pending_sleepers(self) -> int:
        """How many ``sleep`` calls are still waiting (handy in tests)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())
