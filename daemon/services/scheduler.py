"""The fleet-wide queue of ``POST /api/generate``: durable, fair, model-aware.

The queue is the generations table itself: a scheduled row waits with status
``queued`` and no server. One dispatcher task, woken by events (a new item, a
generation finished, a server changed, a model download ended) and never polling
busily, fills free slots:

    principals with waiting work, deficit round robin (quantum 1 per turn, a turn
    costs 1: equal shares of dispatches, a flood from one client never starves
    another) → that principal's highest-priority oldest item that fits somewhere →
    the best server: ready, fewer than ``per_server_concurrency`` prompts active,
    has the checkpoint and required models (the models service's presence map),
    fewest active first, then one that ran the same checkpoint last → the generation
    service submits the existing row to that server.

A scheduled generation that fails because its server died, was destroyed or became
unready (or its prompt was lost) is handed back to the queue by the generation
service's requeue hook, its attempt logged, up to ``max_attempts`` dispatches; then
it fails with the history of attempts. An in-memory mirror of the waiting rows is
rebuilt from the database at start, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from socialsync.common.events import MODEL_DOWNLOAD, SERVER_STATUS
from socialsync.common.generations import GenerateRequest, GenerationStatus
from socialsync.common.queue import QueuedGenerateRequest, QueuedResponse, QueueItem, QueueView
from socialsync.common.servers import OfferQuery, ServerCreate, ServerStatus, SetupStatus
from socialsync.common.wire import iso, now_iso
from socialsync.daemon.errors import AppError, BadRequest, Conflict, NotFound, RateLimited
from socialsync.daemon.events import EventBus
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.generations import FinishedGeneration, GenerationService, is_ready
from socialsync.daemon.services.webhooks import WebhookService
from socialsync.daemon.settings import SchedulerSettings
from socialsync.daemon.store import generations as gen_store
from socialsync.daemon.store import scheduling as store
from socialsync.daemon.store import servers as servers_store
from socialsync.daemon.store.db import Database

log = logging.getLogger(__name__)
NO_SERVER_HAS = "no ready server has "

#: Failures that say nothing about the generation itself: its server went away.
RETRIABLE = ("server became unready", "lost", "ComfyUI unavailable", "could not collect the images")
SERVER_COOLDOWN = 2.0  # a server that refused a dispatch before it was assigned sits out this long
SCAN_DEPTH = 32  # items of one principal looked at for one that fits somewhere
DEFAULT_SECONDS = 45.0  # estimate of one generation when nothing was measured


@dataclass(order=True)
class Item:
    sort: tuple[int, int]  # (-priority, id)
    id: int = field(compare=False)
    principal: str = field(compare=False)
    priority: int = field(compare=False)
    request: dict[str, Any] = field(compare=False)
    checkpoint: str | None = field(compare=False)
    required: tuple[str, ...] = field(compare=False)
    attempts: int = field(compare=False)
    created_at: str = field(compare=False)


def _principal(value: str | None) -> str:
    return value or "anonymous"


def _item(row) -> Item:
    request = orjson.loads(row["request"] or "{}")
    checkpoint = (request.get("parameters") or {}).get("checkpoint")
    return Item((-row["priority"], row["id"]), row["id"], _principal(row["principal"]), row["priority"], request,
                checkpoint, tuple(request.get("requiredModels") or ()), row["attempts"], row["created_at"])


class Scheduler:
    def __init__(self, db: Database, bus: EventBus, fleet: FleetService, generations: GenerationService,
                 webhooks: WebhookService, settings: SchedulerSettings):
        self.db = db
        self.bus = bus
        self.fleet = fleet
        self.generations = generations
        self.webhooks = webhooks
        self.settings = settings
        self._queues: dict[str, list[Item]] = {}  # heaps per principal
        self._items: dict[int, Item] = {}
        self._ring: collections.deque[str] = collections.deque()  # principals with waiting work
        self._deficit: dict[str, float] = {}
        self._reserved: dict[int, set[int]] = {}  # dispatches in flight per server
        self._no_webhook: set[int] = set()  # dispatched items whose request had no webhook URL
        self._last_checkpoint: dict[int, str] = {}
        self._cooldown: dict[int, float] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._autoscale_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_launch = 0.0
        self._closed = False
        self.dispatched = 0
        generations.set_requeue_hook(self._requeue)
        generations.add_finish_listener(self._on_finish)
        fleet.add_listener(self._on_server_change)
        bus.add_listener(self._on_event)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for row in await store.waiting(self.db):
            self._push(_item(row))
        self._seq = await store.max_dispatch_seq(self.db)
        self._last_checkpoint = await store.last_checkpoints(self.db)
        if self._items:
            log.info("queue restored waiting=%d principals=%d", len(self._items), len(self._queues))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")
        if self.settings.autoscale:
            self._autoscale_task = asyncio.get_running_loop().create_task(self._autoscale_loop(), name="autoscale")

    async def stop(self) -> None:
        self._closed = True
        tasks = [t for t in (self._task, self._autoscale_task) if t is not None] + list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ the mirror

    def _push(self, item: Item) -> None:
        if item.id in self._items:
            return
        self._items[item.id] = item
        heap = self._queues.get(item.principal)
        if heap is None:
            heap = self._queues[item.principal] = []
            self._ring.append(item.principal)
            self._deficit.setdefault(item.principal, 0.0)
        heapq.heappush(heap, item)

    def _remove(self, item_id: int) -> Item | None:
        item = self._items.pop(item_id, None)
        if item is None:
            return None
        heap = self._queues.get(item.principal)
        if heap is not None:
            with contextlib.suppress(ValueError):
                heap.remove(item)
                heapq.heapify(heap)
            if not heap:
                self._drop_principal(item.principal)
        return item

    def _drop_principal(self, principal: str) -> None:
        self._queues.pop(principal, None)
        self._deficit.pop(principal, None)  # DRR: an empty queue keeps no credit
        with contextlib.suppress(ValueError):
            self._ring.remove(principal)

    # ------------------------------------------------------------------ enqueue

    async def enqueue(self, req: QueuedGenerateRequest, principal: str | None) -> QueuedResponse:
        if self._closed:
            raise Conflict("Shutting down", "the daemon is stopping")
        if req.webhook_url is not None:
            await self.webhooks.check_url(req.webhook_url)
        if req.workflow_id is not None:
            await self.generations.workflows.resolve(req.workflow_id)  # NotFound now, not at dispatch
        request = req.model_dump(mode="json", by_alias=True, exclude_none=True)
        who = _principal(principal)
        now = now_iso()
        generation_id = await store.enqueue(self.db, {
            "principal": who, "workflow_id": req.workflow_id, "prompt": req.prompt,
            "negative_prompt": req.negative_prompt, "parameters": orjson.dumps(request.get("parameters", {})).decode(),
            "checkpoint": req.parameters.checkpoint, "status": GenerationStatus.QUEUED, "progress": 0,
            "priority": req.priority, "webhook_url": req.webhook_url, "request": orjson.dumps(request).decode(),
            "created_at": now,
        }, cap=self.settings.principal_queue_cap)
        if generation_id is None:
            raise RateLimited("Queue cap reached",
                              f"{who} already has {self.settings.principal_queue_cap} generations waiting",
                              headers={"Retry-After": "30"})
        row = await gen_store.get(self.db, generation_id)
        item = _item(row)
        self._push(item)
        self.wake()
        log.info("generation enqueued generation_id=%d principal=%s priority=%d", generation_id, who, req.priority)
        position = self._positions().get(generation_id, len(self._items))
        eta = await self._eta_seconds(position)
        return QueuedResponse(generation_id=generation_id, position=position, estimated_time=_human(eta))

    # ------------------------------------------------------------------ the dispatcher

    async def _run(self) -> None:
        while not self.generations.reconciled:
            await asyncio.sleep(0.05)
        while True:
            try:
                async with asyncio.timeout(self.settings.safety_interval if self._items else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._round()
            except Exception:
                log.exception("dispatch round failed")
                await asyncio.sleep(0.5)

    async def _capacity(self) -> tuple[dict[int, int], dict[int, Any]]:
        ready = {r["id"]: r for r in await servers_store.list_all(self.db) if is_ready(r)}
        active = await store.active_by_server(self.db)
        now = time.monotonic()
        free = {}
        for sid in ready:
            if self._cooldown.get(sid, 0) > now:
                continue
            used = len(active.get(sid, set()) | self._reserved.get(sid, set()))
            free[sid] = self.settings.per_server_concurrency - used
        return free, ready

    async def _round(self) -> None:
        if not self._items:
            return
        free, _ = await self._capacity()
        if not any(n > 0 for n in free.values()):
            return
        presence = await store.model_presence(self.db)
        while self._ring and any(n > 0 for n in free.values()):
            pick = self._next(free, presence)
            if pick is None:
                break
            item, sid = pick
            self._remove(item.id)
            free[sid] -= 1
            self._reserved.setdefault(sid, set()).add(item.id)
            if item.checkpoint:
                self._last_checkpoint[sid] = item.checkpoint
            self._seq += 1
            self.dispatched += 1
            self._spawn(self._dispatch(item, sid, self._seq), f"dispatch-{item.id}")

    def _next(self, free: dict[int, int], presence: dict[int, set[tuple[str, str]]]) -> tuple[Item, int] | None:
        """Deficit round robin over the principals with waiting work."""
        for _ in range(len(self._ring)):
            principal = self._ring[0]
            self._ring.rotate(-1)
            self._deficit[principal] = self._deficit.get(principal, 0.0) + 1.0
            if self._deficit[principal] < 1.0:
                continue
            for item in heapq.nsmallest(SCAN_DEPTH, self._queues.get(principal, [])):
                sid = self._server_for(item, free, presence)
                if sid is not None:
                    self._deficit[principal] -= 1.0
                    return item, sid
            self._deficit[principal] = 0.0  # nothing of it fits now: no credit hoarded
        return None

    def _server_for(self, item: Item, free: dict[int, int], presence: dict[int, set[tuple[str, str]]]) -> int | None:
        best, best_key = None, None
        for sid, n in free.items():
            if n <= 0 or not self._has_models(item, presence.get(sid)):
                continue
            used = self.settings.per_server_concurrency - n
            same = item.checkpoint is not None and self._last_checkpoint.get(sid) == item.checkpoint
            key = (used, not same, sid)
            if best_key is None or key < best_key:
                best, best_key = sid, key
        return best

    @staticmethod
    def _has_models(item: Item, models: set[tuple[str, str]] | None) -> bool:
        if not item.checkpoint and not item.required:
            return True
        if models is None:
            return False  # never listed: the presence map does not know it yet
        if item.checkpoint and ("checkpoints", item.checkpoint) not in models:
            return False
        names = {n for _, n in models} | {n.rsplit("/", 1)[-1] for _, n in models}
        return all(r in names for r in item.required)

    def _why_waiting(self, item: Item, ready: dict[int, Any], presence: dict[int, set[tuple[str, str]]]) -> str:
        if not ready:
            return "no ready server"
        if not any(self._has_models(item, presence.get(sid)) for sid in ready):
            wanted = ", ".join(filter(None, [item.checkpoint, *item.required]))
            return f"{NO_SERVER_HAS}{wanted}"
        return "all matching servers busy"

    async def _dispatch(self, item: Item, server_id: int, seq: int) -> None:
        if not item.request.get("webhookUrl"):  # the row's webhook_url is the request's, never changed
            self._no_webhook.add(item.id)
        req = GenerateRequest.model_validate(
            {k: v for k, v in item.request.items() if k not in ("priority", "requiredModels", "webhookUrl")})
        try:
            await self.generations.submit(server_id, req, item.principal, existing=item.id, dispatch_seq=seq)
            log.info("generation dispatched generation_id=%d server_id=%d seq=%d", item.id, server_id, seq)
        except (BadRequest, NotFound) as exc:
            row = await gen_store.get(self.db, item.id)
            if row is not None and row["status"] == GenerationStatus.QUEUED and row["server_id"] is None:
                await self.generations.fail_waiting(item.id, f"{exc.message}: {exc.details}")
        except AppError as exc:
            # Not ready / unavailable / cancelled meanwhile: whatever still waits goes back.
            row = await gen_store.get(self.db, item.id)
            if row is not None and row["status"] == GenerationStatus.QUEUED and row["server_id"] is None:
                self._cooldown[server_id] = time.monotonic() + SERVER_COOLDOWN
                self._push(_item(row))
            log.info("dispatch refused generation_id=%d server_id=%d error=%s", item.id, server_id, exc.message)
        except Exception:
            log.exception("dispatch failed generation_id=%d server_id=%d", item.id, server_id)
            row = await gen_store.get(self.db, item.id)
            if row is not None and row["status"] == GenerationStatus.QUEUED and row["server_id"] is None:
                self._push(_item(row))
        finally:
            self._reserved.get(server_id, set()).discard(item.id)
            self.wake()

    # ------------------------------------------------------------------ hooks

    async def _requeue(self, generation_id: int, server_id: int | None, error: str) -> bool | str:
        """The generation service asks before failing a generation (see RequeueHook)."""
        row = await gen_store.get(self.db, generation_id)
        if row is None or not row["scheduled"] or not error.startswith(RETRIABLE):
            return False
        attempt_log = orjson.loads(row["attempt_log"] or "[]")
        attempt_log.append({"attempt": row["attempts"], "serverId": server_id, "error": error, "at": now_iso()})
        if row["attempts"] >= self.settings.max_attempts:
            await store.set_attempt_log(self.db, generation_id, attempt_log)
            history = "; ".join(f"#{a['attempt']} on server {a['serverId']}: {a['error']}" for a in attempt_log)
            return f"gave up after {row['attempts']} attempts: {history}"[:4000]
        if not await store.hand_back(self.db, generation_id, attempt_log):
            return False
        if server_id is not None:
            self._reserved.get(server_id, set()).discard(generation_id)
        fresh = await gen_store.get(self.db, generation_id)
        self._push(_item(fresh))
        self.wake()
        log.warning("generation re-queued generation_id=%d server_id=%s attempt=%d error=%s", generation_id,
                    server_id, row["attempts"], error)
        return True

    async def _on_finish(self, done: FinishedGeneration) -> None:
        if done.server_id is not None:
            self._reserved.get(done.server_id, set()).discard(done.generation_id)
        self._remove(done.generation_id)  # a waiting item cancelled or failed
        self.wake()
        no_url = done.direct or done.generation_id in self._no_webhook
        self._no_webhook.discard(done.generation_id)
        if no_url and self.webhooks.url_for(None) is None:
            return  # no webhook to send: the row is not read again
        if done.attempts is not None:  # the final write returned the row's fields: no read
            webhook_url, principal, attempts, prompt = done.webhook_url, done.principal, done.attempts, done.prompt
        else:
            row = await gen_store.get(self.db, done.generation_id)
            if row is None:
                return
            webhook_url, principal, attempts, prompt = (row["webhook_url"], row["principal"], row["attempts"],
                                                        row["prompt"])
        url = self.webhooks.url_for(webhook_url)
        if url is None:
            return
        event = "generation.completed" if done.status == GenerationStatus.COMPLETED else "generation.failed"
        data = {"generationId": done.generation_id, "serverId": done.server_id, "status": str(done.status),
                "error": done.error, "imageUrls": done.image_urls, "durationMs": done.duration_ms,
                "principal": principal, "attempts": attempts, "prompt": prompt}
        try:
            await self.webhooks.enqueue(done.generation_id, event, url, data)
        except Exception:
            log.exception("webhook enqueue failed generation_id=%d", done.generation_id)

    def _on_server_change(self, old, new) -> None:
        if is_ready(new) or (old is not None and is_ready(old)):
            self._cooldown.pop(new["id"], None)
            self.wake()

    def _on_event(self, event) -> None:
        if event.type in (SERVER_STATUS, MODEL_DOWNLOAD) and self._items:
            self.wake()

    # ------------------------------------------------------------------ the view

    def _positions(self) -> dict[int, int]:
        """The order in which waiting items would be dispatched if slots were free
        (a dry run of the round robin over copies of the heaps)."""
        heaps = {p: sorted(h) for p, h in self._queues.items()}
        ring = [p for p in self._ring if heaps.get(p)]
        order: dict[int, int] = {}
        index = {p: 0 for p in ring}
        while ring:
            nxt = []
            for p in ring:
                order[heaps[p][index[p]].id] = len(order) + 1
                index[p] += 1
                if index[p] < len(heaps[p]):
                    nxt.append(p)
            ring = nxt
        return order

    async def _seconds_per_generation(self) -> float:
        rows = await self.db.fetchall(
            "SELECT duration_ms FROM generations WHERE status = 'completed' AND duration_ms IS NOT NULL "
            "ORDER BY id DESC LIMIT 50")
        values = sorted(r[0] for r in rows)
        return values[len(values) // 2] / 1000 if values else DEFAULT_SECONDS

    async def _eta_seconds(self, position: int) -> float:
        _, ready = await self._capacity()
        slots = max(1, len(ready) * self.settings.per_server_concurrency)
        per = await self._seconds_per_generation()
        return per * ((position - 1) // slots + (1 if ready else 0)) if ready else float("inf")

    async def view(self, limit: int = 200) -> QueueView:
        free, ready = await self._capacity()
        presence = await store.model_presence(self.db)
        positions = self._positions()
        per = await self._seconds_per_generation()
        slots = max(1, len(ready) * self.settings.per_server_concurrency)
        now = datetime.now(UTC)
        items = []
        for gid, pos in sorted(positions.items(), key=lambda kv: kv[1])[:limit]:
            item = self._items[gid]
            why = self._why_waiting(item, ready, presence)
            start = None
            if ready and not why.startswith(NO_SERVER_HAS):  # no estimate for what no server can run
                start = now + timedelta(seconds=per * ((pos - 1) // slots + (0 if sum(free.values()) >= pos else 1)))
            items.append(QueueItem(
                generation_id=gid, principal=item.principal, priority=item.priority, status="queued", position=pos,
                attempts=item.attempts, checkpoint=item.checkpoint, required_models=list(item.required),
                created_at=item.created_at, estimated_start=iso(start) if start else None, waiting_for=why))
        running = await self.db.fetchall(
            "SELECT id, principal, priority, status, server_id, attempts, checkpoint, created_at, request "
            "FROM generations WHERE scheduled = 1 AND server_id IS NOT NULL AND status IN ('queued', 'processing') "
            "ORDER BY dispatch_seq LIMIT ?", (limit,))
        for r in running:
            request = orjson.loads(r["request"] or "{}")
            items.append(QueueItem(
                generation_id=r["id"], principal=r["principal"], priority=r["priority"], status=r["status"],
                server_id=r["server_id"], attempts=r["attempts"], checkpoint=r["checkpoint"],
                required_models=request.get("requiredModels") or [], created_at=r["created_at"]))
        return QueueView(waiting=len(self._items), running=len(running), servers=len(ready),
                         slots=sum(max(0, n) for n in free.values()),
                         per_server_concurrency=self.settings.per_server_concurrency, items=items)

    async def servers_with_work(self, server_ids: Iterable[int]) -> set[int]:
        """Those of ``server_ids`` that a waiting item could run on (its checkpoint and
        required models there): for idle auto-stop, which must not stop a server the
        queue is about to use, nor keep one for work it can never take."""
        wanted = set(server_ids)
        if not self._items or not wanted:
            return set()
        presence = await store.model_presence(self.db)
        found: set[int] = set()
        for item in self._items.values():
            found |= {sid for sid in wanted - found if self._has_models(item, presence.get(sid))}
            if found == wanted:
                break
        return found

    # ------------------------------------------------------------------ autoscaling

    async def oldest_wait(self) -> float:
        """How long the oldest item another server could help has waited. An item whose
        checkpoint or models no ready server has is left out while servers are ready:
        one more rented from the same image would not have them either."""
        if not self._items:
            return 0.0
        _, ready = await self._capacity()
        items = list(self._items.values())
        if ready:
            presence = await store.model_presence(self.db)
            items = [i for i in items if any(self._has_models(i, presence.get(sid)) for sid in ready)]
        if not items:
            return 0.0
        oldest = min(item.created_at for item in items)
        return (datetime.now(UTC) - datetime.fromisoformat(oldest)).total_seconds()

    async def _autoscale_loop(self) -> None:
        interval = max(1.0, min(30.0, self.settings.queue_wait_threshold / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.autoscale_once()
            except AppError as exc:
                log.info("autoscale launch refused: %s (%s)", exc.message, exc.details)
            except Exception:
                log.exception("autoscale check failed")

    async def autoscale_once(self) -> int | None:
        """Launch the cheapest matching offer when the queue waits too long; None if not."""
        s = self.settings
        if self.fleet.vast is None or await self.oldest_wait() < s.queue_wait_threshold:
            return None
        if time.monotonic() - self._last_launch < s.autoscale_cooldown and self._last_launch:
            return None
        rows = [r for r in await servers_store.list_all(self.db) if r["kind"] == "vast"]
        if any(_coming_up(r) for r in rows):
            return None  # one launch at a time: wait until it is up (booting or installing)
        serving = [r for r in rows if r["status"] in (ServerStatus.LAUNCHING, ServerStatus.LOADING, ServerStatus.RUNNING)]
        if len(serving) >= s.autoscale_max_servers:
            return None
        offers = await self.fleet.search_offers(OfferQuery(
            gpu_name=s.autoscale_gpu_name, min_gpu_ram=s.autoscale_min_gpu_ram, max_price=s.autoscale_max_price,
            order="price", limit=5))
        if not offers:
            log.info("autoscale: no offer matches")
            return None
        self._last_launch = time.monotonic()
        _, server_id = await self.fleet.launch(ServerCreate(offer_id=offers[0].offer_id, image=s.autoscale_image,
                                                            name=f"autoscale-{offers[0].offer_id}"), "scheduler")
        log.info("autoscale launched server_id=%d offer_id=%s", server_id, offers[0].offer_id)
        await self.fleet.audit.record(
            "server.autoscale", target_type="server", target_id=server_id,
            details={"offerId": offers[0].offer_id, "pricePerHour": offers[0].price_per_hour,
                     "queueWaitSeconds": round(await self.oldest_wait(), 1)})
        return server_id


def _human(seconds: float) -> str:
    if seconds == float("inf"):
        return "when a server is ready"
    if seconds <= 90:
        return f"{max(1, int(seconds))}-{max(2, int(seconds * 1.5) + 1)} seconds"
    return f"{max(1, int(seconds // 60))}-{max(2, int(seconds * 1.5 // 60) + 1)} minutes"


def _coming_up(row) -> bool:
    """Rented and on its way to serving: booting at Vast, or running with ComfyUI not answering yet."""
    if row["status"] in (ServerStatus.LAUNCHING, ServerStatus.LOADING):
        return True
    return row["status"] == ServerStatus.RUNNING and row["setup_status"] in (SetupStatus.PENDING,
                                                                             SetupStatus.INSTALLING)
