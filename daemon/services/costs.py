"""Cost control: the launch guard and the loop that stops what costs too much.

Rules (``settings.costs``; ``None`` switches a rule off):

- **max price per hour** — a launch whose offer's ``dph_total`` is above it is refused
  with ``409 BUDGET_EXCEEDED``.
- **daily / monthly caps** (UTC day and month) — a launch is refused with ``409
  BUDGET_EXCEEDED`` when the spend so far plus the fleet's burn rate *with the new
  server* over ``launch_horizon_hours`` (never past the end of the period) would be above
  the cap. The loop stops servers when the spend so far plus the running burn over the
  next check interval would cross a cap: running servers first, the most idle first,
  until the projection fits; when the cap is already spent, servers still booting are
  stopped too. Stopped servers keep their disk (Vast still bills it, a little).
- **idle** — a ``running`` + ``ready`` Vast server with no queued or processing
  generation and no activity (generation created or finished, ``last_activity_at``,
  ready, running since) for ``idle_stop_minutes`` is stopped or destroyed
  (``idle_action``). Attached servers are never touched: they cost nothing here.

Every automatic action writes an audit row (actor ``system``) and publishes a
``cost_action`` event that says what was done and why; a refused launch publishes one
too (the request's own audit row records the refusal).

The launch guard is registered at start when a max price or a cap is configured (it
makes the fleet fetch the offer before renting); the loop reads the settings on every
check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from socialsync.common.analytics import COST_ACTION, CostActionData
from socialsync.common.audit import Outcome
from socialsync.common.errors import ErrorCode
from socialsync.common.money import money, to_decimal
from socialsync.common.servers import ServerCreate, ServerStatus, ServerUpdate
from socialsync.daemon.errors import AppError, Conflict
from socialsync.daemon.events import EventBus
from socialsync.daemon.services.analytics import (
    DAY_MS,
    MS_PER_HOUR,
    AnalyticsService,
    day_start,
    next_month_start,
)
from socialsync.daemon.services.audit import AuditService
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.settings import Settings
from socialsync.daemon.store.db import Database

log = logging.getLogger(__name__)

FAILURE_BACKOFF = 60.0  # seconds before a server whose stop failed is tried again
RECENT_GENERATIONS = 16  # the newest generations of a server that tell its last activity
BOOTING = (ServerStatus.LAUNCHING, ServerStatus.LOADING)


@dataclass(frozen=True)
class CostAction:
    server_id: int | None
    action: str  # stop | destroy | launch_refused | start_refused
    rule: str  # idle | daily_cap | monthly_cap | max_price
    reason: str
    ok: bool = True
    error: str | None = None


class BudgetExceeded(Conflict):
    code = ErrorCode.BUDGET_EXCEEDED


class CostService:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        audit: AuditService,
        fleet: FleetService,
        analytics: AnalyticsService,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ):
        self.db = db
        self.bus = bus
        self.audit = audit
        self.fleet = fleet
        self.analytics = analytics
        self.settings = settings
        self.clock = clock
        self._failed_at: dict[int, float] = {}
        self.last_actions: list[CostAction] = []
        #: ``queued_work(server_ids)``: those a waiting queue item could run on (the
        #: scheduler's, set once it exists); without it any waiting item keeps every server.
        self.queued_work: Callable[[Iterable[int]], Awaitable[set[int]]] | None = None

    @property
    def guards_launches(self) -> bool:
        c = self.settings.costs
        return c.max_price_per_hour is not None or c.daily_cap is not None or c.monthly_cap is not None

    # -- the launch guard ------------------------------------------------------------
    async def launch_guard(self, offer: Any, req: ServerCreate) -> None:
        """Refuse (409 BUDGET_EXCEEDED) an offer above the max price, or a launch that
        would take the fleet over a spend cap."""
        costs = self.settings.costs
        price = self.launch_price(offer, req)
        if costs.max_price_per_hour is not None and price is not None:
            limit = to_decimal(costs.max_price_per_hour)
            if price > limit:
                self._refuse("max_price", f"offer {offer.id} costs ${money(price)}/h, above the maximum of "
                             f"${money(limit)}/h per server (costs.max_price_per_hour)", "launch_refused")
        await self._check_caps(price, "launch_refused")

    async def start_guard(self, row: Any) -> None:
        """Refuse (409 BUDGET_EXCEEDED) starting a stopped server when its price would
        take the fleet over a spend cap, as a launch would (the cap loop would only stop
        it again)."""
        price = row["price_per_hour"]
        await self._check_caps(to_decimal(price) if price is not None else None, "start_refused",
                               server_id=row["id"])

    async def _check_caps(self, price: Decimal | None, action: str, server_id: int | None = None) -> None:
        caps = self._caps()
        if not caps:
            return
        spend = await self.analytics.spend_now()
        burn = spend.burn + (price or Decimal(0))
        horizon_ms = int(self.settings.costs.launch_horizon_hours * 3_600_000)
        for rule, cap, label in caps:
            spent = spend.today if rule == "daily_cap" else spend.month
            end = day_start(spend.now_ms) + DAY_MS if rule == "daily_cap" else next_month_start(spend.now_ms)
            hours = Decimal(max(0, min(horizon_ms, end - spend.now_ms))) / MS_PER_HOUR
            projected = spent + burn * hours
            if projected > cap:
                self._refuse(rule, f"the {label} of ${money(cap)} would be exceeded: ${money(spent)} spent, "
                             f"the fleet with this server burns ${money(burn)}/h → ${money(projected)} "
                             f"within {float(hours):g} h", action, server_id)

    def launch_price(self, offer: Any, req: ServerCreate) -> Decimal | None:
        """The $/h the instance will cost: the GPU plus storage for the disk asked for
        (an offer's own ``dph_total`` prices whatever disk the search assumed)."""
        base, storage = getattr(offer, "dph_base", None), getattr(offer, "storage_cost", None)
        if base is not None and storage is not None:
            disk = to_decimal(req.disk or self.settings.vast.default_disk)
            return to_decimal(base) + to_decimal(storage) * disk / (30 * 24)
        total = getattr(offer, "dph_total", None)
        return to_decimal(total) if total is not None else None

    def _caps(self) -> list[tuple[str, Decimal, str]]:
        c = self.settings.costs
        caps = []
        if c.daily_cap is not None:
            caps.append(("daily_cap", to_decimal(c.daily_cap), "daily cap"))
        if c.monthly_cap is not None:
            caps.append(("monthly_cap", to_decimal(c.monthly_cap), "monthly cap"))
        return caps

    def _refuse(self, rule: str, reason: str, action: str, server_id: int | None = None) -> None:
        log.warning("%s rule=%s server_id=%s reason=%s", action.replace("_", " "), rule, server_id, reason)
        self.bus.publish(COST_ACTION, CostActionData(action=action, rule=rule, reason=reason, server_id=server_id))
        raise BudgetExceeded("Budget exceeded", reason)

    # -- the loop --------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("cost check failed")
            await asyncio.sleep(self.settings.costs.check_interval)

    async def check_once(self) -> list[CostAction]:
        """One pass of the rules: caps first (they stop the most), then idleness."""
        if self.fleet.vast is None:
            return []
        acted: set[int] = set()
        actions = await self._enforce_caps(acted)
        actions += await self._enforce_idle(acted)
        self.last_actions = actions
        return actions

    async def _enforce_caps(self, acted: set[int]) -> list[CostAction]:
        caps = self._caps()
        if not caps:
            return []
        actions: list[CostAction] = []
        spend = await self.analytics.spend_now()
        lookahead = to_decimal(self.settings.costs.check_interval) / 3600
        burn = spend.burn
        for rule, cap, label in caps:
            spent = spend.today if rule == "daily_cap" else spend.month
            if spent + burn * lookahead <= cap:
                continue
            for row, _ in await self._by_idleness():
                if spent + burn * lookahead <= cap:
                    break
                if row["id"] in acted:
                    continue
                if row["status"] != ServerStatus.RUNNING and spent <= cap:
                    continue  # booting servers are stopped only once the cap is spent
                reason = (f"{label} ${money(cap)}: ${money(spent)} spent, burning ${money(burn)}/h "
                          f"would cross it")
                action = await self._act(row, "stop", rule, reason)
                acted.add(row["id"])
                actions.append(action)
                if action.ok:
                    burn -= spend.running_burn.get(row["id"], Decimal(0))
        return actions

    async def _enforce_idle(self, acted: set[int]) -> list[CostAction]:
        costs = self.settings.costs
        if costs.idle_stop_minutes is None:
            return []
        if self.queued_work is None and await self.db.scalar(
                "SELECT 1 FROM generations WHERE status = 'queued' AND server_id IS NULL LIMIT 1"):
            return []  # work is waiting for a server (and nobody can say which): none is idle
        limit = costs.idle_stop_minutes * 60
        now = self.clock()
        actions: list[CostAction] = []
        rows = await self.db.fetchall(
            "SELECT * FROM servers WHERE kind = 'vast' AND status = 'running' AND setup_status = 'ready' "
            "AND vast_id IS NOT NULL ORDER BY id")
        # Waiting work this server could run keeps it; work it can never take does not.
        wanted = await self.queued_work([r["id"] for r in rows]) if self.queued_work is not None and rows else set()
        for row in rows:
            if row["id"] in acted or row["id"] in wanted:
                continue
            last = await self._last_activity(row)
            if last is None:  # busy
                continue
            idle = now - last
            if idle < limit:
                continue
            action = costs.idle_action
            reason = f"idle for {_span(idle)} (no generation; limit {_span(limit)})"
            actions.append(await self._act(row, action, "idle", reason))
            acted.add(row["id"])
        return actions

    async def _last_activity(self, row) -> float | None:
        """Epoch seconds of the server's last sign of use; None while it has work."""
        if await self.db.scalar(
                "SELECT 1 FROM generations WHERE server_id = ? AND status IN ('queued', 'processing') LIMIT 1",
                (row["id"],)):
            return None
        stamps = [row["last_activity_at"], row["ready_at"], row["running_since"], row["created_at"]]
        recent = await self.db.fetchone(
            "SELECT max(created_at) AS c, max(completed_at) AS d FROM (SELECT created_at, completed_at "
            "FROM generations WHERE server_id = ? ORDER BY id DESC LIMIT ?)", (row["id"], RECENT_GENERATIONS))
        if recent is not None:
            stamps += [recent["c"], recent["d"]]
        return max(datetime.fromisoformat(s).timestamp() for s in stamps if s)

    async def _by_idleness(self) -> list[tuple[Any, float]]:
        """Live Vast servers that bill or will: running ones, most idle first, then booting ones."""
        rows = await self.db.fetchall(
            "SELECT * FROM servers WHERE kind = 'vast' AND vast_id IS NOT NULL "
            "AND status IN ('running', 'loading', 'launching') ORDER BY id")
        ranked = []
        for row in rows:
            last = await self._last_activity(row)
            busy = last is None
            booting = row["status"] in BOOTING
            ranked.append(((booting, busy, last or 0.0), row))
        ranked.sort(key=lambda x: x[0])
        return [(row, key[2]) for key, row in ranked]

    async def _act(self, row, action: str, rule: str, reason: str) -> CostAction:
        server_id = row["id"]
        failed = self._failed_at.get(server_id)
        if failed is not None and time.monotonic() - failed < FAILURE_BACKOFF:
            return CostAction(server_id, action, rule, reason, ok=False, error="backing off after a failure")
        error = None
        try:
            if action == "destroy":
                await self.fleet.destroy(server_id, f"cost control: {reason}")
            else:
                await self.fleet.update(server_id, ServerUpdate(status=ServerStatus.STOPPED))
        except AppError as exc:
            error = f"{exc.message}: {exc.details}" if exc.details else exc.message
            self._failed_at[server_id] = time.monotonic()
        else:
            self._failed_at.pop(server_id, None)
        ok = error is None
        log.warning("cost control server_id=%d action=%s rule=%s ok=%s reason=%s", server_id, action, rule, ok, reason)
        details: dict[str, Any] = {"rule": rule, "reason": reason, "name": row["name"],
                                   "pricePerHour": row["price_per_hour"]}
        if error:
            details["error"] = error
        try:
            await self.audit.record(f"server.auto_{action}", target_type="server", target_id=server_id,
                                    outcome=Outcome.SUCCESS if ok else Outcome.FAILURE, details=details)
        except Exception:
            log.exception("audit write failed action=server.auto_%s", action)
        self.bus.publish(COST_ACTION, CostActionData(
            action=action, rule=rule, reason=reason, server_id=server_id,
            outcome="success" if ok else "failure", error=error))
        return CostAction(server_id, action, rule, reason, ok, error)


def _span(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


__all__ = ["BudgetExceeded", "CostAction", "CostService"]
