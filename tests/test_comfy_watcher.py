"""ComfyWatcher against the ComfyUI simulator: live events, gaps, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fleet_helpers import wait_for

from socialsync.daemon.comfy import (
    Cached,
    ComfyClient,
    ComfyWatcher,
    Executed,
    Executing,
    Finished,
    Progress,
    Started,
    WatchEvent,
    outcome_from_history,
)
from socialsync.daemon.sim.comfyui import ComfySim, txt2img_graph


class Collector:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.connections: list[bool] = []

    def __call__(self, event: WatchEvent) -> None:
        self.events.append(event)

    def of(self, prompt_id: str) -> list[WatchEvent]:
        return [e for e in self.events if e.prompt_id == prompt_id]

    def finished(self, prompt_id: str) -> list[Finished]:
        return [e for e in self.of(prompt_id) if isinstance(e, Finished)]

    async def wait_finished(self, prompt_id: str, timeout: float = 5.0) -> Finished:
        await until(lambda: self.finished(prompt_id), timeout)
        return self.finished(prompt_id)[0]


def until(predicate, timeout: float = 5.0):
    """``wait_for`` at a ComfyUI simulator's pace."""
    return wait_for(predicate, timeout, interval=0.005)


@pytest.fixture
def client(sim: ComfySim, session: aiohttp.ClientSession) -> ComfyClient:
    return ComfyClient(sim.base_url, session=session, client_id="daemon", timeout=5, retry_wait=(0.01, 0.05))


def make_watcher(client: ComfyClient, col: Collector, **kw: Any) -> ComfyWatcher:
    options: dict[str, Any] = {"reconnect_backoff": (0.02, 0.1), "lost_grace": 0.2, "recheck_interval": None}
    options.update(kw)
    return ComfyWatcher(client, on_event=col, on_connection_change=col.connections.append, **options)


@pytest.fixture
async def watched(client: ComfyClient) -> AsyncIterator[tuple[ComfyWatcher, Collector]]:
    col = Collector()
    watcher = make_watcher(client, col)
    await watcher.start()
    assert await watcher.wait_connected(3)
    yield watcher, col
    await watcher.stop()


async def submit(watcher: ComfyWatcher, client: ComfyClient, graph: dict[str, Any]) -> str:
    """The daemon's pattern: choose the id, track it, then post."""
    prompt_id = f"p-{time.monotonic_ns()}"
    watcher.track(prompt_id)
    await client.queue_prompt(graph, prompt_id=prompt_id)
    return prompt_id


async def test_full_sequence(watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim) -> None:
    watcher, col = watched
    pid = await submit(watcher, client, txt2img_graph(steps=3))
    done = await col.wait_finished(pid)
    assert [type(e).__name__ for e in col.of(pid)] == (
        ["Started", "Cached"] + ["Executing"] * 5 + ["Progress"] * 3 + ["Executing", "Executing", "Executed", "Finished"]
    )
    assert col.of(pid)[1] == Cached(pid, ())
    assert [e.node for e in col.of(pid) if isinstance(e, Executing)] == ["4", "5", "7", "6", "3", "8", "9"]
    assert [(e.node, e.value, e.max) for e in col.of(pid) if isinstance(e, Progress)] == [("3", 1, 3), ("3", 2, 3), ("3", 3, 3)]
    executed = next(e for e in col.of(pid) if isinstance(e, Executed))
    assert executed.output == {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}
    assert (done.outcome, done.source, done.error, done.ok) == ("success", "ws", None, True)
    assert done.outputs == sim.history[pid]["outputs"]
    assert pid not in watcher.tracked
    await watcher.recover()  # a late recovery must not produce a second Finished
    await asyncio.sleep(0.05)
    assert len(col.finished(pid)) == 1
    assert col.connections == [True] and watcher.connected


async def test_cached_resubmission_is_reported(watched: tuple[ComfyWatcher, Collector], client: ComfyClient) -> None:
    watcher, col = watched
    first = await submit(watcher, client, txt2img_graph(steps=2))
    await col.wait_finished(first)
    second = await submit(watcher, client, txt2img_graph(steps=2))
    done = await col.wait_finished(second)
    assert [type(e) for e in col.of(second)] == [Started, Cached, Executed, Finished]
    assert col.of(second)[1] == Cached(second, ("4", "5", "6", "7", "3", "8", "9"))
    assert done.outputs == col.finished(first)[0].outputs


async def test_async_callbacks(client: ComfyClient) -> None:
    seen: list[WatchEvent] = []
    changes: list[bool] = []

    async def on_event(event: WatchEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event)

    async def on_change(connected: bool) -> None:
        changes.append(connected)

    async with ComfyWatcher(client, on_event=on_event, on_connection_change=on_change, recheck_interval=None) as watcher:
        assert await watcher.wait_connected(3)
        pid = await submit(watcher, client, txt2img_graph(steps=1))
        await until(lambda: any(isinstance(e, Finished) for e in seen))
    assert seen[0] == Started(pid) and changes == [True]


async def test_dropped_websocket_learns_the_end_from_history(
    watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim
) -> None:
    watcher, col = watched
    sim.step_time = 0.01
    pid = await submit(watcher, client, txt2img_graph(steps=30))
    await until(lambda: any(isinstance(e, Progress) for e in col.of(pid)))
    sim.accept_websockets = False  # the socket stays down while the prompt finishes
    assert await sim.drop_websockets() == 1
    await until(lambda: not watcher.connected)
    await until(lambda: pid in sim.history)
    assert not col.finished(pid)
    sim.accept_websockets = True
    done = await col.wait_finished(pid)
    assert (done.outcome, done.source) == ("success", "history")
    assert done.outputs == sim.history[pid]["outputs"] and done.outputs
    assert col.connections == [True, False, True]


async def test_quick_reconnect_mid_run(watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim) -> None:
    watcher, col = watched
    sim.step_time = 0.01
    pid = await submit(watcher, client, txt2img_graph(steps=40))
    await until(lambda: any(isinstance(e, Progress) for e in col.of(pid)))
    await sim.drop_websockets()
    done = await col.wait_finished(pid)
    assert done.outcome == "success" and done.outputs == sim.history[pid]["outputs"]
    # after the reconnect the server's `executing` without prompt_id was attributed to our prompt
    progress_after = [e for e in col.of(pid) if isinstance(e, Progress)]
    assert progress_after[-1].value == 40
    await asyncio.sleep(0.05)
    assert len(col.finished(pid)) == 1


async def test_prompt_deleted_while_disconnected_is_lost(
    watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim
) -> None:
    watcher, col = watched
    sim.step_time = 0.01
    running = await submit(watcher, client, txt2img_graph(steps=1000, seed=1))
    doomed = await submit(watcher, client, txt2img_graph(seed=2))
    await until(lambda: any(isinstance(e, Progress) for e in col.of(running)))
    sim.accept_websockets = False
    await sim.drop_websockets()
    await until(lambda: not watcher.connected)
    await client.delete_from_queue([doomed])
    await asyncio.sleep(0.25)  # past lost_grace
    sim.accept_websockets = True
    lost = await col.wait_finished(doomed)
    assert (lost.outcome, lost.outputs, lost.source) == ("lost", None, "recovery")
    assert not col.finished(running)  # still running: recovery keeps it
    await client.interrupt(running)
    stopped = await col.wait_finished(running)
    assert stopped.outcome == "interrupted"
    assert stopped.error is not None and stopped.error["node_type"] == "KSampler"


async def test_prompt_deleted_while_connected_is_lost(
    watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim
) -> None:
    watcher, col = watched
    sim.step_time = 0.01
    running = await submit(watcher, client, txt2img_graph(steps=1000, seed=1))
    doomed = await submit(watcher, client, txt2img_graph(seed=2))
    await asyncio.sleep(0.25)
    await client.delete_from_queue([doomed])  # only a `status` broadcast tells us
    lost = await col.wait_finished(doomed, timeout=3)
    assert lost.outcome == "lost"
    await client.interrupt()
    assert (await col.wait_finished(running)).outcome == "interrupted"


async def test_binary_preview_frames_are_ignored(
    watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim
) -> None:
    watcher, col = watched
    sim.preview = True
    pid = await submit(watcher, client, txt2img_graph(steps=5))
    done = await col.wait_finished(pid)
    assert done.outcome == "success"
    assert watcher.binary_frames_ignored == 5 and watcher.connected


async def test_execution_error(watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim) -> None:
    watcher, col = watched
    sim.fail_next_execution("boom: tensor on fire")
    pid = await submit(watcher, client, txt2img_graph(steps=2))
    done = await col.wait_finished(pid)
    assert done.outcome == "error" and not done.ok
    assert done.error is not None and done.error["exception_message"] == "boom: tensor on fire"
    assert done.error["node_type"] == "KSampler" and done.outputs == {}


async def test_events_before_track_are_buffered(
    watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim
) -> None:
    watcher, col = watched
    queued = await client.queue_prompt(txt2img_graph(steps=2))  # not tracked yet
    await until(lambda: queued.prompt_id in sim.history)
    await asyncio.sleep(0.05)
    assert col.events == []
    watcher.track(queued.prompt_id)
    done = await col.wait_finished(queued.prompt_id)
    assert isinstance(col.of(queued.prompt_id)[0], Started) and done.source == "ws"


async def test_track_after_events_expired_uses_history(client: ComfyClient, sim: ComfySim) -> None:
    col = Collector()
    async with make_watcher(client, col, buffer_ttl=0.05) as watcher:
        assert await watcher.wait_connected(3)
        queued = await client.queue_prompt(txt2img_graph(steps=2))
        await until(lambda: queued.prompt_id in sim.history)
        await asyncio.sleep(0.1)
        watcher.track(queued.prompt_id)
        done = await col.wait_finished(queued.prompt_id)
    assert [type(e) for e in col.events] == [Finished]
    assert (done.outcome, done.source) == ("success", "history")


async def test_never_queued_prompt_is_lost(watched: tuple[ComfyWatcher, Collector]) -> None:
    watcher, col = watched
    watcher.track("ghost")
    assert (await col.wait_finished("ghost", timeout=2)).outcome == "lost"


async def test_untrack_stops_delivery(watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim) -> None:
    watcher, col = watched
    pid = await submit(watcher, client, txt2img_graph(steps=2))
    watcher.untrack(pid)
    await until(lambda: pid in sim.history)
    await asyncio.sleep(0.05)
    assert col.finished(pid) == []


async def test_server_restart_loses_the_running_prompt(
    watched: tuple[ComfyWatcher, Collector], client: ComfyClient, sim: ComfySim
) -> None:
    watcher, col = watched
    sim.step_time = 0.01
    pid = await submit(watcher, client, txt2img_graph(steps=1000))
    await until(lambda: any(isinstance(e, Progress) for e in col.of(pid)))
    await sim.restart()
    done = await col.wait_finished(pid)
    assert done.outcome == "lost"
    await until(lambda: watcher.connected)
    assert col.connections == [True, False, True]


async def test_dead_server_and_stop(client: ComfyClient, sim: ComfySim) -> None:
    col = Collector()
    watcher = make_watcher(client, col, heartbeat=0.2)
    await watcher.start()
    assert await watcher.wait_connected(3)
    await sim.kill()
    await until(lambda: not watcher.connected)
    await asyncio.sleep(0.2)  # a few failed reconnects
    started = time.monotonic()
    await watcher.stop()
    assert time.monotonic() - started < 1
    assert col.connections == [True, False]
    pending = [t for t in asyncio.all_tasks() if t.get_name().startswith("comfy-watcher")]
    assert pending == []


async def test_two_daemons_on_one_server_see_only_their_prompts(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    a_col, b_col = Collector(), Collector()
    a = ComfyClient(sim.base_url, session=session, client_id="daemon-a")
    b = ComfyClient(sim.base_url, session=session, client_id="daemon-b")
    async with make_watcher(a, a_col) as wa, make_watcher(b, b_col) as wb:
        assert await wa.wait_connected(3) and await wb.wait_connected(3)
        pa = await submit(wa, a, txt2img_graph(seed=1))
        pb = await submit(wb, b, txt2img_graph(seed=2))
        await a_col.wait_finished(pa)
        await b_col.wait_finished(pb)
    assert {e.prompt_id for e in a_col.events} == {pa}
    assert {e.prompt_id for e in b_col.events} == {pb}
    assert a_col.finished(pa)[0].source == b_col.finished(pb)[0].source == "ws"


async def test_through_a_proxy_prefix_with_a_token(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with ComfySim(base_dir=tmp_path, path_prefix="/box/7", bearer_token="tok", step_time=0) as sim:
        client = ComfyClient(sim.base_url, session=session, client_id="d", bearer_token="tok")
        col = Collector()
        async with make_watcher(client, col) as watcher:
            assert await watcher.wait_connected(3)
            pid = await submit(watcher, client, txt2img_graph())
            assert (await col.wait_finished(pid)).outcome == "success"


def test_outcome_from_history_uses_the_last_message() -> None:
    def entry(status_str: str, *names: str) -> dict[str, Any]:
        return {"status": {"status_str": status_str, "messages": [[n, {"prompt_id": "x", "n": n}] for n in names]}}

    assert outcome_from_history(entry("success", "execution_start", "execution_success")) == ("success", None)
    assert outcome_from_history(entry("error", "execution_start", "execution_interrupted"))[0] == "interrupted"
    outcome, error = outcome_from_history(entry("error", "execution_start", "execution_error"))
    assert outcome == "error" and error == {"prompt_id": "x", "n": "execution_error"}
    assert outcome_from_history({"status": {"status_str": "success", "completed": True, "messages": []}})[0] == "success"
    assert outcome_from_history({})[0] == "error"
