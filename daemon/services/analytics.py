"""Analytics: usage, cost and generation figures computed from the database.

Cost model (design.md flow 7; Vast reference §5):

- ``price_per_hour`` is Vast's ``dph_total`` (GPU + storage). A server accrues it for
  every millisecond its status history says ``running`` — Vast bills the GPU from
  ``running`` on, so ``launching``/``loading`` are not GPU time.
- Storage is billed from creation until destroy, so every other non-destroyed interval
  (launching, loading, stopped, error, offline) accrues ``disk_cost_per_hour``.
- Attached (self-hosted) servers cost nothing.
- A server's current prices apply to its whole life (the row keeps one price).
- Every interval is clipped to the window ``[since, until)``, and ``until`` never
  passes "now": nothing is charged for the future.

Times are whole epoch milliseconds everywhere (the store keeps millisecond ISO text),
money is ``Decimal`` until it is written out as a string, so each figure is exact.

Queries stay cheap with millions of generations (migration 005):

- the dashboard counts queued/processing and finished-since ranges on indexes
  (``generations(status, id)``, ``generations(status, completed_at)``), with the
  ``servers`` change counter (migration 008), in one statement; spend is one pass over
  ``server_status_history(server_id, at)`` for today and the month, kept with the burn
  rate and the server counts (``ServerSnapshot``) until that counter moves, the UTC day
  ends or a row dated later comes into the window: in between, only the open spans
  grow, so the spend at a later instant is exact arithmetic on the kept sums;
- analytics windows take whole days from ``generation_daily`` and whole hours from
  ``generation_hourly`` (counters kept exact by triggers), only the partial days/hours
  at the edges from the generations' covering index, and the duration percentiles from
  one index seek per server (a 1-in-N sample past ``PERCENTILE_EXACT_LIMIT``);
- the analytics windows read on their own connection (``heavy``), so a month of a big
  fleet never holds up the rest of the API.

Times in the store are millisecond ISO text with ``Z`` (``common.wire.iso``); the
window filters compare that text, so rows written in another format are misplaced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import aiosqlite

from socialsync.common.analytics import (
    AnalyticsQuery,
    Bucket,
    DashboardStats,
    FleetFigures,
    GenerationCounts,
    GenerationFigures,
    SeriesPoint,
    ServerAnalytics,
    ServerCounts,
    ServerFigures,
    SpendFigures,
    UsageFigures,
)
from socialsync.common.money import money, to_decimal
from socialsync.common.servers import ServerStatus, SetupStatus
from socialsync.common.wire import iso
from socialsync.daemon.errors import BadRequest, ServerNotFound
from socialsync.daemon.settings import Settings
from socialsync.daemon.store.db import Database
from socialsync.daemon.vast import VastClient, VastError

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MS_PER_HOUR = Decimal(HOUR_MS)
DEFAULT_WINDOW = timedelta(days=7)
HOURLY_UP_TO_MS = 48 * HOUR_MS  # windows up to 48 h get hourly buckets by default
MAX_BUCKETS = 5000
CREDIT_TTL = 60.0  # seconds a Vast credit figure is served from cache
CREDIT_RETRY = 10.0  # seconds before a failed credit fetch is tried again
CREDIT_WAIT = 2.0  # the first request waits this long for the very first figure
LIVE_STATUSES = [s.value for s in ServerStatus if s != ServerStatus.DESTROYED]
GEN_STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
EXACT_DIGITS = 60  # the spend sums (prices × ms) are exact well within this many digits


def _ms_sql(expr: str) -> str:
    """An ISO-8601 text column as whole epoch milliseconds, in SQL."""
    return f"CAST(ROUND((julianday({expr}) - 2440587.5) * 86400000.0) AS INTEGER)"


# The status history of the servers that existed in the window, as spans
# ``(server_id, status, s, e, open)`` in epoch ms, clipped to [since, until). For each
# server the last row before the window is taken too (it says what the server was at
# ``since``). ``open``: the server's last span, the one that runs on to ``until``.
_SPANS = f"""
WITH rel AS (
    SELECT id FROM servers
    WHERE created_at < :until AND (destroyed_at IS NULL OR destroyed_at >= :since) {{server_filter}}
),
rows AS (
    SELECT h.id, h.server_id, h.at, h.status FROM server_status_history h
    WHERE h.server_id IN (SELECT id FROM rel) AND h.at >= :since AND h.at < :until
    UNION ALL
    SELECT h.id, h.server_id, h.at, h.status FROM server_status_history h
    WHERE h.id IN (
        SELECT (SELECT p.id FROM server_status_history p
                WHERE p.server_id = rel.id AND p.at < :since
                ORDER BY p.at DESC, p.id DESC LIMIT 1)
        FROM rel)
),
spans AS (
    SELECT server_id, status,
           MAX({_ms_sql("at")}, :since_ms) AS s,
           MIN(COALESCE({_ms_sql("LEAD(at) OVER w")}, :until_ms), :until_ms) AS e,
           LEAD(at) OVER w IS NULL AS open
    FROM rows
    WINDOW w AS (PARTITION BY server_id ORDER BY at, id)
)
"""

# Per server: running and other (storage-billed) ms over the window.
_USAGE = _SPANS + """
SELECT sp.server_id AS server_id, sv.kind AS kind, sv.price_per_hour AS price, sv.disk_cost_per_hour AS disk,
       SUM(CASE WHEN sp.status = 'running' THEN sp.e - sp.s ELSE 0 END) AS running_ms,
       SUM(CASE WHEN sp.status NOT IN ('running', 'destroyed') THEN sp.e - sp.s ELSE 0 END) AS other_ms
FROM spans sp JOIN servers sv ON sv.id = sp.server_id
WHERE sp.e > sp.s GROUP BY sp.server_id
"""

# The dashboard's money: Vast servers only, summed per price pair (exact: ms are integers).
# ``*_open``: how many of those spans are still open at ``until``; each of them adds one
# millisecond per millisecond to every figure until the next change (a zero-length open
# span too: it is the one that grows).
_SPEND = _SPANS + """
SELECT sv.price_per_hour AS price, sv.disk_cost_per_hour AS disk,
       SUM(CASE WHEN sp.status = 'running' THEN sp.e - sp.s ELSE 0 END) AS running_ms,
       SUM(CASE WHEN sp.status NOT IN ('running', 'destroyed') THEN sp.e - sp.s ELSE 0 END) AS other_ms,
       SUM(CASE WHEN sp.status = 'running' THEN MAX(0, sp.e - MAX(sp.s, :split_ms)) ELSE 0 END) AS running_tail,
       SUM(CASE WHEN sp.status NOT IN ('running', 'destroyed') THEN MAX(0, sp.e - MAX(sp.s, :split_ms)) ELSE 0 END)
           AS other_tail,
       SUM(sp.open AND sp.status = 'running') AS running_open,
       SUM(sp.open AND sp.status NOT IN ('running', 'destroyed')) AS other_open
FROM spans sp JOIN servers sv ON sv.id = sp.server_id
WHERE sp.e > sp.s OR sp.open GROUP BY 1, 2
"""

# When the status history or a server could next change the spend without a write: the
# first history row or server creation at or after ``until`` (ISO text; NULL: none).
_HORIZON = """
SELECT min(x) FROM (SELECT min(at) AS x FROM server_status_history WHERE at >= :until
                    UNION ALL SELECT min(created_at) FROM servers WHERE created_at >= :until)
"""

# Grows with every change to servers and their status history that the dashboard reads
# (migration 008's triggers): a ServerSnapshot is current while it stays the same.
_SERVERS_CHANGED = "SELECT n FROM change_counters WHERE name = 'servers'"

# The rest of the dashboard, in one statement: the counter and the index counts (the
# finished ones on ``generations(status, completed_at)``; /metrics reads only the queue).
_QUEUE = f"""
SELECT ({_SERVERS_CHANGED}) AS servers_changed,
       (SELECT count(*) FROM generations WHERE status = 'queued') AS queued,
       (SELECT count(*) FROM generations WHERE status = 'processing') AS processing
"""
_DASHBOARD = _QUEUE.rstrip() + """,
       (SELECT count(*) FROM generations WHERE status = 'completed' AND completed_at >= :day AND completed_at < :end)
           AS completed_today,
       (SELECT count(*) FROM generations WHERE status = 'failed' AND completed_at >= :hour AND completed_at < :end)
           AS failed_last_hour
"""

_SPAN_ROWS = _SPANS + """
SELECT server_id, status, s, e FROM spans
WHERE e > s AND status != 'destroyed' ORDER BY server_id, s
"""

PERCENTILE_EXACT_LIMIT = 200_000  # completed generations in a window; beyond, a 1-in-N sample by id


@functools.lru_cache(maxsize=8192)
def _dec(text: str | None) -> Decimal:
    return to_decimal(text)


class ReadConnection:
    """A read-only connection of its own for the analytics windows (WAL: it sees every
    commit and never blocks the writer or the shared reader)."""

    def __init__(self, conn: aiosqlite.Connection):
        self._conn = conn

    @classmethod
    async def open(cls, path: Path | str) -> ReadConnection:
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA query_only=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        return cls(conn)

    async def fetchall(self, sql: str, params: Any = ()) -> list[aiosqlite.Row]:
        async with self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def close(self) -> None:
        await self._conn.close()


def to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def iso_ms(ms: int) -> str:
    return iso(from_ms(ms))  # type: ignore[return-value]


def day_start(ms: int) -> int:
    return ms - ms % DAY_MS


def month_start(ms: int) -> int:
    d = from_ms(ms)
    return to_ms(datetime(d.year, d.month, 1, tzinfo=UTC))


def next_month_start(ms: int) -> int:
    d = from_ms(ms)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return to_ms(datetime(year, month, 1, tzinfo=UTC))


def percentile_rank(n: int, p: int) -> int:
    """Nearest-rank percentile: the ceil(p/100 × n)-th smallest value (1-based)."""
    return max(1, (n * p + 99) // 100)


@dataclass
class Usage:
    running_ms: int = 0
    other_ms: int = 0  # existing, not running, not destroyed: storage is billed
    running_cost: Decimal = field(default_factory=Decimal)
    storage_cost: Decimal = field(default_factory=Decimal)

    @property
    def lifetime_ms(self) -> int:
        return self.running_ms + self.other_ms

    @property
    def cost(self) -> Decimal:
        return self.running_cost + self.storage_cost

    def add(self, other: Usage) -> None:
        self.running_ms += other.running_ms
        self.other_ms += other.other_ms
        self.running_cost += other.running_cost
        self.storage_cost += other.storage_cost


@dataclass(frozen=True)
class Prices:
    kind: str
    price: Decimal  # dph_total, $/h while running
    disk: Decimal  # $/h of storage while not running

    @classmethod
    def of(cls, kind: str, price: str | None, disk: str | None) -> Prices:
        return cls(kind, _dec(price), _dec(disk))

    @property
    def billed(self) -> bool:
        return self.kind == "vast"

    def running(self, ms: int) -> Decimal:
        return self.price * ms / MS_PER_HOUR if self.billed and ms else Decimal(0)

    def storage(self, ms: int) -> Decimal:
        return self.disk * ms / MS_PER_HOUR if self.billed and ms else Decimal(0)

    def hourly(self, status: str) -> Decimal:
        """What this server costs per hour in ``status`` right now."""
        if not self.billed or status == ServerStatus.DESTROYED:
            return Decimal(0)
        return self.price if status == ServerStatus.RUNNING else self.disk


@dataclass
class SpendNow:
    """Spend so far today and this month (UTC) and the burn rate, at ``now_ms``."""

    now_ms: int
    today: Decimal
    month: Decimal
    burn: Decimal  # $/h
    running_burn: dict[int, Decimal]  # server id → $/h saved by stopping it (price − disk)

    @property
    def projected_month(self) -> Decimal:
        hours_left = Decimal(next_month_start(self.now_ms) - self.now_ms) / MS_PER_HOUR
        return self.month + self.burn * hours_left


@dataclass(frozen=True)
class ServerSnapshot:
    """What the dashboard reads from the servers and their status history, taken at
    ``at_ms`` while the ``servers`` change counter read ``counter``. Until that counter
    moves, the spend at a later ``now`` is exact arithmetic on it: within the same UTC
    day (so the same month), and before ``horizon`` (a history row or a server dated
    later than ``at_ms``, which the window would then take in), only the open spans
    grow, each by ``now - at_ms``."""

    counter: int
    at_ms: int
    horizon: str | None
    month: Decimal  # $·ms/h spent this month up to at_ms
    today: Decimal  # $·ms/h spent today up to at_ms
    rate: Decimal  # $·ms/h added per ms by the open spans
    burn: Decimal
    running_burn: dict[int, Decimal]
    counts: ServerCounts

    def current(self, counter: int, now_ms: int) -> bool:
        return (counter == self.counter and self.at_ms <= now_ms and day_start(now_ms) == day_start(self.at_ms)
                and (self.horizon is None or iso_ms(now_ms) <= self.horizon))

    def spend(self, now_ms: int) -> SpendNow:
        with localcontext() as ctx:
            ctx.prec = EXACT_DIGITS
            grown = self.rate * (now_ms - self.at_ms)
            today, month = self.today + grown, self.month + grown
        return SpendNow(now_ms=now_ms, today=today / MS_PER_HOUR, month=month / MS_PER_HOUR, burn=self.burn,
                        running_burn=dict(self.running_burn))


@dataclass
class GaugeValues:
    """What /metrics computes at scrape time."""

    servers_by_status: dict[str, int]
    servers_by_setup: dict[str, int]
    ready: int
    queued: int
    processing: int
    burn: Decimal
    today: Decimal
    month: Decimal
    vast_credit: Decimal | None


def _aligned(since: int, until: int, size: int) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """``[since, until)`` as whole ``size`` units ``[a, b)`` (None if there is none) and
    the partial edges around them."""
    a = -(-since // size) * size
    b = until // size * size
    if a >= b:
        return None, [(since, until)]
    return (a, b), [r for r in ((since, a), (b, until)) if r[0] < r[1]]


def _server_filter(column: str, sid: int | None) -> str:
    return f" AND {column} = :sid" if sid is not None else ""


class AnalyticsService:
    """``db`` is the daemon's database (dashboard, gauges, cost checks: all cheap);
    ``heavy`` (default: the same; the daemon gives it a ``ReadConnection``) serves the
    analytics windows, so a month of a big fleet never holds up the rest of the API."""

    def __init__(self, db: Database, settings: Settings, vast: VastClient | None,
                 clock: Callable[[], float] = time.time, heavy: Database | ReadConnection | None = None):
        self.db = db
        self.heavy = heavy or db
        self.settings = settings
        self.vast = vast
        self.clock = clock
        self._credit: Decimal | None = None
        self._credit_at: float | None = None  # monotonic time of the last attempt
        self._credit_ok = False
        self._credit_task: asyncio.Task | None = None
        self._snapshot: ServerSnapshot | None = None
        self._snapshot_lock = asyncio.Lock()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- status-history windows ------------------------------------------------------
    @staticmethod
    def _window_params(since_ms: int, until_ms: int, server_id: int | None) -> tuple[dict, str]:
        params: dict[str, Any] = {"since": iso_ms(since_ms), "until": iso_ms(until_ms), "since_ms": since_ms,
                                  "until_ms": until_ms}
        if server_id is not None:
            params["sid"] = server_id
        return params, _server_filter("id", server_id)

    async def usage(self, since_ms: int, until_ms: int, server_id: int | None = None) -> dict[int, Usage]:
        """Running and other (storage-billed) milliseconds and their cost, per server."""
        if until_ms <= since_ms:
            return {}
        params, server_filter = self._window_params(since_ms, until_ms, server_id)
        out: dict[int, Usage] = {}
        for r in await self.heavy.fetchall(_USAGE.format(server_filter=server_filter), params):
            pr = Prices.of(r["kind"], r["price"], r["disk"])
            running, other = r["running_ms"] or 0, r["other_ms"] or 0
            out[r["server_id"]] = Usage(running, other, pr.running(running), pr.storage(other))
        return out

    async def spans(self, since_ms: int, until_ms: int, server_id: int | None = None) -> list[Any]:
        if until_ms <= since_ms:
            return []
        params, server_filter = self._window_params(since_ms, until_ms, server_id)
        return await self.heavy.fetchall(_SPAN_ROWS.format(server_filter=server_filter), params)

    async def spend_now(self) -> SpendNow:
        """Today and this month (in one pass over the status history) and the burn rate."""
        now = self.now_ms()
        snap = await self._servers(await self.db.scalar(_SERVERS_CHANGED), now)
        return snap.spend(now)

    async def _servers(self, counter: int | None, now: int) -> ServerSnapshot:
        """The snapshot of the servers for ``now``: the kept one while it is current,
        else a new one (one at a time; ``counter`` was read before it, so a change that
        lands meanwhile only makes the next read take another)."""
        if counter is None:  # no counter row: nothing can be kept
            return await self._read_servers(-1, now)
        snap = self._snapshot
        if snap is not None and snap.current(counter, now):
            return snap
        async with self._snapshot_lock:
            snap = self._snapshot
            if snap is None or not snap.current(counter, now):
                snap = self._snapshot = await self._read_servers(counter, now)
            return snap

    async def _read_servers(self, counter: int, now: int) -> ServerSnapshot:
        since = month_start(now)
        params = {"since": iso_ms(since), "until": iso_ms(now), "since_ms": since, "until_ms": now,
                  "split_ms": day_start(now)}
        month = today = rate = Decimal(0)  # $·ms/h, divided once at the end
        with localcontext() as ctx:
            ctx.prec = EXACT_DIGITS
            for price, disk, running, other, running_tail, other_tail, running_open, other_open in (
                    await self.db.fetchall(_SPEND.format(server_filter="AND kind = 'vast'"), params)):
                p, d = _dec(price), _dec(disk)
                month += p * running + d * other
                today += p * running_tail + d * other_tail
                rate += p * running_open + d * other_open
        horizon = await self.db.scalar(_HORIZON, {"until": params["until"]})
        burn = Decimal(0)
        saving: dict[int, Decimal] = {}
        for server_id, status, price, disk in await self.db.fetchall(
                "SELECT id, status, price_per_hour, disk_cost_per_hour FROM servers "
                "WHERE kind = 'vast' AND status != 'destroyed'"):
            if status == ServerStatus.RUNNING:
                burn += _dec(price)
                saving[server_id] = _dec(price) - _dec(disk)
            else:
                burn += _dec(disk)
        return ServerSnapshot(counter=counter, at_ms=now, horizon=horizon, month=month, today=today, rate=rate,
                              burn=burn, running_burn=saving, counts=await self._server_counts())

    # -- GET /api/server-analytics ---------------------------------------------------
    def _window(self, q: AnalyticsQuery) -> tuple[int, int, Bucket]:
        now = self.now_ms()
        until = min(to_ms(q.until), now) if q.until is not None else now
        since = to_ms(q.since) if q.since is not None else until - DEFAULT_WINDOW // timedelta(milliseconds=1)
        if q.since is not None and q.until is not None and to_ms(q.until) <= since:
            raise BadRequest("Invalid window", "until must be after since")
        if since >= until:
            raise BadRequest("Invalid window", "since must be in the past and before until")
        bucket = q.bucket or (Bucket.HOUR if until - since <= HOURLY_UP_TO_MS else Bucket.DAY)
        size = HOUR_MS if bucket == Bucket.HOUR else DAY_MS
        buckets = (until - 1) // size - since // size + 1
        if buckets > MAX_BUCKETS:
            raise BadRequest("Window too long", f"{buckets} {bucket} buckets; at most {MAX_BUCKETS} "
                             f"(use bucket=day or a shorter window)")
        return since, until, bucket

    async def server_analytics(self, q: AnalyticsQuery) -> ServerAnalytics:
        since, until, bucket = self._window(q)
        sid = q.server_id
        if sid is not None and await self.db.scalar("SELECT 1 FROM servers WHERE id = ?", (sid,)) is None:
            raise ServerNotFound(sid)
        usage = await self.usage(since, until, sid)
        gens, sample = await self._generation_figures(since, until, sid)
        ids = {sid} if sid is not None else set(usage) | {k for k in gens if isinstance(k, int) and k > 0}
        servers: dict[int, Any] = {}
        if ids:
            marks = ",".join("?" * len(ids))
            for r in await self.heavy.fetchall(
                    "SELECT id, name, kind, status, price_per_hour, disk_cost_per_hour FROM servers "
                    f"WHERE id IN ({marks})", sorted(ids)):
                servers[r["id"]] = r

        fleet_usage = Usage()
        out: list[ServerFigures] = []
        for server_id in sorted(servers):
            row = servers[server_id]
            u = usage.get(server_id, Usage())
            g = gens.get(server_id, GenerationFigures())
            fleet_usage.add(u)
            out.append(ServerFigures(
                server_id=server_id, name=row["name"], kind=row["kind"], status=row["status"],
                price_per_hour=row["price_per_hour"], disk_cost_per_hour=row["disk_cost_per_hour"],
                generations=g, **_usage_fields(u, g.completed),
            ))
        fleet_gens = gens.get("fleet", GenerationFigures())
        fleet = FleetFigures(servers=len(out), generations=fleet_gens, **_usage_fields(fleet_usage, fleet_gens.completed))
        series = await self._series(since, until, bucket, sid)
        return ServerAnalytics(since=from_ms(since), until=from_ms(until), bucket=bucket, fleet=fleet,
                               servers=out, series=series, duration_sample_every=sample)

    async def _generation_figures(self, since: int, until: int, sid: int | None
                                  ) -> tuple[dict[Any, GenerationFigures], int]:
        """Per server id, and under ``"fleet"`` for the whole window (unassigned ones
        included). Whole days come from the ``generation_daily`` counters, the partial
        days at the edges from the generations themselves."""
        figures: dict[Any, GenerationFigures] = defaultdict(GenerationFigures)
        fleet = figures["fleet"]

        def add(server_id: int | None, status: str, n: int, images: int) -> None:
            targets = (fleet,) if not server_id else (figures[server_id], fleet)
            for f in targets:
                f.total += n
                f.images += images
                if status in GEN_STATUSES:
                    setattr(f, status, getattr(f, status) + n)

        days, edges = _aligned(since, until, DAY_MS)
        sid_params = {"sid": sid} if sid is not None else {}
        if days is not None:
            for r in await self.heavy.fetchall(
                    "SELECT server_id, status, sum(n) AS n, sum(images) AS images FROM generation_daily "
                    f"WHERE day >= :a AND day < :b{_server_filter('server_id', sid)} GROUP BY server_id, status",
                    {"a": iso_ms(days[0])[:10], "b": iso_ms(days[1])[:10], **sid_params}):
                add(r["server_id"], r["status"], r["n"], r["images"])
        for a, b in edges:
            params = {"a": iso_ms(a), "b": iso_ms(b), **sid_params}
            for r in await self.heavy.fetchall(
                    "SELECT server_id, status, count(*) AS n FROM generations "
                    f"WHERE created_at >= :a AND created_at < :b{_server_filter('server_id', sid)} "
                    "GROUP BY server_id, status", params):
                add(r["server_id"], r["status"], r["n"], 0)
            for r in await self.heavy.fetchall(
                    "SELECT g.server_id, count(*) AS n FROM generations g "
                    "JOIN generation_images i ON i.generation_id = g.id "
                    f"WHERE g.created_at >= :a AND g.created_at < :b{_server_filter('g.server_id', sid)} "
                    "GROUP BY g.server_id", params):
                add(r["server_id"], "", 0, r["n"])

        # Durations: every completed generation of each server in the window, one index
        # seek per server; a 1-in-N sample by id past PERCENTILE_EXACT_LIMIT.
        every = max(1, math.ceil(fleet.completed / PERCENTILE_EXACT_LIMIT))
        params = {"since": iso_ms(since), "until": iso_ms(until), "every": every, **sid_params}
        rows = await self.heavy.fetchall(
            "SELECT server_id, group_concat(duration_ms) AS d "
            "FROM generations INDEXED BY generations_server_done "
            f"WHERE server_id IN (SELECT id FROM servers WHERE 1{_server_filter('id', sid)}) "
            "AND status = 'completed' AND created_at >= :since AND created_at < :until "
            "AND duration_ms IS NOT NULL AND id % :every = 0 GROUP BY server_id", params)
        # Parsing and sorting up to PERCENTILE_EXACT_LIMIT numbers: off the event loop.
        per_server, whole = await asyncio.to_thread(_percentiles_of, [(r[0], r[1]) for r in rows if r[1]])
        for server_id, (p50, p95) in per_server.items():
            figures[server_id].duration_p50_ms, figures[server_id].duration_p95_ms = p50, p95
        fleet.duration_p50_ms, fleet.duration_p95_ms = whole
        for f in figures.values():
            decided = f.completed + f.failed
            f.success_rate = round(f.completed / decided, 4) if decided else None
        return figures, every

    async def _series(self, since: int, until: int, bucket: Bucket, sid: int | None) -> list[SeriesPoint]:
        size = HOUR_MS if bucket == Bucket.HOUR else DAY_MS
        first = since - since % size
        count = (until - 1) // size - since // size + 1
        prices: dict[int, Prices] = {}
        spans = await self.spans(since, until, sid)
        if spans:
            ids = sorted({r["server_id"] for r in spans})
            marks = ",".join("?" * len(ids))
            for r in await self.heavy.fetchall(
                    f"SELECT id, kind, price_per_hour, disk_cost_per_hour FROM servers WHERE id IN ({marks})", ids):
                prices[r["id"]] = Prices.of(r["kind"], r["price_per_hour"], r["disk_cost_per_hour"])
        spend = await asyncio.to_thread(_spread, [(r[0], r[1], r[2], r[3]) for r in spans], prices, first, size, count)

        # Generations by hour of creation: the fleet's whole hours from the counters,
        # partial hours (and one server's, always) from the generations themselves.
        by_hour: list[tuple[str, str, int]] = []
        hours, edges = _aligned(since, until, HOUR_MS)
        if sid is not None:
            hours, edges = None, [(since, until)]
        if hours is not None:
            by_hour += [(r["hour"], r["status"], r["n"]) for r in await self.heavy.fetchall(
                "SELECT hour, status, n FROM generation_hourly WHERE hour >= ? AND hour < ? AND n != 0",
                (iso_ms(hours[0])[:13], iso_ms(hours[1])[:13]))]
        for a, b in edges:
            by_hour += [(r["hour"], r["status"], r["n"]) for r in await self.heavy.fetchall(
                "SELECT substr(created_at, 1, 13) AS hour, status, count(*) AS n FROM generations "
                f"WHERE created_at >= :a AND created_at < :b{_server_filter('server_id', sid)} GROUP BY 1, 2",
                {"a": iso_ms(a), "b": iso_ms(b), **({"sid": sid} if sid is not None else {})})]
        gens = [[0, 0, 0] for _ in range(count)]
        for hour, status, n in by_hour:
            i = (to_ms(datetime.fromisoformat(hour + ":00:00").replace(tzinfo=UTC)) - first) // size
            if 0 <= i < count:
                gens[i][0] += n
                if status == "completed":
                    gens[i][1] += n
                elif status == "failed":
                    gens[i][2] += n
        return [
            SeriesPoint(start=from_ms(first + i * size), spend=money(spend[i]), generations=gens[i][0],
                        completed=gens[i][1], failed=gens[i][2])
            for i in range(count)
        ]

    # -- GET /api/stats --------------------------------------------------------------
    # The servers' part is kept (ServerSnapshot) until a server or its history changes;
    # the generation counts are read each time, with the change counter, in one statement.
    async def server_counts(self) -> ServerCounts:
        snap = await self._servers(await self.db.scalar(_SERVERS_CHANGED), self.now_ms())
        return snap.counts.model_copy(deep=True)

    async def _server_counts(self) -> ServerCounts:
        by_status = dict.fromkeys(LIVE_STATUSES, 0)
        by_setup = {s.value: 0 for s in SetupStatus}
        ready = 0
        for r in await self.db.fetchall(
                "SELECT status, setup_status, count(*) AS n FROM servers WHERE status != 'destroyed' "
                "GROUP BY status, setup_status"):
            by_status[r["status"]] = by_status.get(r["status"], 0) + r["n"]
            by_setup[r["setup_status"]] = by_setup.get(r["setup_status"], 0) + r["n"]
            if r["status"] == ServerStatus.RUNNING and r["setup_status"] == SetupStatus.READY:
                ready += r["n"]
        return ServerCounts(total=sum(by_status.values()), ready=ready, by_status=by_status,
                            by_setup_status=by_setup)

    async def queue_depth(self) -> dict[str, int]:
        depth = {"queued": 0, "processing": 0}
        for r in await self.db.fetchall(
                "SELECT status, count(*) AS n FROM generations WHERE status IN ('queued', 'processing') "
                "GROUP BY status"):
            depth[r["status"]] = r["n"]
        return depth

    async def _dashboard(self, now: int, finished: bool = True) -> tuple[ServerSnapshot, Any]:
        if finished:
            row = await self.db.fetchone(_DASHBOARD, {"day": iso_ms(day_start(now)), "hour": iso_ms(now - HOUR_MS),
                                                      "end": iso_ms(now + 1)})
        else:
            row = await self.db.fetchone(_QUEUE)
        assert row is not None
        return await self._servers(row["servers_changed"], now), row

    async def stats(self) -> DashboardStats:
        now = self.now_ms()
        snap, row = await self._dashboard(now)
        spend = snap.spend(now)
        credit = await self.vast_credit()
        costs = self.settings.costs
        return DashboardStats(
            as_of=from_ms(now),
            servers=snap.counts.model_copy(deep=True),
            generations=GenerationCounts(queued=row["queued"], processing=row["processing"],
                                         completed_today=row["completed_today"],
                                         failed_last_hour=row["failed_last_hour"]),
            spend=SpendFigures(
                today=money(spend.today), this_month=money(spend.month), burn_rate=money(spend.burn),
                projected_month=money(spend.projected_month),
                daily_cap=money(costs.daily_cap) if costs.daily_cap is not None else None,
                monthly_cap=money(costs.monthly_cap) if costs.monthly_cap is not None else None,
            ),
            vast_credit=money(credit) if credit is not None else None,
        )

    async def gauges(self) -> GaugeValues:
        now = self.now_ms()
        snap, row = await self._dashboard(now, finished=False)
        spend = snap.spend(now)
        counts = snap.counts
        return GaugeValues(dict(counts.by_status), dict(counts.by_setup_status), counts.ready, row["queued"],
                           row["processing"], spend.burn, spend.today, spend.month, self.cached_credit())

    # -- Vast credit -------------------------------------------------------------------
    def cached_credit(self) -> Decimal | None:
        return self._credit if self._credit_ok else None

    async def vast_credit(self) -> Decimal | None:
        """Vast's ``credit`` (cached ``CREDIT_TTL`` s). A stale figure is served while a
        fresh one is fetched in the background; only the very first request waits (a
        little) for it. None without a Vast key or before any fetch succeeded."""
        if self.vast is None:
            return None
        now = time.monotonic()
        ttl = CREDIT_TTL if self._credit_ok else CREDIT_RETRY
        if self._credit_at is None or now - self._credit_at >= ttl:
            self.refresh_credit()
        if self._credit_at is not None and not self._credit_ok and self._credit_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._credit_task), CREDIT_WAIT)
            except (TimeoutError, asyncio.CancelledError):
                pass
        return self.cached_credit()

    def refresh_credit(self) -> asyncio.Task | None:
        if self.vast is None:
            return None
        if self._credit_task is None or self._credit_task.done():
            self._credit_at = time.monotonic()
            self._credit_task = asyncio.create_task(self._fetch_credit(), name="vast-credit")
        return self._credit_task

    async def _fetch_credit(self) -> None:
        assert self.vast is not None
        try:
            user = await self.vast.current_user()
        except VastError as exc:
            log.warning("vast credit fetch failed error=%s", exc)
            return
        except Exception:
            log.exception("vast credit fetch failed")
            return
        if user.credit is not None:
            self._credit = to_decimal(user.credit)
            self._credit_ok = True
        self._credit_at = time.monotonic()

    async def close(self) -> None:
        task = self._credit_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _spread(spans: list[tuple[int, str, int, int]], prices: dict[int, Prices], first: int, size: int,
            count: int) -> list[Decimal]:
    """Each span's cost, cut at the bucket boundaries ``first + k × size``."""
    spend = [Decimal(0)] * count
    for server_id, status, s, e in spans:
        pr = prices.get(server_id)
        if pr is None or not pr.billed:
            continue
        rate = pr.price if status == ServerStatus.RUNNING else pr.disk
        if not rate:
            continue
        i = (s - first) // size
        while s < e:
            end = min(e, first + (i + 1) * size)
            spend[i] += rate * (end - s)
            s, i = end, i + 1
    return [x / MS_PER_HOUR for x in spend]


Pair = tuple[int | None, int | None]


def _p50_p95(ordered: list[int]) -> Pair:
    if not ordered:
        return None, None
    return ordered[percentile_rank(len(ordered), 50) - 1], ordered[percentile_rank(len(ordered), 95) - 1]


def _percentiles_of(rows: list[tuple[int, str]]) -> tuple[dict[int, Pair], Pair]:
    """``(server id, "d1,d2,…")`` rows → p50/p95 per server and over all of them."""
    per_server: dict[int, Pair] = {}
    everything: list[int] = []
    for server_id, text in rows:
        values = sorted(map(int, text.split(",")))
        per_server[server_id] = _p50_p95(values)
        everything.extend(values)
    everything.sort()
    return per_server, _p50_p95(everything)


def _usage_fields(u: Usage, completed: int) -> dict[str, Any]:
    fields = UsageFigures(
        running_seconds=u.running_ms / 1000,
        running_hours=round(u.running_ms / HOUR_MS, 4),
        lifetime_seconds=u.lifetime_ms / 1000,
        uptime_percent=round(100 * u.running_ms / u.lifetime_ms, 2) if u.lifetime_ms else None,
        cost=money(u.cost),
        running_cost=money(u.running_cost),
        storage_cost=money(u.storage_cost),
        cost_per_generation=money(u.cost / completed) if completed else None,
    )
    return dict(fields)
