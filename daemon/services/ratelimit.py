"""Sliding-window rate limits per principal and category (seed "Rate Limiting")."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from socialsync.daemon.settings import LimitSettings


class Category(StrEnum):
    AUTH = "auth"
    SERVER_MANAGEMENT = "server_management"
    GENERATION = "generation"
    DEFAULT = "default"


MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def category_for(method: str, path: str) -> Category:
    """The seed's four categories. Server management is the calls that change servers."""
    if path.startswith("/api/auth/"):
        return Category.AUTH
    if method in MUTATING and path.startswith("/api/vast-servers"):
        return Category.SERVER_MANAGEMENT
    if method == "POST" and (path.endswith("/generate") or path == "/api/generate"):
        return Category.GENERATION
    return Category.DEFAULT


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when a slot frees up
    retry_after: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(int(self.reset_at + 0.999)),
        }


class RateLimiter:
    """Every request counts, refused ones too: a client hammering past the limit stays
    refused until it slows down, instead of getting a fresh slot each window."""

    def __init__(self, settings: LimitSettings, clock=time.time):
        self.settings = settings
        self._clock = clock
        self._windows: dict[tuple[str, Category], deque[float]] = {}
        self._last_sweep = clock()
        self.refusals: dict[Category, int] = {}  # 429s by category, for /metrics

    def limit_for(self, category: Category) -> int:
        return int(getattr(self.settings, category.value))

    def hit(self, principal: str, category: Category) -> Decision:
        now = self._clock()
        window = self.settings.window_seconds
        limit = self.limit_for(category)
        stamps = self._windows.setdefault((principal, category), deque())
        horizon = now - window
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        allowed = len(stamps) < limit
        if not allowed:
            self.refusals[category] = self.refusals.get(category, 0) + 1
        stamps.append(now)
        # Remember no more than twice the limit: enough to keep refusing a flood.
        while len(stamps) > 2 * limit + 1:
            stamps.popleft()
        in_window = min(len(stamps), limit)
        reset_at = (stamps[0] if stamps else now) + window
        if not allowed:
            # A slot frees when enough stamps leave the window to go under the limit.
            idx = len(stamps) - limit
            reset_at = stamps[idx] + window
        self._sweep(now)
        return Decision(
            allowed=allowed,
            limit=limit,
            remaining=max(0, limit - in_window),
            reset_at=reset_at,
            retry_after=max(0.0, reset_at - now) if not allowed else 0.0,
        )

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.settings.window_seconds:
            return
        self._last_sweep = now
        horizon = now - self.settings.window_seconds
        for key in [k for k, v in self._windows.items() if not v or v[-1] <= horizon]:
            del self._windows[key]
