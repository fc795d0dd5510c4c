"""Wire models of analytics, the dashboard and cost control.

Money is a decimal string ("0.50"); durations of generations are milliseconds; running
time is seconds (and hours for people). Times are UTC ISO-8601 with ``Z``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from socialsync.common.events import COST_ACTION  # noqa: F401  (re-exported)
from socialsync.common.wire import QueryModel, WireModel

#: The event of every automatic cost action (idle stop/destroy, cap stop, refused launch).


class Bucket(StrEnum):
    HOUR = "hour"
    DAY = "day"


class AnalyticsQuery(QueryModel):
    """``GET /api/server-analytics``. The window is ``[since, until)``; by default the
    last 7 days. ``bucket`` defaults to ``hour`` for windows up to 48 h, else ``day``."""

    since: datetime | None = Field(default=None, description="start of the window (default: until − 7 days)")
    until: datetime | None = Field(default=None, description="end of the window, exclusive (default: now)")
    server_id: int | None = Field(default=None, ge=0, description="only this server")
    bucket: Bucket | None = Field(default=None, description="hour | day (time-series granularity)")


class GenerationFigures(WireModel):
    """Generations created in the window. ``successRate`` is completed ÷ (completed +
    failed) — cancelled ones are the user's choice, not failures; null with neither.
    Durations are nearest-rank percentiles of completed generations."""

    total: int = 0
    queued: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    success_rate: float | None = None
    duration_p50_ms: int | None = None
    duration_p95_ms: int | None = None
    images: int = 0


class UsageFigures(WireModel):
    """Time and money over the window. ``lifetimeSeconds`` is the time the server existed
    (created, not destroyed) inside the window; ``uptimePercent`` = running ÷ lifetime.
    ``runningCost`` is dph_total while running; ``storageCost`` the disk price while it
    existed but was not running (Vast bills storage until destroy). Attached servers cost 0."""

    running_seconds: float = 0
    running_hours: float = 0
    lifetime_seconds: float = 0
    uptime_percent: float | None = None
    cost: str = Field(default="0.00", examples=["12.3456"])
    running_cost: str = "0.00"
    storage_cost: str = "0.00"
    cost_per_generation: str | None = Field(default=None, description="cost ÷ completed generations")


class ServerFigures(UsageFigures):
    server_id: int
    name: str
    kind: str
    status: str
    price_per_hour: str | None = None
    disk_cost_per_hour: str | None = None
    generations: GenerationFigures = Field(default_factory=GenerationFigures)


class FleetFigures(UsageFigures):
    servers: int = 0
    generations: GenerationFigures = Field(default_factory=GenerationFigures)


class SeriesPoint(WireModel):
    """One bucket ``[start, start + bucket)`` clipped to the window."""

    start: datetime
    spend: str
    generations: int
    completed: int
    failed: int


class ServerAnalytics(WireModel):
    since: datetime
    until: datetime
    bucket: Bucket
    fleet: FleetFigures
    servers: list[ServerFigures]
    series: list[SeriesPoint]
    duration_sample_every: int = Field(
        default=1, description="1: the duration percentiles are exact; N: from every N-th completed generation "
                               "(windows of more than 200,000)")


class ServerCounts(WireModel):
    """Servers that are not destroyed."""

    total: int
    ready: int = Field(description="running with setupStatus ready")
    by_status: dict[str, int]
    by_setup_status: dict[str, int]


class GenerationCounts(WireModel):
    queued: int
    processing: int
    completed_today: int = Field(description="completed since 00:00 UTC")
    failed_last_hour: int


class SpendFigures(WireModel):
    """``burnRate``: $/h right now — dph_total of every running server plus the disk price
    of every stopped one. ``projectedMonth``: this month so far + burnRate × hours left."""

    today: str
    this_month: str
    burn_rate: str
    projected_month: str
    daily_cap: str | None = None
    monthly_cap: str | None = None


class DashboardStats(WireModel):
    as_of: datetime
    servers: ServerCounts
    generations: GenerationCounts
    spend: SpendFigures
    vast_credit: str | None = Field(description="credit left at Vast (cached ≤ 60 s); null without a key")


class CostActionData(WireModel):
    """The ``cost_action`` event: what the cost control did and why."""

    action: str = Field(description="stop | destroy | launch_refused | start_refused")
    rule: str = Field(description="idle | daily_cap | monthly_cap | max_price")
    reason: str
    server_id: int | None = None
    outcome: str = Field(default="success", description="success | failure (the Vast call failed)")
    error: str | None = None
