"""Image generation: submit to a ready server, follow it, keep its images.

One straight path (design.md, data flows 4 and 5):

    submit → checks (sizes by the model; sampler, scheduler, checkpoint against the
    server's own lists) → graph filled in → row ``queued`` with a prompt id we choose
    → the server's watcher tracks the id → ``POST /prompt`` → watcher events →
    ``processing`` + throttled ``generation_progress`` → ``Finished`` → images
    downloaded, checked, stored by content → row ``completed`` (or ``failed`` /
    ``cancelled``) → ``generation_completed`` / ``generation_failed``.

The row is written before ComfyUI is asked, so no crash leaves a prompt running that
the database does not know about; a row whose prompt never reached ComfyUI is found
"lost" by the reconcile at the next start. One `ComfyWatcher` per ready server (fleet
listener); a server that leaves ready fails every generation still active on it, and a
watcher that loses its socket to a server that no longer answers tells the readiness
gate at once.

For other services (the scheduler): `submit(server_id, request, principal)` returns a
`Submitted`; completion is signalled by the bus events, by `add_finish_listener`
callbacks and by `await wait(generation_id)`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from socialsync.common.errors import ErrorCode
from socialsync.common.events import (
    GENERATION_COMPLETED,
    GENERATION_FAILED,
    GENERATION_PROGRESS,
)
from socialsync.common.generations import (
    GenerateRequest,
    Generation,
    GenerationFailedData,
    GenerationImage,
    GenerationStatus,
)
from socialsync.common.servers import ServerStatus, SetupStatus
from socialsync.common.wire import iso, now_iso, utcnow
from socialsync.daemon.comfy import (
    Cached,
    ComfyClient,
    ComfyError,
    ComfyPromptRejected,
    ComfyWatcher,
    Executed,
    Executing,
    Finished,
    Progress,
    Started,
    WatchEvent,
    iter_output_files,
    outcome_from_history,
)
from socialsync.daemon.errors import AppError, BadRequest, Conflict, NotFound, ServerNotReady
from socialsync.daemon.events import EventBus
from socialsync.daemon.services.comfy_pool import ComfyPool
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.images import (
    ImageRejected,
    ImageStore,
    StoredImage,
    image_url,
    is_image_output,
)
from socialsync.daemon.services.readiness import Readiness
from socialsync.daemon.services.workflows import (
    BUILTIN_OUTPUT_NODE,
    Resolved,
    WorkflowService,
    apply,
    current,
    sampler_candidates,
    scheduler_candidates,
)
from socialsync.daemon.store import generations as store
from socialsync.daemon.store import scheduling as scheduling_store
from socialsync.daemon.store import servers as servers_store
from socialsync.daemon.store.db import Database

log = logging.getLogger(__name__)

DEFAULT_ESTIMATE = "30-60 seconds"
PROGRESS_INTERVAL = 0.25  # at most 4 generation_progress events a second per generation
OBJECT_INFO_TTL = 600.0
MODELS_TTL = 60.0
RECONCILE_TIMEOUT = 20.0
LOST_AFTER_RESTART = "lost: not in ComfyUI's queue or history after a daemon restart"
LOST_LIVE = "lost: not in ComfyUI's queue or history (deleted on the server, or ComfyUI restarted)"


class GenerationFailed(AppError):
    status, code = 422, ErrorCode.GENERATION_FAILED


class ComfyUnavailable(AppError):
    status, code = 503, ErrorCode.COMFY_UNAVAILABLE


def is_ready(row) -> bool:
    return (row is not None and row["status"] == ServerStatus.RUNNING and row["setup_status"] == SetupStatus.READY
            and bool(row["comfy_url"]))


def unready_reason(old, new) -> str:
    status, setup = new["status"], new["setup_status"]
    if status == ServerStatus.DESTROYED:
        why = "the server was destroyed"
    elif status != ServerStatus.RUNNING:
        why = f"the server is {status}" + (f" ({new['status_message']})" if new["status_message"] else "")
    elif not new["comfy_url"]:
        why = "the server has no ComfyUI address"
    elif setup == SetupStatus.FAILED:
        why = "ComfyUI setup failed" + (f": {new['setup_message']}" if new["setup_message"] else "")
    elif old is not None and is_ready(old):
        why = f"ComfyUI stopped answering (setup {setup})"
    else:
        why = f"ComfyUI is {setup}"
    return f"server became unready: {why}"


def describe_error(error: dict[str, Any] | None) -> str:
    """One line from ComfyUI's ``execution_error`` data."""
    if not error:
        return "ComfyUI reported an error"
    node = error.get("node_type") or "?"
    node_id = error.get("node_id")
    kind = error.get("exception_type") or "error"
    message = str(error.get("exception_message") or "").strip()
    where = f"{node} (node {node_id})" if node_id is not None else str(node)
    return f"{where}: {kind}: {message}"[:2000] if message else f"{where}: {kind}"


def comfy_timing(entry: dict[str, Any] | None) -> tuple[int, int] | None:
    """(start, end) in epoch milliseconds of ComfyUI's clock, from the ``execution_start``
    and the final status message of a history entry; None when it does not say."""
    status = (entry or {}).get("status")
    messages = status.get("messages") if isinstance(status, dict) else None
    if not isinstance(messages, list):
        return None
    stamps = {m[0]: m[1].get("timestamp") for m in messages
              if isinstance(m, list) and len(m) > 1 and isinstance(m[1], dict)}
    start = stamps.get("execution_start")
    end = next((stamps[k] for k in ("execution_success", "execution_error", "execution_interrupted") if k in stamps),
               None)
    if isinstance(start, int | float) and isinstance(end, int | float) and end >= start:
        return int(start), int(end)
    return None


def timings(comfy: tuple[int, int] | None, created_at: str | None) -> tuple[datetime, tuple[str, int] | None]:
    """(completed_at, (started_at, duration_ms) or None). ComfyUI's own times are taken
    when they agree with ours (after the row was created, not in the future);
    otherwise only its duration is, ending now."""
    now = utcnow()
    if comfy is None:
        return now, None
    start_ms, end_ms = comfy
    duration = end_ms - start_ms
    start, end = (datetime.fromtimestamp(ms / 1000, UTC) for ms in comfy)
    skew = timedelta(seconds=2)
    created = datetime.fromisoformat(created_at) if created_at else None
    if created is not None and created - skew <= start and end <= now + skew:
        completed = min(end, now)
        return completed, (iso(completed - timedelta(milliseconds=duration)), duration)
    return now, (iso(now - timedelta(milliseconds=duration)), duration)


def progress_data(generation_id: int, progress: int, status: str, server_id: int | None, step: int | None,
                  steps: int | None) -> dict[str, Any]:
    """``GenerationProgressData(...).model_dump(mode="json", by_alias=True,
    exclude_none=True)``, built directly (one is published for every state change)."""
    data: dict[str, Any] = {"generationId": generation_id, "progress": progress, "status": str(status)}
    if server_id is not None:
        data["serverId"] = server_id
    if step is not None:
        data["step"] = step
    if steps is not None:
        data["steps"] = steps
    return data


@dataclass(frozen=True)
class Submitted:
    generation_id: int
    server_id: int
    prompt_id: str
    estimated_time: str


@dataclass(frozen=True)
class FinishedGeneration:
    """What finish listeners get once a generation reached its final state."""

    generation_id: int
    server_id: int | None
    status: GenerationStatus
    error: str | None
    image_urls: list[str]
    duration_ms: int | None
    #: Submitted straight to a server in this run (not through the scheduler's queue):
    #: its row carries no webhook URL of its own.
    direct: bool = False
    #: The row's own fields, as its final write returned them (``attempts`` None: not known).
    webhook_url: str | None = None
    principal: str | None = None
    attempts: int | None = None
    prompt: str | None = None


FinishListener = Callable[[FinishedGeneration], Awaitable[None] | None]
#: ``hook(generation_id, server_id, error)`` before a generation fails: True when it took
#: the generation back (the scheduler re-queues it), a string to fail it with that error
#: instead, or False to let it fail as it would.
RequeueHook = Callable[[int, "int | None", str], Awaitable["bool | str"]]


@dataclass(eq=False)
class _Track:
    generation_id: int
    server_id: int
    prompt_id: str
    client: ComfyClient
    status: str = GenerationStatus.QUEUED
    progress: int = 0
    step: int | None = None
    steps: int | None = None
    last_emit: float = 0.0
    emitted: tuple[int, int | None] = (0, None)
    flush: asyncio.TimerHandle | None = None
    done: bool = False  # a final state is being written: later events are ignored
    resumed: bool = False  # followed again after a restart: its start was not seen
    created_at: str | None = None
    posting: bool = False  # POST /prompt still in flight: "not in queue or history" is no news yet
    direct: bool = False  # a row inserted by `submit` itself (not a scheduler's waiting row)


@dataclass(eq=False)
class _Watch:
    server_id: int
    url: str
    client: ComfyClient
    watcher: ComfyWatcher


@dataclass
class _Cached:
    at: float
    value: Any = field(default=None)


class GenerationService:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        fleet: FleetService,
        pool: ComfyPool,
        readiness: Readiness,
        workflows: WorkflowService,
        images: ImageStore,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
        watcher_options: dict[str, Any] | None = None,
    ):
        self.db = db
        self.bus = bus
        self.fleet = fleet
        self.pool = pool
        self.readiness = readiness
        self.workflows = workflows
        self.images = images
        self.progress_interval = progress_interval
        self.watcher_options = watcher_options or {}
        self._watches: dict[int, _Watch] = {}
        self._watchers: set[ComfyWatcher] = set()  # every watcher not yet stopped
        self._tracks: dict[str, _Track] = {}  # by prompt id
        self._by_generation: dict[int, _Track] = {}
        self._tasks: set[asyncio.Task] = set()
        self._cache: dict[tuple, _Cached] = {}
        self._durations: dict[int, collections.deque[int]] = {}  # recent completed durations per server
        self._listeners: list[FinishListener] = []
        self._requeue_hook: RequeueHook | None = None
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self._reconciled = asyncio.Event()
        self._closed = False
        fleet.add_listener(self._on_server_change)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Watch every ready server and reconcile what a previous run left active.
        Reconciling runs in the background; `submit` waits for it."""
        await self.images.prepare()
        self._spawn(self._startup(), "generations-reconcile")

    async def _startup(self) -> None:
        try:
            for row in await servers_store.list_all(self.db):
                if is_ready(row):
                    self._ensure_watch(row["id"], row["comfy_url"])
            await self.reconcile()
        except Exception:
            log.exception("reconcile failed")
        finally:
            self._reconciled.set()

    async def stop(self) -> None:
        self._closed = True
        for track in self._tracks.values():
            if track.flush is not None:
                track.flush.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in list(self._watchers)), return_exceptions=True)
        self._watchers.clear()
        self._watches.clear()
        for futures in self._waiters.values():
            for fut in futures:
                fut.cancel()
        self._waiters.clear()

    @property
    def reconciled(self) -> bool:
        return self._reconciled.is_set()

    def _spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("generation task failed name=%s", task.get_name(), exc_info=task.exception())

    # ---------------------------------------------------------- finish listeners

    def add_finish_listener(self, listener: FinishListener) -> None:
        """Called (plain or async) after every generation reaches its final state."""
        self._listeners.append(listener)

    def set_requeue_hook(self, hook: RequeueHook) -> None:
        """Asked before any generation fails (see ``RequeueHook``)."""
        self._requeue_hook = hook

    async def fail_waiting(self, generation_id: int, error: str) -> bool:
        """Fail a generation that never reached a server (the scheduler gave up on it)."""
        return await self._finalize_row(generation_id, None, GenerationStatus.FAILED, error)

    async def wait(self, generation_id: int, timeout: float | None = None) -> Generation:
        """The generation once it is final (at once if it already is)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._waiters.setdefault(generation_id, []).append(fut)
        try:
            gen = await self.get(generation_id)
            if gen.status in (GenerationStatus.QUEUED, GenerationStatus.PROCESSING):
                async with asyncio.timeout(timeout):
                    await fut
                gen = await self.get(generation_id)
            return gen
        finally:
            waiters = self._waiters.get(generation_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(generation_id, None)

    # -------------------------------------------------------------------- reads

    async def get(self, generation_id: int) -> Generation:
        row = await store.get(self.db, generation_id)
        if row is None:
            raise NotFound("Generation not found", f"no generation with id {generation_id}")
        images = await store.images_for(self.db, [generation_id])
        return to_wire(row, images.get(generation_id, []))

    async def list(self, *, server_id: int | None, status: str | None = None, limit: int = 50, offset: int = 0,
                   before_id: int | None = None) -> list[Generation]:
        """Newest first. With a ``server_id`` the server must exist (destroyed ones too)."""
        if server_id is not None:
            await self.fleet.row(server_id)
        rows = await store.page(self.db, server_id=server_id, status=status, limit=limit, offset=offset,
                                before_id=before_id)
        images = await store.images_for(self.db, [r["id"] for r in rows if r["status"] == "completed"])
        return [to_wire(r, images.get(r["id"], [])) for r in rows]

    async def image_file(self, generation_id: int, index: int) -> tuple[Path | None, str] | None:
        """(file, content type) of image number ``index`` of a generation, or None."""
        row = await store.image(self.db, generation_id, index)
        if row is None:
            return None
        return self.images.path_for_row(row["path"]), row["content_type"]

    async def active_count(self, server_id: int) -> int:
        return await store.count_active(self.db, server_id)

    async def estimate(self, server_id: int) -> str:
        """From the last 20 completed durations on that server: "p50-p90" seconds, times
        the generations ahead in its queue. Kept in memory (read once from the store)."""
        recent = self._durations.get(server_id)
        if recent is None:
            recent = self._durations[server_id] = collections.deque(
                reversed(await store.recent_durations(self.db, server_id, 20)), maxlen=20)
        if len(recent) < 3:
            return DEFAULT_ESTIMATE
        durations = sorted(recent)
        ahead = max(0, sum(1 for t in self._tracks.values() if t.server_id == server_id and not t.done) - 1)
        p50 = durations[len(durations) // 2] * (ahead + 1) / 1000
        p90 = durations[min(len(durations) - 1, math.ceil(len(durations) * 0.9) - 1)] * (ahead + 1) / 1000
        low = max(1, math.floor(p50))
        high = max(low + 1, math.ceil(p90))
        if high <= 90:
            return f"{low}-{high} seconds"
        low_m = max(1, math.floor(p50 / 60))
        return f"{low_m}-{max(low_m + 1, math.ceil(p90 / 60))} minutes"

    # ------------------------------------------------------------------- submit

    async def submit(self, server_id: int, req: GenerateRequest, principal: str | None = None, *,
                     existing: int | None = None, dispatch_seq: int | None = None) -> Submitted:
        """Queue one generation on a ready server (202 semantics: it runs later).
        ``existing``: the id of a scheduler's waiting row, given to this server instead
        of a new row (`Conflict` when it is no longer waiting)."""
        if not self._reconciled.is_set():
            await self._reconciled.wait()
        if self._closed:
            raise ComfyUnavailable("Shutting down", "the daemon is stopping")
        row = await self.fleet.cached_row(server_id)  # no database read per submit
        if not is_ready(row):
            raise ServerNotReady("Server not ready",
                                 f"server {server_id} is {row['status']} with setup {row['setup_status']}; "
                                 "generations need a running server whose ComfyUI is ready")
        url = row["comfy_url"]
        resolved = await self.workflows.resolve(req.workflow_id)
        watch = self._ensure_watch(server_id, url)
        values = await self._values(server_id, watch.client, resolved, req)
        graph = apply(resolved.graph, resolved.mapping, values)
        prompt_id = str(uuid.uuid4())
        effective = {p: current(graph, resolved.mapping, p) for p in resolved.mapping
                     if p not in ("prompt", "negativePrompt")}
        now = now_iso()
        fields = {
            "workflow_id": resolved.workflow_id, "parameters": orjson.dumps(effective).decode(),
            "checkpoint": effective.get("checkpoint"),
            "seed": effective.get("seed") if isinstance(effective.get("seed"), int) else None,
            "steps": effective.get("steps") if isinstance(effective.get("steps"), int) else None,
            "queue_id": prompt_id,
        }
        if existing is not None:
            if not await scheduling_store.assign(self.db, existing, server_id, fields, dispatch_seq, now):
                raise Conflict("Generation no longer queued", f"generation {existing} was cancelled or dispatched")
            generation_id = existing
        else:
            generation_id = await store.insert(self.db, {
                **fields, "server_id": server_id, "principal": principal, "prompt": req.prompt,
                "negative_prompt": req.negative_prompt, "status": GenerationStatus.QUEUED, "progress": 0,
                "priority": 0, "attempts": 1, "created_at": now,
            })
        if resolved.workflow_id is None:
            graph[BUILTIN_OUTPUT_NODE]["inputs"]["filename_prefix"] = f"socialsync/gen-{generation_id}"
        track = _Track(generation_id, server_id, prompt_id, watch.client, steps=effective.get("steps"),
                       direct=existing is None)
        self._tracks[prompt_id] = track
        self._by_generation[generation_id] = track
        watch.watcher.track(prompt_id)  # before the post: events can outrun its answer
        track.posting = True
        self._emit_progress(track)
        log.info("generation queued generation_id=%d server_id=%d prompt_id=%s", generation_id, server_id, prompt_id)
        try:
            await watch.client.queue_prompt(
                graph, prompt_id=prompt_id, extra_data={"extra_pnginfo": {"socialsync": {"generationId": generation_id}}})
        except ComfyPromptRejected as exc:
            await self._finalize(track, GenerationStatus.FAILED, f"ComfyUI refused the workflow: {exc}")
            raise GenerationFailed("Generation failed", str(exc), extra={
                "node_errors": exc.node_errors, "generation_id": generation_id}) from exc
        except ComfyError as exc:
            if track.status != GenerationStatus.QUEUED or track.done:
                # The answer was lost, but the watcher saw it run: ComfyUI has it.
                log.warning("prompt post failed but it runs generation_id=%d error=%s", generation_id, exc)
            else:
                track.done = True
                with contextlib.suppress(ComfyError, TimeoutError):  # it may have arrived: never run unseen
                    async with asyncio.timeout(5):
                        await watch.client.delete_from_queue([prompt_id])
                await self._finalize(track, GenerationStatus.FAILED, f"ComfyUI unavailable: {exc}")
                raise ComfyUnavailable("ComfyUI unavailable", str(exc),
                                       extra={"generation_id": generation_id}) from exc
        except BaseException:
            # Cancelled mid-post: the watcher still tracks the id and finds it run or lost.
            raise
        finally:
            track.posting = False
        if self._watches.get(server_id) is not watch:
            await self._finalize(track, GenerationStatus.FAILED, "server became unready while the prompt was sent")
            raise ServerNotReady("Server not ready", f"server {server_id} became unready",
                                 extra={"generation_id": generation_id})
        return Submitted(generation_id, server_id, prompt_id, await self.estimate(server_id))

    async def _values(self, server_id: int, client: ComfyClient, resolved: Resolved,
                      req: GenerateRequest) -> dict[str, Any]:
        """The parameter values to write into the graph, checked against this server."""
        p = req.parameters
        mapping = resolved.mapping
        label = "the built-in workflow" if resolved.workflow_id is None else f"workflow {resolved.workflow_id}"
        values: dict[str, Any] = {"prompt": req.prompt}

        def put(param: str, value: Any) -> None:
            if value is None:
                return
            if param not in mapping:
                where = "negativePrompt" if param == "negativePrompt" else f"parameters.{param}"
                raise BadRequest("Parameter not used by this workflow", f"{where}: {label} has no input for it")
            values[param] = value

        if req.negative_prompt:
            put("negativePrompt", req.negative_prompt)
        for param, value in (("width", p.width), ("height", p.height), ("steps", p.steps),
                             ("cfg_scale", p.cfg_scale), ("batchSize", p.batch_size)):
            put(param, value)
        try:
            scheduler_hint = None
            if p.sampler is not None:
                put("sampler", p.sampler)
                options = await self._combo(server_id, client, resolved, "sampler")
                if options is not None:
                    found = next(((s, h) for s, h in sampler_candidates(p.sampler) if s in options), None)
                    if found is None:
                        raise BadRequest("Unknown sampler",
                                         f"parameters.sampler: '{p.sampler}' is not a sampler of this server; "
                                         f"it has: {', '.join(options[:12])}{', …' if len(options) > 12 else ''}")
                    values["sampler"], scheduler_hint = found
            if p.scheduler is not None:
                put("scheduler", p.scheduler)
                options = await self._combo(server_id, client, resolved, "scheduler")
                if options is not None:
                    name = next((c for c in scheduler_candidates(p.scheduler) if c in options), None)
                    if name is None:
                        raise BadRequest("Unknown scheduler",
                                         f"parameters.scheduler: '{p.scheduler}' is not a scheduler of this server; "
                                         f"it has: {', '.join(options)}")
                    values["scheduler"] = name
            elif scheduler_hint is not None and "scheduler" in mapping:
                options = await self._combo(server_id, client, resolved, "scheduler")
                if options is None or scheduler_hint in options:
                    values["scheduler"] = scheduler_hint
            if "seed" in mapping:
                values["seed"] = p.seed if p.seed is not None and p.seed >= 0 else random.randrange(2**32)
            elif p.seed not in (None, -1):
                put("seed", p.seed)
            if "checkpoint" in mapping:
                values["checkpoint"] = await self._checkpoint(server_id, client, resolved, p.checkpoint)
            else:
                put("checkpoint", p.checkpoint)
        except ComfyError as exc:
            raise ComfyUnavailable("ComfyUI unavailable", f"could not read the server's options: {exc}") from exc
        return values

    async def _cached(self, key: tuple, ttl: float, fetch: Callable[[], Awaitable[Any]], refresh: bool = False) -> Any:
        entry = self._cache.get(key)
        now = time.monotonic()
        if entry is None or refresh or now - entry.at > ttl:
            entry = _Cached(now, await fetch())
            self._cache[key] = entry
        return entry.value

    async def _combo(self, server_id: int, client: ComfyClient, resolved: Resolved, param: str) -> list[str] | None:
        """The choices of the (first) input a parameter is mapped to, from the server's
        ``/object_info``; None when the input is not a choice list (ComfyUI checks it)."""
        target = resolved.mapping[param][0]
        class_type = resolved.graph[target["node"]]["class_type"]
        info = await self._cached(("object_info", server_id, client.base_url, class_type), OBJECT_INFO_TTL,
                                  lambda: client.object_info(class_type))
        if not isinstance(info, dict):
            return None
        inputs = info.get("input") or {}
        spec = None
        for section in ("required", "optional"):
            if isinstance(inputs.get(section), dict) and target["input"] in inputs[section]:
                spec = inputs[section][target["input"]]
        if isinstance(spec, list) and spec and isinstance(spec[0], list):
            return [str(x) for x in spec[0]]
        if isinstance(spec, list) and len(spec) > 1 and spec[0] == "COMBO" and isinstance(spec[1], dict):
            return [str(x) for x in spec[1].get("options", [])]
        return None

    async def _checkpoint(self, server_id: int, client: ComfyClient, resolved: Resolved, wanted: str | None) -> str:
        key = ("checkpoints", server_id, client.base_url)
        names = await self._cached(key, MODELS_TTL, lambda: client.models("checkpoints"))
        if wanted is not None and wanted not in names:
            names = await self._cached(key, MODELS_TTL, lambda: client.models("checkpoints"), refresh=True)
        if wanted is not None:
            if wanted not in names:
                listed = ", ".join(names[:10]) + (", …" if len(names) > 10 else "") if names else "none"
                raise BadRequest("Unknown checkpoint",
                                 f"parameters.checkpoint: '{wanted}' is not on this server; it has: {listed}")
            return wanted
        if not names:
            raise ServerNotReady("No checkpoint on the server",
                                 f"server {server_id} has no checkpoint in models/checkpoints; download one first")
        graph_value = current(resolved.graph, resolved.mapping, "checkpoint")
        return graph_value if graph_value in names else names[0]

    # -------------------------------------------------------------------- cancel

    async def cancel(self, generation_id: int, actor: str) -> Generation:
        """Cancel one generation: dequeued if pending, interrupted if it is the one
        running, then ``cancelled``. Nothing else on the server is touched."""
        row = await store.get(self.db, generation_id)
        if row is None:
            raise NotFound("Generation not found", f"no generation with id {generation_id}")
        if row["status"] not in store.ACTIVE:
            raise Conflict("Generation already finished", f"generation {generation_id} is {row['status']}")
        track = self._by_generation.get(generation_id)
        if track is not None:
            track.done = True  # its interrupt must not be reported as a failure
        reason = f"cancelled by {actor}"
        server = await servers_store.get(self.db, row["server_id"]) if row["server_id"] is not None else None
        prompt_id = row["queue_id"]
        if is_ready(server) and prompt_id:
            client = track.client if track is not None else self.pool.client(server["id"], server["comfy_url"])
            try:
                await self._stop_prompt(client, prompt_id)
            except ComfyError as exc:
                reason += f" (ComfyUI could not be told: {exc})"
                log.warning("cancel could not reach ComfyUI generation_id=%d error=%s", generation_id, exc)
        if track is not None:
            changed = await self._finalize(track, GenerationStatus.CANCELLED, reason)
        else:
            changed = await self._finalize_row(generation_id, row["server_id"], GenerationStatus.CANCELLED, reason)
        generation = await self.get(generation_id)
        if not changed:  # it ended on its own while we were asking ComfyUI
            raise Conflict("Generation already finished", f"generation {generation_id} is {generation.status}")
        return generation

    @staticmethod
    async def _stop_prompt(client: ComfyClient, prompt_id: str) -> None:
        for _ in range(3):
            state = await client.queue()
            if state.is_running(prompt_id):
                await client.interrupt(prompt_id)  # ComfyUI only interrupts if it is this one
                return
            if state.find(prompt_id) is None:
                return
            await client.delete_from_queue([prompt_id])
            # It may have started between the two calls: look again.

    # -------------------------------------------------------------- the watchers

    def _ensure_watch(self, server_id: int, url: str) -> _Watch:
        watch = self._watches.get(server_id)
        if watch is not None and watch.url == url:
            return watch
        if watch is not None:
            self._drop_watch(server_id)
        client = self.pool.client(server_id, url)
        options = {"reconnect_backoff": (0.2, 5.0), **self.watcher_options}
        watcher = ComfyWatcher(client, on_event=partial(self._on_watch_event, server_id),
                               on_connection_change=partial(self._on_connection, server_id), **options)
        watch = _Watch(server_id, url, client, watcher)
        self._watches[server_id] = watch
        self._watchers.add(watcher)
        for track in self._tracks.values():  # a new address: follow what was running there
            if track.server_id == server_id and not track.done:
                track.client = client
                watcher.track(track.prompt_id)
        self._spawn(self._start_watch(watch), f"watch-start-{server_id}")
        return watch

    async def _start_watch(self, watch: _Watch) -> None:
        await watch.watcher.start()
        if self._watches.get(watch.server_id) is not watch or self._closed:
            await self._stop_watcher(watch.watcher)

    def _drop_watch(self, server_id: int) -> None:
        watch = self._watches.pop(server_id, None)
        if watch is not None:
            self._spawn(self._stop_watcher(watch.watcher), f"watch-stop-{server_id}")

    async def _stop_watcher(self, watcher: ComfyWatcher) -> None:
        await watcher.stop()
        self._watchers.discard(watcher)

    def _on_server_change(self, old, new) -> None:
        # Runs inside the fleet's lock: only schedule here.
        if self._closed:
            return
        server_id = new["id"]
        if is_ready(new):
            self._ensure_watch(server_id, new["comfy_url"])
            return
        self._drop_watch(server_id)
        self._spawn(self._fail_server(server_id, unready_reason(old, new)), f"fail-server-{server_id}")

    async def _fail_server(self, server_id: int, reason: str) -> None:
        for row in await store.active(self.db, server_id):
            track = self._by_generation.get(row["id"])
            if track is not None:
                await self._finalize(track, GenerationStatus.FAILED, reason)
            else:
                await self._finalize_row(row["id"], server_id, GenerationStatus.FAILED, reason)

    def _on_connection(self, server_id: int, connected: bool) -> None:
        if not connected and not self._closed and server_id in self._watches:
            self._spawn(self._check_alive(server_id), f"check-alive-{server_id}")

    async def _check_alive(self, server_id: int) -> None:
        """The websocket dropped: a blip, or the server died. Ask once; if it does not
        answer, the readiness gate checks now rather than at its next interval."""
        watch = self._watches.get(server_id)
        if watch is None:
            return
        if not await watch.client.ping():
            log.warning("ComfyUI lost server_id=%d url=%s", server_id, watch.url)
            self.readiness.suspect(server_id)

    def _on_watch_event(self, server_id: int, event: WatchEvent) -> None:
        # Plain (not async): the watcher's dispatcher calls it for every event of every
        # prompt, and nothing here waits.
        track = self._tracks.get(event.prompt_id)
        if track is None or track.done:
            return
        if isinstance(event, Finished):
            watch = self._watches.get(server_id)
            if event.outcome == "lost" and track.posting and watch is not None:
                watch.watcher.track(track.prompt_id)  # a slow post: look again later
                return
            track.done = True
            self._spawn(self._complete(track, event), f"complete-{track.generation_id}")
            return
        if track.status == GenerationStatus.QUEUED and isinstance(event, Started | Executing | Cached | Progress
                                                                            | Executed):
            track.status = GenerationStatus.PROCESSING
            # Not awaited: the dispatcher of this server's events never waits on the database.
            # (Writes take the store's FIFO lock in order, so the final write still comes last.)
            self._spawn(store.mark_processing(self.db, track.generation_id, now_iso()))
            log.info("generation processing generation_id=%d server_id=%d", track.generation_id, server_id)
            self._emit_progress(track)
        if isinstance(event, Progress) and event.max > 0:
            track.step, track.steps = event.value, event.max
            track.progress = max(track.progress, min(99, event.value * 100 // event.max))
            self._progress(track)

    # ------------------------------------------------------------------ progress

    def _emit_progress(self, track: _Track, status: str | None = None, progress: int | None = None) -> None:
        track.last_emit = time.monotonic()
        value = track.progress if progress is None else progress
        track.emitted = (value, track.step)
        self.bus.publish(GENERATION_PROGRESS, progress_data(track.generation_id, value, status or track.status,
                                                            track.server_id, track.step, track.steps))

    def _progress(self, track: _Track) -> None:
        """Throttled: at most one event per ``progress_interval``; the last value of a
        burst follows when the interval is over."""
        if track.done:
            return
        if track.emitted == (track.progress, track.step):
            return
        wait = track.last_emit + self.progress_interval - time.monotonic()
        if wait <= 0:
            if track.flush is not None:
                track.flush.cancel()
                track.flush = None
            self._emit_progress(track)
            self._spawn(store.set_progress(self.db, track.generation_id, track.progress, track.step, track.steps))
        elif track.flush is None:
            track.flush = asyncio.get_running_loop().call_later(wait, self._flush, track)

    def _flush(self, track: _Track) -> None:
        track.flush = None
        if not track.done and not self._closed:
            self._progress(track)

    # ------------------------------------------------------------------ finishing

    async def _complete(self, track: _Track, event: Finished, entry: dict[str, Any] | None = None) -> None:
        if event.outcome == "success":
            timing = None
            if track.resumed:  # its start happened while we were away: ComfyUI's own clock knows better
                if entry is None:
                    with contextlib.suppress(ComfyError):
                        entry = await track.client.history(track.prompt_id)
                timing = comfy_timing(entry)
            try:
                images = await self._collect(track.client, track.prompt_id, event.outputs)
            except (ComfyError, ImageRejected, OSError) as exc:
                log.warning("image collection failed generation_id=%d error=%s", track.generation_id, exc)
                await self._finalize(track, GenerationStatus.FAILED, f"could not collect the images: {exc}")
                return
            if not images:
                await self._finalize(track, GenerationStatus.FAILED, "ComfyUI finished but produced no image")
                return
            await self._finalize(track, GenerationStatus.COMPLETED, None, images, timing=timing)
        elif event.outcome == "error":
            await self._finalize(track, GenerationStatus.FAILED, describe_error(event.error))
        elif event.outcome == "interrupted":
            await self._finalize(track, GenerationStatus.FAILED, "interrupted on the ComfyUI server")
        else:
            await self._finalize(track, GenerationStatus.FAILED, LOST_LIVE)

    async def _collect(self, client: ComfyClient, prompt_id: str,
                       outputs: dict[str, Any] | None) -> list[StoredImage]:
        files = [f for f in iter_output_files(outputs or {}) if is_image_output(f)]
        if not files:
            entry = await client.history(prompt_id)
            files = [f for f in iter_output_files((entry or {}).get("outputs") or {}) if is_image_output(f)]
        chosen = [f for f in files if f.type == "output"] or files  # previews only when nothing was saved
        if len(chosen) == 1:  # the usual case: no task to gather
            return [await self.images.download(client, chosen[0])]
        return list(await asyncio.gather(*(self.images.download(client, f) for f in chosen)))

    async def _finalize(self, track: _Track, status: GenerationStatus, error: str | None,
                        images: Sequence[StoredImage] = (), timing: tuple[int, int] | None = None) -> bool:
        track.done = True
        if track.flush is not None:
            track.flush.cancel()
            track.flush = None
        self._tracks.pop(track.prompt_id, None)
        if self._by_generation.get(track.generation_id) is track:
            del self._by_generation[track.generation_id]
        watch = self._watches.get(track.server_id)
        if watch is not None:
            watch.watcher.untrack(track.prompt_id)
        return await self._finalize_row(track.generation_id, track.server_id, status, error, images,
                                        progress=track.progress, step=track.step, steps=track.steps, timing=timing,
                                        created_at=track.created_at, direct=track.direct)

    async def _finalize_row(self, generation_id: int, server_id: int | None, status: GenerationStatus,
                            error: str | None, images: Sequence[StoredImage] = (),
                            *, progress: int | None = None, step: int | None = None,
                            steps: int | None = None, timing: tuple[int, int] | None = None,
                            created_at: str | None = None, direct: bool = False) -> bool:
        if status == GenerationStatus.FAILED and self._requeue_hook is not None:
            try:
                decision = await self._requeue_hook(generation_id, server_id, error or "failed")
            except Exception:
                log.exception("requeue hook failed generation_id=%d", generation_id)
                decision = False
            if decision is True:
                return False
            if isinstance(decision, str):
                error = decision
        completed, started = timings(timing, created_at)
        result = await store.finish(self.db, generation_id, status=status, completed_at=iso(completed),
                                    error=error, images=[i.as_row() for i in images], timing=started)
        if not result.changed:
            return False
        duration_ms = result.duration_ms
        urls = [i.url for i in images]
        if status == GenerationStatus.COMPLETED and duration_ms is not None and server_id in self._durations:
            self._durations[server_id].append(duration_ms)
        final_progress = 100 if status == GenerationStatus.COMPLETED else (progress or 0)
        if status == GenerationStatus.COMPLETED and steps:
            step = steps  # the last step's progress message may have been throttled away
        self.bus.publish(GENERATION_PROGRESS,
                         progress_data(generation_id, final_progress, status, server_id, step, steps))
        if status == GenerationStatus.COMPLETED:
            # GenerationCompletedData(...).model_dump(mode="json", by_alias=True), built directly
            self.bus.publish(GENERATION_COMPLETED, {
                "generationId": generation_id, "serverId": server_id, "status": "completed", "imageUrls": urls,
                "durationMs": duration_ms})
            log.info("generation completed generation_id=%d server_id=%s images=%d duration_ms=%s",
                     generation_id, server_id, len(urls), duration_ms)
        else:
            self.bus.publish(GENERATION_FAILED, GenerationFailedData(
                generation_id=generation_id, server_id=server_id, status=str(status), error=error or str(status)))
            log.info("generation %s generation_id=%d server_id=%s error=%s", status, generation_id, server_id, error)
        done = FinishedGeneration(generation_id, server_id, status, error, urls, duration_ms, direct,
                                  result.webhook_url, result.principal, result.attempts, result.prompt)
        for fut in self._waiters.get(generation_id, []):
            if not fut.done():
                fut.set_result(done)
        for listener in self._listeners:
            try:
                result = listener(done)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("finish listener failed generation_id=%d", generation_id)
        return True

    # ----------------------------------------------------------------- reconcile

    async def reconcile(self) -> None:
        """Every ``queued``/``processing`` row left by a previous run, against its
        server's ``/queue`` and ``/history``: finished ones collected, running ones
        followed again, lost ones failed with the reason."""
        rows = await store.active(self.db)
        by_server: dict[int | None, list[Any]] = {}
        for row in rows:
            if row["server_id"] is None and row["queue_id"] is None:
                continue  # waiting in the scheduler's queue: never reached a server
            if row["queue_id"] not in self._tracks:
                by_server.setdefault(row["server_id"], []).append(row)
        if by_server:
            log.info("reconciling generations=%d servers=%d", sum(map(len, by_server.values())), len(by_server))
        await asyncio.gather(*(self._reconcile_server(sid, rs) for sid, rs in by_server.items()))

    async def _reconcile_server(self, server_id: int | None, rows: list[Any]) -> None:
        server = await servers_store.get(self.db, server_id) if server_id is not None else None
        if not is_ready(server):
            state = "gone" if server is None else f"{server['status']} with setup {server['setup_status']}"
            for row in rows:
                await self._finalize_row(row["id"], server_id, GenerationStatus.FAILED,
                                         f"lost: the server is {state} after a daemon restart")
            return
        assert server_id is not None
        watch = self._ensure_watch(server_id, server["comfy_url"])
        client = watch.client
        try:
            async with asyncio.timeout(RECONCILE_TIMEOUT):
                queue = await client.queue()
        except (ComfyError, TimeoutError) as exc:
            for row in rows:
                await self._finalize_row(row["id"], server_id, GenerationStatus.FAILED,
                                         f"lost: the server did not answer after a daemon restart: {exc}")
            return
        for row in rows:
            prompt_id = row["queue_id"]
            item = queue.find(prompt_id) if prompt_id else None
            if item is not None:
                track = _Track(row["id"], server_id, prompt_id, client, status=row["status"],
                               progress=row["progress"], step=row["step"], steps=row["steps"], resumed=True,
                               created_at=row["created_at"])
                self._tracks[prompt_id] = track
                self._by_generation[row["id"]] = track
                if queue.is_running(prompt_id) and track.status == GenerationStatus.QUEUED:
                    track.status = GenerationStatus.PROCESSING
                    await store.mark_processing(self.db, row["id"], now_iso())
                    self._emit_progress(track)
                if self._watches.get(server_id) is watch:
                    watch.watcher.track(prompt_id)
                log.info("generation resumed generation_id=%d prompt_id=%s", row["id"], prompt_id)
                continue
            entry = None
            if prompt_id:
                try:
                    async with asyncio.timeout(RECONCILE_TIMEOUT):
                        entry = await client.history(prompt_id)
                except (ComfyError, TimeoutError) as exc:
                    await self._finalize_row(row["id"], server_id, GenerationStatus.FAILED,
                                             f"lost: the server did not answer after a daemon restart: {exc}")
                    continue
            if entry is None:
                await self._finalize_row(row["id"], server_id, GenerationStatus.FAILED, LOST_AFTER_RESTART)
                continue
            outcome, error = outcome_from_history(entry)
            track = _Track(row["id"], server_id, prompt_id, client, status=row["status"], progress=row["progress"],
                           step=row["step"], steps=row["steps"], done=True, resumed=True,
                           created_at=row["created_at"])
            outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
            await self._complete(track, Finished(prompt_id, outcome, error, outputs, "recovery"), entry)


def to_wire(row, images: list[Any]) -> Generation:
    try:
        parameters = orjson.loads(row["parameters"] or "{}")
    except orjson.JSONDecodeError:
        parameters = {}
    wire_images = []
    for index, img in enumerate(images):
        name = str(img["path"]).rsplit("/", 1)[-1]
        sha, _, ext = name.partition(".")
        wire_images.append(GenerationImage(
            index=index, url=image_url(sha, ext), sha256=img["sha256"], size=img["size"],
            content_type=img["content_type"], width=img["width"], height=img["height"], filename=img["filename"],
            node_id=img["node_id"]))
    return Generation(
        id=row["id"], server_id=row["server_id"], workflow_id=row["workflow_id"], prompt=row["prompt"],
        negative_prompt=row["negative_prompt"], status=row["status"], progress=row["progress"], step=row["step"],
        steps=row["steps"], seed=row["seed"], checkpoint=row["checkpoint"],
        parameters=parameters if isinstance(parameters, dict) else {}, queue_id=row["queue_id"], error=row["error"],
        image_urls=[i.url for i in wire_images], images=wire_images, principal=row["principal"],
        created_at=row["created_at"], started_at=row["started_at"], completed_at=row["completed_at"],
        duration_ms=row["duration_ms"])
