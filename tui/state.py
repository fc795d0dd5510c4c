"""The console's live picture of the daemon, built from the snapshot and the event stream.

``LiveState`` holds the servers, the generations, a bounded tail of events, and what
the connection is doing. Events change it at whatever rate they come; what changed is
collected in sets (keyed by server or generation id, so ten updates of one thing are
one change) and handed to the screens a few times a second as one ``Changed`` message
per screen. ``Changed.can_replace`` merges a pending message into the next one, so a
screen that is busy never has a queue of them behind each other.

Uptime and cost so far come from ``/api/server-analytics`` (running seconds and cost as
of its ``until``) and are carried forward with the local clock from the status each
server is in: the daemon's figures at the last fetch plus price × elapsed time.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from textual.message import Message
from textual.message_pump import MessagePump

from socialsync.common.events import (
    AUDIT,
    GENERATION_COMPLETED,
    GENERATION_FAILED,
    GENERATION_PROGRESS,
    LOG,
    MODEL_DOWNLOAD,
    SERVER_STATUS,
    ActiveGeneration,
    Envelope,
)
from socialsync.common.servers import Server
from socialsync.tui.format import epoch, money, to_decimal

ACTIVE = ("queued", "processing")
RECENT_LIMIT = 200
LOG_LIMIT = 5000
SECONDS_PER_HOUR = Decimal(3600)


# -- the connection ---------------------------------------------------------------------


ConnState = Literal["connecting", "live", "down", "resyncing", "refused"]


@dataclass(frozen=True)
class Connection:
    """What the event stream is doing. ``as_of``: when the data shown was last known to
    be current (None while live)."""

    state: ConnState = "connecting"
    transport: str | None = None
    reason: str = ""
    down_since: float | None = None
    retry_in: float = 0.0
    attempt: int = 0
    last_seq: int | None = None
    as_of: float | None = None
    #: When the next try starts (``time.monotonic()``), so the banner can count down to
    #: it and then say a try is under way rather than a stale "in N s".
    retry_at: float | None = None

    @property
    def live(self) -> bool:
        return self.state == "live"

    @property
    def stale(self) -> bool:
        """The data on screen may be out of date (a first connection is not stale: it is empty)."""
        return self.state in ("down", "resyncing", "refused") and self.as_of is not None


# -- servers and generations ----------------------------------------------------------


@dataclass
class Usage:
    """Running seconds and cost of one server at ``at`` (epoch s), while in ``status``."""

    running_s: float
    cost: Decimal
    at: float
    status: str
    price: Decimal | None = None
    disk_price: Decimal | None = None

    def hourly(self, status: str) -> Decimal:
        if status == "running":
            return self.price or Decimal(0)
        if status == "destroyed":
            return Decimal(0)
        return self.disk_price or Decimal(0)

    def at_time(self, now: float) -> tuple[float, Decimal]:
        elapsed = max(0.0, now - self.at)
        running = self.running_s + (elapsed if self.status == "running" else 0.0)
        cost = self.cost + self.hourly(self.status) * Decimal(repr(elapsed)) / SECONDS_PER_HOUR
        return running, cost

    def moved_to(self, status: str, when: float) -> Usage:
        if when < self.at:
            return replace(self, status=status)
        running, cost = self.at_time(when)
        return replace(self, running_s=running, cost=cost, at=when, status=status)


@dataclass
class GenerationLive:
    id: int
    server_id: int | None
    status: str
    progress: int = 0
    prompt: str | None = None
    step: int | None = None
    steps: int | None = None
    created_at: str | None = None
    finished_at: float | None = None
    duration_ms: int | None = None
    error: str | None = None
    image_urls: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @classmethod
    def from_api(cls, g: dict[str, Any]) -> GenerationLive:
        return cls(
            id=int(g["id"]), server_id=g.get("serverId"), status=str(g.get("status", "")),
            progress=int(g.get("progress") or 0), prompt=g.get("prompt"), step=g.get("step"),
            steps=g.get("steps"), created_at=g.get("createdAt"), finished_at=epoch(g.get("completedAt")),
            duration_ms=g.get("durationMs"), error=g.get("error"), image_urls=list(g.get("imageUrls") or []),
        )


@dataclass(frozen=True)
class LogLine:
    ts: str
    type: str
    server_id: int | None
    text: str
    level: str = "info"


# -- the change notification ----------------------------------------------------------


class Changed(Message):
    """What changed since the last one, for a screen to redraw just that."""

    def __init__(self, servers: set[int], generations: set[int], logs: list[LogLine], downloads: set[int],
                 resynced: bool, usage: bool = False) -> None:
        super().__init__()
        self.servers = servers
        self.generations = generations
        self.logs = logs
        self.downloads = downloads
        self.resynced = resynced
        #: Uptime and cost figures were fetched again (for every server).
        self.usage = usage

    def can_replace(self, message: Message) -> bool:
        """A pending ``Changed`` (``message``) supersedes this one: fold ours into it."""
        if isinstance(message, Changed):
            message.servers |= self.servers
            message.generations |= self.generations
            message.logs[:0] = self.logs
            message.downloads |= self.downloads
            message.resynced = message.resynced or self.resynced
            message.usage = message.usage or self.usage
            return True
        return False


# -- the state --------------------------------------------------------------------------


class LiveState:
    """Servers, generations, the event tail and the connection; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.time, flush_interval: float = 0.25):
        self.clock = clock
        self.flush_interval = flush_interval
        self.servers: dict[int, Server] = {}
        self.generations: dict[int, GenerationLive] = {}
        self.recent: OrderedDict[int, GenerationLive] = OrderedDict()
        self.usage: dict[int, Usage] = {}
        self.downloads: dict[int, dict[int, dict[str, Any]]] = {}
        self.logs: deque[LogLine] = deque(maxlen=LOG_LIMIT)
        self.connection = Connection()
        self.seq: int | None = None
        self.synced = False
        self.events_applied = 0
        #: Server and generation ids seen in events but not in our state: the app fetches them.
        self.unknown_servers: set[int] = set()
        self.unknown_generations: set[int] = set()
        #: How many status events each server has had (a fetch that raced one is stale).
        self.server_marks: dict[int, int] = {}
        self.stats_wanted = False
        self._listeners: weakref.WeakSet[MessagePump] = weakref.WeakSet()
        self._servers_changed: set[int] = set()
        self._generations_changed: set[int] = set()
        self._downloads_changed: set[int] = set()
        self._new_logs: list[LogLine] = []
        self._resynced = False
        self._usage_changed = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self.on_flush: Callable[[], None] | None = None

    # -- listeners ------------------------------------------------------------------

    def subscribe(self, node: MessagePump) -> None:
        self._listeners.add(node)

    def unsubscribe(self, node: MessagePump) -> None:
        self._listeners.discard(node)

    def _touch(self) -> None:
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._flush_handle = loop.call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Hand what changed to every listener (called by the timer; tests may call it)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not (self._servers_changed or self._generations_changed or self._new_logs
                or self._downloads_changed or self._resynced or self._usage_changed):
            return
        servers, self._servers_changed = self._servers_changed, set()
        gens, self._generations_changed = self._generations_changed, set()
        logs, self._new_logs = self._new_logs, []
        downloads, self._downloads_changed = self._downloads_changed, set()
        resynced, self._resynced = self._resynced, False
        usage, self._usage_changed = self._usage_changed, False
        for node in list(self._listeners):
            if node.is_running:
                node.post_message(Changed(set(servers), set(gens), list(logs), set(downloads), resynced, usage))
        if self.on_flush is not None:
            self.on_flush()

    def mark_servers(self, ids: Iterable[int]) -> None:
        self._servers_changed.update(ids)
        self._touch()

    # -- the snapshot ---------------------------------------------------------------

    def reset(self, servers: Iterable[Server], generations: Iterable[ActiveGeneration], seq: int) -> None:
        """Start again from a snapshot: whatever we had is replaced."""
        old_servers = set(self.servers)
        old_gens = {g for g, v in self.generations.items() if v.active}
        self.servers = {s.id: s for s in servers}
        now = self.clock()
        for sid, usage in list(self.usage.items()):
            if sid not in self.servers:
                del self.usage[sid]
            else:
                self.usage[sid] = usage.moved_to(self.servers[sid].status, now)
        active: dict[int, GenerationLive] = {}
        for g in generations:
            known = self.generations.get(g.id)
            live = GenerationLive(g.id, g.server_id, g.status, g.progress, g.prompt, created_at=g.created_at)
            if known is not None:
                live.step, live.steps = known.step, known.steps
            active[g.id] = live
        # What was active and is no longer: finished while we were away; the recent
        # list is fetched again by the app.
        for gid in old_gens - set(active):
            self.generations.pop(gid, None)
        self.generations.update(active)
        self.seq = seq
        self.synced = True
        self._servers_changed |= old_servers | set(self.servers)
        self._generations_changed |= old_gens | set(active)
        self._resynced = True
        self.stats_wanted = True
        self._touch()

    # -- events -----------------------------------------------------------------------

    def apply(self, env: Envelope) -> None:
        self.seq = env.seq
        self.events_applied += 1
        data = env.data
        kind = env.type
        if kind == SERVER_STATUS:
            self._server_status(data, env.ts)
        elif kind == GENERATION_PROGRESS:
            self._generation_progress(data)
        elif kind in (GENERATION_COMPLETED, GENERATION_FAILED):
            self._generation_finished(kind, data, env.ts)
        elif kind == MODEL_DOWNLOAD:
            self._model_download(data)
        line = describe_event(env)
        if line is not None:
            self.logs.append(line)
            self._new_logs.append(line)
        self._touch()

    def _server_status(self, data: dict[str, Any], ts: str) -> None:
        sid = int(data["serverId"])
        status = str(data.get("status"))
        self.server_marks[sid] = self.server_marks.get(sid, 0) + 1
        server = self.servers.get(sid)
        if server is None:
            if status != "destroyed":
                self.unknown_servers.add(sid)
            return
        when = epoch(ts) or self.clock()
        if status == "destroyed":
            del self.servers[sid]
            self.usage.pop(sid, None)
        else:
            server.status = status  # type: ignore[assignment]  (validated by the daemon)
            server.setup_status = data.get("setupStatus", server.setup_status)
            if "reason" in data:
                server.status_message = data.get("reason")
            usage = self.usage.get(sid)
            if usage is not None:
                self.usage[sid] = usage.moved_to(status, when)
            if server.gpu is None or server.price_per_hour is None:
                # A fresh launch: Vast fills these in as it boots; the events do not carry them.
                self.unknown_servers.add(sid)
        self._servers_changed.add(sid)
        self.stats_wanted = True

    def _generation_progress(self, data: dict[str, Any]) -> None:
        gid = int(data["generationId"])
        g = self.generations.get(gid)
        status = str(data.get("status", "processing"))
        if g is None:
            g = GenerationLive(gid, data.get("serverId"), status)
            self.generations[gid] = g
            self.unknown_generations.add(gid)
            self.stats_wanted = True
        before = g.server_id, g.active
        g.status = status
        g.progress = max(0, min(100, int(data.get("progress", g.progress))))
        if data.get("serverId") is not None:
            g.server_id = data["serverId"]
        if data.get("step") is not None:
            g.step = data["step"]
        if data.get("steps") is not None:
            g.steps = data["steps"]
        self._generations_changed.add(gid)
        if (g.server_id, g.active) != before:
            self._servers_changed.update(s for s in (before[0], g.server_id) if s is not None)

    def _generation_finished(self, kind: str, data: dict[str, Any], ts: str) -> None:
        gid = int(data["generationId"])
        g = self.generations.get(gid)
        if g is None:
            g = GenerationLive(gid, data.get("serverId"), str(data.get("status")))
            self.generations[gid] = g
            self.unknown_generations.add(gid)
        g.status = str(data.get("status", "completed" if kind == GENERATION_COMPLETED else "failed"))
        if kind == GENERATION_COMPLETED:
            g.progress = 100
            g.image_urls = list(data.get("imageUrls") or [])
            g.duration_ms = data.get("durationMs")
        else:
            g.error = data.get("error")
        g.finished_at = epoch(ts) or self.clock()
        self.add_recent([g])
        self._generations_changed.add(gid)
        if g.server_id is not None:
            self._servers_changed.add(g.server_id)
        self.stats_wanted = True

    def _model_download(self, data: dict[str, Any]) -> None:
        sid = int(data["serverId"])
        did = int(data["downloadId"])
        entry = self.downloads.setdefault(sid, {}).setdefault(did, {"id": did, "serverId": sid})
        entry.update(data)
        entry["id"] = did
        self._downloads_changed.add(sid)

    # -- finished generations -------------------------------------------------------

    def add_recent(self, gens: Iterable[GenerationLive]) -> None:
        for g in gens:
            self.recent[g.id] = g
            self.recent.move_to_end(g.id)
            self._generations_changed.add(g.id)
        ordered = sorted(self.recent.values(), key=lambda g: g.id)[-RECENT_LIMIT:]
        self.recent = OrderedDict((g.id, g) for g in ordered)
        self._touch()

    def forget_finished(self, gid: int) -> None:
        """A finished generation leaves the list of active ones (it stays in ``recent``)."""
        g = self.generations.get(gid)
        if g is not None and not g.active:
            del self.generations[gid]

    def learn_generation(self, g: dict[str, Any]) -> None:
        """A generation fetched over HTTP (one we first saw in an event)."""
        gid = int(g["id"])
        self.unknown_generations.discard(gid)
        fetched = GenerationLive.from_api(g)
        live = self.generations.get(gid)
        if live is not None:
            live.prompt = fetched.prompt
            live.created_at = fetched.created_at
            if live.server_id is None:
                live.server_id = fetched.server_id
            if not fetched.active and live.active:
                self.generations[gid] = fetched
        if gid in self.recent or not fetched.active:
            old = self.recent.get(gid)
            if old is not None:
                old.prompt = fetched.prompt
            if not fetched.active:
                self.add_recent([fetched])
        self._generations_changed.add(gid)
        self._touch()

    def learn_server(self, s: Server, *, fresh: bool = True) -> None:
        """A server fetched over HTTP. Not ``fresh``: a status event came while the request
        was out, so the event's status is newer than the answer's."""
        self.unknown_servers.discard(s.id)
        known = self.servers.get(s.id)
        if not fresh and known is not None:
            s.status, s.setup_status, s.status_message = known.status, known.setup_status, known.status_message
        if s.status == "destroyed":
            return
        self.servers[s.id] = s
        usage = self.usage.get(s.id)
        if usage is None:
            created = s.created_at.timestamp()
            self.usage[s.id] = Usage(0.0, Decimal(0), created, s.status, to_decimal(s.price_per_hour))
        elif usage.price is None:
            usage.price = to_decimal(s.price_per_hour)
        self._servers_changed.add(s.id)
        self._touch()

    # -- usage --------------------------------------------------------------------------

    def set_usage(self, analytics: dict[str, Any]) -> None:
        """Take running seconds and cost of every server from ``/api/server-analytics``."""
        until = epoch(analytics.get("until")) or self.clock()
        for fig in analytics.get("servers", []):
            sid = int(fig["serverId"])
            server = self.servers.get(sid)
            status = server.status if server is not None else str(fig.get("status"))
            self.usage[sid] = Usage(
                running_s=float(fig.get("runningSeconds") or 0), cost=to_decimal(fig.get("cost")) or Decimal(0),
                at=until, status=status, price=to_decimal(fig.get("pricePerHour")),
                disk_price=to_decimal(fig.get("diskCostPerHour")),
            )
        self._usage_changed = True
        self._touch()

    def usage_now(self, sid: int) -> tuple[float, Decimal] | None:
        usage = self.usage.get(sid)
        return None if usage is None else usage.at_time(self.clock())

    def running_generations(self, sid: int) -> int:
        return sum(1 for g in self.generations.values() if g.server_id == sid and g.active)

    def active_generations(self) -> list[GenerationLive]:
        return sorted((g for g in self.generations.values() if g.active), key=lambda g: g.id)


# -- the event tail ---------------------------------------------------------------------


def describe_event(env: Envelope) -> LogLine | None:
    """One readable line per event (progress is too chatty for the log: only its start)."""
    d = env.data
    sid = d.get("serverId")
    kind = env.type
    if kind == SERVER_STATUS:
        reason = f" — {d['reason']}" if d.get("reason") else ""
        level = "error" if d.get("status") in ("error", "offline") or d.get("setupStatus") == "failed" else "info"
        return LogLine(env.ts, kind, sid, f"server #{sid} {d.get('status')}/{d.get('setupStatus')}{reason}", level)
    if kind == GENERATION_PROGRESS:
        if d.get("progress", 0) == 0 and d.get("status") in ACTIVE:
            return LogLine(env.ts, kind, sid, f"generation #{d.get('generationId')} {d.get('status')}")
        return None
    if kind == GENERATION_COMPLETED:
        n = len(d.get("imageUrls") or [])
        took = f" in {d['durationMs'] / 1000:.1f}s" if d.get("durationMs") is not None else ""
        return LogLine(env.ts, kind, sid, f"generation #{d.get('generationId')} completed{took}, {n} image(s)")
    if kind == GENERATION_FAILED:
        return LogLine(env.ts, kind, sid, f"generation #{d.get('generationId')} {d.get('status')}: {d.get('error')}",
                       "error")
    if kind == MODEL_DOWNLOAD:
        status = d.get("status")
        if status in ("running",) and d.get("bytesDone"):
            return None  # progress of a running download: shown on the server's screen
        err = f": {d['error']}" if d.get("error") else ""
        return LogLine(env.ts, kind, sid, f"model {d.get('folder')}/{d.get('filename')} {status}{err}",
                       "error" if status == "failed" else "info")
    if kind == AUDIT:
        return audit_line(d)
    if kind == LOG:
        return LogLine(env.ts, kind, sid, str(d.get("message", "")), str(d.get("level", "info")).lower())
    if kind == "cost_action":
        return LogLine(env.ts, kind, sid, f"cost control: {d.get('action')} ({d.get('rule')}) {d.get('reason', '')}",
                       "warning")
    return LogLine(env.ts, kind, sid, _compact(d))


def audit_line(d: dict[str, Any]) -> LogLine:
    sid = None
    if d.get("targetType") == "server" and d.get("targetId") is not None:
        try:
            sid = int(d["targetId"])
        except (TypeError, ValueError):
            sid = None
    elif isinstance(d.get("details"), dict) and isinstance(d["details"].get("serverId"), int):
        sid = d["details"]["serverId"]
    target = f" {d.get('targetType')} #{d.get('targetId')}" if d.get("targetId") is not None else ""
    outcome = d.get("outcome", "success")
    level = "info" if outcome == "success" else "warning"
    return LogLine(str(d.get("at", "")), AUDIT, sid, f"{d.get('actor')} {d.get('action')}{target} → {outcome}", level)


def _compact(d: dict[str, Any]) -> str:
    parts = []
    for k, v in list(d.items())[:6]:
        if isinstance(v, str) and k.lower().endswith(("cost", "price")):
            v = money(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)
