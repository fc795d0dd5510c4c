"""Follow one ComfyUI server's websocket and turn it into typed per-prompt events.

One `ComfyWatcher` per ready server. It connects to `/ws?clientId=<client id>` (same
auth headers as the HTTP client), reconnects forever with jittered backoff, and routes
the messages of the prompts you `track()` to `on_event`:

    Started → Cached → (Executing → Progress* → Executed?)* → Finished

`Finished` is emitted exactly once per prompt, with `outcome` "success", "error",
"interrupted" or "lost" (in neither `/queue` nor `/history`: deleted, or the server
restarted). ComfyUI does not replay messages sent while a socket was down, so after
every (re)connect the watcher recovers each tracked prompt from `/queue` and
`/history/{id}`; it also re-checks when the queue shrinks (a deleted prompt gets no
event of its own) and every `recheck_interval` seconds.

Call `track(prompt_id)` *before* `POST /prompt` (the id is chosen client-side), and
`untrack()` if the post fails. A prompt posted through this watcher's client is never
declared lost while its POST is in flight; one tracked but never posted is lost after
`lost_grace` seconds. Events of prompts not tracked yet are kept for
`buffer_ttl` seconds, because ComfyUI can send them before the POST response arrives.
`on_event` and `on_connection_change` may be plain or async callables; they are called
one at a time, in order, from a dispatcher task, so the socket reader never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

from socialsync.daemon.comfy.client import ComfyClient
from socialsync.daemon.comfy.errors import ComfyError

__all__ = [
    "Cached",
    "ComfyWatcher",
    "Executed",
    "Executing",
    "Finished",
    "Outcome",
    "Progress",
    "Started",
    "WatchEvent",
    "outcome_from_history",
]

log = logging.getLogger(__name__)

Outcome = Literal["success", "error", "interrupted", "lost"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    prompt_id: str


@dataclass(frozen=True, slots=True)
class Started(WatchEvent):
    """`execution_start`: the worker took the prompt."""


@dataclass(frozen=True, slots=True)
class Cached(WatchEvent):
    """`execution_cached`: nodes served from ComfyUI's cache (all of them for a re-submission)."""

    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Executing(WatchEvent):
    node: str


@dataclass(frozen=True, slots=True)
class Progress(WatchEvent):
    node: str | None
    value: int
    max: int


@dataclass(frozen=True, slots=True)
class Executed(WatchEvent):
    """An output node finished; `output` is its UI dict (`{"images": [{filename, subfolder, type}]}`)."""

    node: str
    output: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Finished(WatchEvent):
    """The prompt is over. `error` is the `execution_error`/`execution_interrupted` data;
    `outputs` is the history `outputs` dict (None when lost). `source` says how we learnt
    it: "ws" (live messages), "history" (fetched after a gap) or "recovery"."""

    outcome: Outcome
    error: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    source: str = "ws"

    @property
    def ok(self) -> bool:
        return self.outcome == "success"


def outcome_from_history(entry: dict[str, Any]) -> tuple[Outcome, dict[str, Any] | None]:
    """Success, error or interrupted from a history entry: decided by the LAST status
    message, because an interrupt also has `status_str: "error"`."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    last = messages[-1] if messages else None
    name = last[0] if isinstance(last, list | tuple) and last else None
    data = last[1] if isinstance(last, list | tuple) and len(last) > 1 and isinstance(last[1], dict) else None
    if name == "execution_success":
        return "success", None
    if name == "execution_interrupted":
        return "interrupted", data
    if name == "execution_error":
        return "error", data
    if status.get("status_str") == "success" or status.get("completed") is True:
        return "success", None
    return "error", data


@dataclass
class _PromptState:
    outcome: Outcome | None = None
    error: dict[str, Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # saw execution_start on the current connection: outputs are all there
    seen: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class _ConnectionChange:
    connected: bool


_FINISHED_MEMORY = 4096
_BUFFER_PER_PROMPT = 2000
_STATUS_RECHECK_DELAY = 0.3


class ComfyWatcher:
    """Websocket follower of one server; see the module docstring."""

    def __init__(
        self,
        client: ComfyClient,
        *,
        on_event: Callable[[WatchEvent], Awaitable[None] | None],
        reconnect_backoff: tuple[float, float] = (0.2, 5.0),
        on_connection_change: Callable[[bool], Awaitable[None] | None] | None = None,
        heartbeat: float | None = 20.0,
        buffer_ttl: float = 30.0,
        lost_grace: float = 10.0,
        recheck_interval: float | None = 60.0,
    ) -> None:
        self._client = client
        self._on_event = on_event
        self._on_connection_change = on_connection_change
        self._backoff = reconnect_backoff
        self._heartbeat = heartbeat
        self._buffer_ttl = buffer_ttl
        self._lost_grace = lost_grace
        self._recheck_interval = recheck_interval

        self._tracked: dict[str, float] = {}  # prompt id -> monotonic time of track()
        self._states: dict[str, _PromptState] = {}
        self._buffer: dict[str, list[tuple[float, WatchEvent]]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._outbox: asyncio.Queue[WatchEvent | _ConnectionChange] = asyncio.Queue()
        self._connected = False
        self._connected_event = asyncio.Event()
        self._current: str | None = None  # the prompt the server is running, when we know it
        self._orphan_node: str | None = None  # `executing` without prompt_id, sent on reconnect
        self._last_queue_remaining: int | None = None
        self._last_prune = 0.0
        self._binary_frames = 0

        self._run_task: asyncio.Task[None] | None = None
        self._dispatch_task: asyncio.Task[None] | None = None
        self._maintenance_task: asyncio.Task[None] | None = None
        self._recover_task: asyncio.Task[None] | None = None
        self._recover_handle: asyncio.TimerHandle | None = None
        self._recover_when = 0.0
        self._recover_again = False
        self._background: set[asyncio.Task[None]] = set()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = False

    # ---------------------------------------------------------------- public

    @property
    def client(self) -> ComfyClient:
        return self._client

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def tracked(self) -> frozenset[str]:
        return frozenset(self._tracked)

    @property
    def binary_frames_ignored(self) -> int:
        return self._binary_frames

    async def start(self) -> None:
        if self._run_task is not None:
            return
        self._stopping = False
        self._dispatch_task = asyncio.create_task(self._dispatch(), name="comfy-watcher-dispatch")
        self._run_task = asyncio.create_task(self._run(), name=f"comfy-watcher {self._client.base_url}")
        if self._recheck_interval:
            self._maintenance_task = asyncio.create_task(self._maintenance(), name="comfy-watcher-maintenance")

    async def stop(self) -> None:
        """Cancel every task, close the socket; pending deliveries are dropped."""
        self._stopping = True
        if self._recover_handle is not None:
            self._recover_handle.cancel()
            self._recover_handle = None
        tasks = [
            t
            for t in (self._run_task, self._maintenance_task, self._recover_task, self._dispatch_task, *self._background)
            if t is not None
        ]
        me = asyncio.current_task()  # stop() may be called from inside a callback
        for task in tasks:
            if task is not me:
                task.cancel()
        for task in tasks:
            if task is not me:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._run_task = self._maintenance_task = self._recover_task = self._dispatch_task = None
        self._background.clear()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        self._connected = False
        self._connected_event.clear()

    async def __aenter__(self) -> ComfyWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._connected_event.wait()
        except TimeoutError:
            return False
        return True

    def track(self, prompt_id: str) -> None:
        """Route this prompt's events to `on_event` (buffered ones are delivered now)."""
        if prompt_id in self._tracked:
            return
        now = time.monotonic()
        buffered = [ev for ts, ev in self._buffer.pop(prompt_id, []) if ts >= now - self._buffer_ttl]
        self._tracked[prompt_id] = now
        for ev in buffered:
            self._outbox.put_nowait(ev)
            if isinstance(ev, Finished):
                self._tracked.pop(prompt_id, None)
                return
        if prompt_id in self._finished:
            # It finished so long ago that its events expired: learn it again from history.
            del self._finished[prompt_id]
            self._schedule_recover(0)
        elif self._connected:
            # Catches prompts that finished before being tracked, or were never queued.
            self._schedule_recover(self._lost_grace + 0.05)

    def untrack(self, prompt_id: str) -> None:
        self._tracked.pop(prompt_id, None)
        self._buffer.pop(prompt_id, None)
        self._states.pop(prompt_id, None)

    async def recover(self) -> None:
        """Check every tracked prompt against `/queue` and `/history` now."""
        await self._recover_once()

    # ------------------------------------------------------------ connection

    async def _run(self) -> None:
        delay = self._backoff[0]
        failures = 0
        while True:
            try:
                await self._connect_and_read()
                failures = 0
                delay = self._backoff[0]
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "comfy websocket failed url=%s: %s: %s", self._client.base_url, type(exc).__name__, exc)
            finally:
                self._ws = None
                if self._connected:
                    self._set_connected(False)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(self._backoff[1], delay * 2)

    async def _connect_and_read(self) -> None:
        session = self._client.session
        async with asyncio.timeout(self._client.timeout):
            ws = await session.ws_connect(
                self._client.ws_url(),
                headers=self._client.headers,
                heartbeat=self._heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                max_msg_size=64 * 1024 * 1024,
            )
        self._ws = ws
        try:
            self._set_connected(True)
            self._schedule_recover(0)
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._binary_frames += 1  # preview images: not ours to decode
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    log.info("comfy websocket error url=%s: %r", self._client.base_url, ws.exception())
                    return
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    log.info("comfy websocket closed url=%s code=%s", self._client.base_url, ws.close_code)
                    return
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        if connected:
            self._connected_event.set()
        else:
            self._connected_event.clear()
            # Messages are lost while disconnected: what we collected is no longer complete.
            for st in self._states.values():
                st.complete = False
            self._current = None
            self._orphan_node = None
            self._last_queue_remaining = None
        self._outbox.put_nowait(_ConnectionChange(connected))

    # -------------------------------------------------------------- messages

    def _on_text(self, raw: str) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:
                msg = json.loads(raw)
            except ValueError:
                log.debug("non-JSON websocket text ignored: %.80r", raw)
                return
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        data = msg.get("data")
        if not isinstance(kind, str) or not isinstance(data, dict):
            return
        pid = data.get("prompt_id") if isinstance(data.get("prompt_id"), str) else None
        node = data.get("node")
        node = str(node) if node is not None else None

        if kind == "status":
            self._on_status(data)
        elif kind == "execution_start" and pid:
            self._current = pid
            st = self._state(pid)
            st.complete = True
            st.outputs = {}
            self._emit(Started(pid))
        elif kind == "execution_cached" and pid:
            nodes = data.get("nodes")
            self._emit(Cached(pid, tuple(str(n) for n in nodes) if isinstance(nodes, list) else ()))
        elif kind == "executing":
            if pid is None:
                if node is not None:  # sent on reconnect while our prompt runs: no prompt_id
                    if self._current is not None:
                        self._emit(Executing(self._current, node))
                    else:
                        self._orphan_node = node
            elif node is None:
                self._done(pid)
            else:
                self._current = pid
                self._emit(Executing(pid, node))
        elif kind == "progress":
            pid = pid or self._current
            if pid:
                self._emit(Progress(pid, node, _int(data.get("value")), _int(data.get("max"))))
        elif kind == "executed" and pid and node is not None:
            output = data.get("output") if isinstance(data.get("output"), dict) else None
            if output is not None:
                self._state(pid).outputs[node] = output
            self._emit(Executed(pid, node, output))
        elif kind == "execution_success" and pid:
            self._state(pid).outcome = "success"
        elif kind in ("execution_error", "execution_interrupted") and pid:
            st = self._state(pid)
            st.outcome = "error" if kind == "execution_error" else "interrupted"
            st.error = data
        # progress_state, feature_flags, logs, cm-queue-status ...: not needed

    def _on_status(self, data: dict[str, Any]) -> None:
        status = data.get("status")
        remaining = None
        if isinstance(status, dict) and isinstance(status.get("exec_info"), dict):
            remaining = status["exec_info"].get("queue_remaining")
        if not isinstance(remaining, int):
            return
        previous, self._last_queue_remaining = self._last_queue_remaining, remaining
        if previous is not None and remaining < previous and self._tracked:
            # Something left the queue: a finish (its events follow) or a deletion (no event at all).
            self._schedule_recover(_STATUS_RECHECK_DELAY)

    def _state(self, prompt_id: str) -> _PromptState:
        st = self._states.get(prompt_id)
        if st is None:
            st = self._states[prompt_id] = _PromptState()
        st.seen = time.monotonic()
        return st

    def _done(self, prompt_id: str) -> None:
        """`executing {node: null, prompt_id}`: the prompt is over."""
        if self._current == prompt_id:
            self._current = None
        if prompt_id in self._finished:
            return
        st = self._states.get(prompt_id)
        if st is not None and st.outcome is not None and st.complete:
            self._finish(prompt_id, st.outcome, st.error, dict(st.outputs), "ws")
        else:
            self._spawn(self._finish_from_history(prompt_id))

    async def _finish_from_history(self, prompt_id: str) -> None:
        try:
            entry = await self._client.history(prompt_id)
        except ComfyError as exc:
            log.info("history fetch failed prompt_id=%s: %s", prompt_id, exc)
            self._schedule_recover(1.0)
            return
        if prompt_id in self._finished:
            return
        if entry is not None:
            self._finish_entry(prompt_id, entry, "history")
            return
        st = self._states.get(prompt_id)
        if st is not None and st.outcome is not None:
            self._finish(prompt_id, st.outcome, st.error, dict(st.outputs), "ws")
        else:
            self._finish(prompt_id, "lost", None, None, "history")

    def _finish_entry(self, prompt_id: str, entry: dict[str, Any], source: str) -> None:
        outcome, error = outcome_from_history(entry)
        outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
        self._finish(prompt_id, outcome, error, outputs, source)

    def _finish(
        self, prompt_id: str, outcome: Outcome, error: dict[str, Any] | None, outputs: dict[str, Any] | None, source: str
    ) -> None:
        if prompt_id in self._finished:
            return
        self._finished[prompt_id] = None
        while len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)
        self._states.pop(prompt_id, None)
        self._emit(Finished(prompt_id, outcome, error, outputs, source))

    def _emit(self, event: WatchEvent) -> None:
        pid = event.prompt_id
        if pid in self._finished and not isinstance(event, Finished):
            return
        if pid in self._tracked:
            self._outbox.put_nowait(event)
            if isinstance(event, Finished):
                self._tracked.pop(pid, None)
            return
        now = time.monotonic()
        buf = self._buffer.setdefault(pid, [])
        buf.append((now, event))
        if len(buf) > _BUFFER_PER_PROMPT:
            del buf[0]
        if now - self._last_prune > 1.0:
            self._prune(now)

    def _prune(self, now: float) -> None:
        self._last_prune = now
        horizon = now - self._buffer_ttl
        for pid in list(self._buffer):
            kept = [(ts, ev) for ts, ev in self._buffer[pid] if ts >= horizon]
            if kept:
                self._buffer[pid] = kept
            else:
                del self._buffer[pid]
        for pid in list(self._states):
            if pid not in self._tracked and pid not in self._buffer and self._states[pid].seen < horizon:
                del self._states[pid]

    # -------------------------------------------------------------- recovery

    def _schedule_recover(self, delay: float) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if self._recover_handle is not None:
            if self._recover_when <= when:
                return
            self._recover_handle.cancel()
            self._recover_handle = None
        if delay <= 0:
            self._kick_recover()
            return
        self._recover_when = when
        self._recover_handle = loop.call_at(when, self._kick_recover)

    def _kick_recover(self) -> None:
        self._recover_handle = None
        if self._stopping:
            return
        if self._recover_task is not None and not self._recover_task.done():
            self._recover_again = True
            return
        self._recover_task = asyncio.create_task(self._recover_loop(), name="comfy-watcher-recover")

    async def _recover_loop(self) -> None:
        while True:
            self._recover_again = False
            try:
                await self._recover_once()
            except ComfyError as exc:
                log.info("comfy recovery failed url=%s: %s", self._client.base_url, exc)
                if self._connected:
                    self._schedule_recover(min(2.0, self._backoff[1]))
            except Exception:
                log.exception("comfy recovery crashed url=%s", self._client.base_url)
            if not self._recover_again:
                return

    async def _recover_once(self) -> None:
        pending = [pid for pid in self._tracked if pid not in self._finished]
        if not pending:
            return
        snapshot_at = time.monotonic()
        state = await self._client.queue()  # queue first: a prompt moves queue → history atomically
        for pid in pending:
            if pid not in self._tracked or pid in self._finished:
                continue
            if state.find(pid) is not None:
                if state.is_running(pid) and self._connected:
                    self._current = pid
                    if self._orphan_node is not None:
                        node, self._orphan_node = self._orphan_node, None
                        self._emit(Executing(pid, node))
                continue
            entry = await self._client.history(pid)
            if pid not in self._tracked or pid in self._finished:
                continue
            if entry is not None:
                self._finish_entry(pid, entry, "history")
                continue
            posted = self._client.post_activity(pid)
            if posted is not None:
                # Posted through our client: gone for sure only if no POST was in flight
                # when the /queue snapshot was taken (else it may just not be queued yet).
                if posted < snapshot_at:
                    log.info("prompt neither queued nor in history: lost prompt_id=%s", pid)
                    self._finish(pid, "lost", None, None, "recovery")
                else:
                    self._schedule_recover(0.2)
                continue
            age = time.monotonic() - self._tracked[pid]
            if age >= self._lost_grace:
                log.info("prompt neither queued nor in history: lost prompt_id=%s", pid)
                self._finish(pid, "lost", None, None, "recovery")
            else:
                self._schedule_recover(self._lost_grace - age + 0.05)

    async def _maintenance(self) -> None:
        assert self._recheck_interval
        while True:
            await asyncio.sleep(self._recheck_interval)
            self._prune(time.monotonic())
            if self._connected and self._tracked:
                self._schedule_recover(0)

    # ------------------------------------------------------------- delivery

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _dispatch(self) -> None:
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, _ConnectionChange):
                    result = self._on_connection_change(item.connected) if self._on_connection_change else None
                else:
                    result = self._on_event(item)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("comfy watcher callback failed url=%s item=%r", self._client.base_url, item)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
