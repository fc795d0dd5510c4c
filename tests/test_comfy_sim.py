"""The ComfyUI simulator's websocket protocol and execution, checked against reference §4-§6."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import aiohttp
from fleet_helpers import wait_for
from PIL import Image

from socialsync.daemon.comfy import ComfyClient
from socialsync.daemon.sim.comfyui import ComfySim, txt2img_graph

TOPO_ORDER = ["4", "5", "7", "6", "3", "8", "9"]  # observed on real ComfyUI for the §9 graph
GRAPH_ORDER = ["4", "5", "6", "7", "3", "8", "9"]  # key order of txt2img_graph()


def make_client(sim: ComfySim, session: aiohttp.ClientSession, client_id: str) -> ComfyClient:
    return ComfyClient(sim.base_url, session=session, client_id=client_id, retry_wait=(0.01, 0.05))


def until(predicate, timeout: float = 5.0):
    """``wait_for`` at a ComfyUI simulator's pace."""
    return wait_for(predicate, timeout, interval=0.005)


class Socket:
    """A raw websocket client that records every frame."""

    def __init__(self, session: aiohttp.ClientSession, sim: ComfySim, client_id: str | None, *, flags: bool = False):
        self.session, self.sim, self.client_id, self.flags = session, sim, client_id, flags
        self.frames: list[dict[str, Any] | bytes] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Socket:
        params = {"clientId": self.client_id} if self.client_id else {}
        self.ws = await self.session.ws_connect(self.sim.base_url + "/ws", params=params)
        if self.flags:
            await self.ws.send_str(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        self.task = asyncio.create_task(self._read())
        await until(lambda: self.messages)  # the greeting status
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(msg.data)

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None and self.task is not None
        await self.ws.close()
        await self.task

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict)]

    def done(self, prompt_id: str) -> bool:
        return any(m["type"] == "executing" and m["data"] == {"node": None, "prompt_id": prompt_id} for m in self.messages)

    async def wait_done(self, prompt_id: str) -> None:
        await until(lambda: self.done(prompt_id))


def summarize(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for m in messages:
        kind, data = m["type"], m["data"]
        if kind == "status":
            out.append((kind, data["status"]["exec_info"]["queue_remaining"]))
        elif kind == "executing":
            out.append((kind, data["node"]))
        elif kind == "progress":
            out.append((kind, (data["node"], data["value"], data["max"])))
        elif kind == "executed":
            out.append((kind, data["node"]))
        elif kind == "execution_cached":
            out.append((kind, tuple(data["nodes"])))
        elif kind == "progress_state":
            out.append((kind, tuple((n, s["state"], s["value"]) for n, s in data["nodes"].items())))
        else:
            out.append((kind, None))
    return out


def expected_run(order: list[str], steps: int, *, remaining_before: int = 0) -> list[tuple[str, Any]]:
    """Reference §5 for one uncached txt2img prompt, step for step."""
    seq: list[tuple[str, Any]] = [
        ("status", remaining_before + 1),  # enqueued
        ("status", remaining_before + 1),  # taken by the worker (running still counts)
        ("execution_start", None),
        ("execution_cached", ()),
    ]
    states: dict[str, tuple[str, int]] = {}

    def snapshot() -> tuple[str, Any]:
        return ("progress_state", tuple((n, s, v) for n, (s, v) in states.items()))

    for node in order:
        states[node] = ("running", 0)
        seq += [snapshot(), ("executing", node)]
        if node == "3":
            for step in range(1, steps + 1):
                states[node] = ("running", step)
                seq += [snapshot(), ("progress", ("3", step, steps))]
        if node == "9":
            seq.append(("executed", "9"))
        states[node] = ("finished", 1)
        seq.append(snapshot())
    seq += [("execution_success", None), ("status", remaining_before), ("executing", None)]
    return seq


# ---------------------------------------------------------------- message order


async def test_message_sequence_of_one_prompt(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    client = make_client(sim, session, "seq")
    async with Socket(session, sim, "seq") as sock:
        queued = await client.queue_prompt(txt2img_graph(steps=3))
        await sock.wait_done(queued.prompt_id)
    msgs = sock.messages
    assert msgs[0] == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "seq"}}
    assert all("sid" not in m["data"] for m in msgs[1:] if m["type"] == "status")
    assert summarize(msgs[1:]) == expected_run(TOPO_ORDER, 3)
    for m in msgs:
        if m["type"] == "executing" and m["data"]["node"] is not None:
            assert m["data"] == {"node": m["data"]["node"], "display_node": m["data"]["node"], "prompt_id": queued.prompt_id}
        if m["type"] in ("execution_start", "execution_cached", "execution_success"):
            assert m["data"]["prompt_id"] == queued.prompt_id and isinstance(m["data"]["timestamp"], int)
    executed = next(m for m in msgs if m["type"] == "executed")
    assert executed["data"] == {
        "node": "9", "display_node": "9", "prompt_id": queued.prompt_id,
        "output": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]},
    }  # fmt: skip
    state = next(m for m in msgs if m["type"] == "progress_state")["data"]
    assert state == {"prompt_id": queued.prompt_id, "nodes": {"4": {
        "value": 0, "max": 1, "state": "running", "node_id": "4", "prompt_id": queued.prompt_id,
        "display_node_id": "4", "parent_node_id": None, "real_node_id": "4"}}}  # fmt: skip


async def test_cached_resubmission(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    client = make_client(sim, session, "cache")
    async with Socket(session, sim, "cache") as sock:
        first = await client.queue_prompt(txt2img_graph(steps=2))
        await sock.wait_done(first.prompt_id)
        start = len(sock.messages)
        second = await client.queue_prompt(txt2img_graph(steps=2))
        await sock.wait_done(second.prompt_id)
        again = sock.messages[start:]
        assert summarize(again) == [
            ("status", 1), ("status", 1), ("execution_start", None), ("execution_cached", tuple(GRAPH_ORDER)),
            ("executed", "9"), ("progress_state", (("9", "finished", 1),)),
            ("execution_success", None), ("status", 0), ("executing", None),
        ]  # fmt: skip
        executed = [m["data"]["output"] for m in sock.messages if m["type"] == "executed"]
        assert executed[0] == executed[1]  # same filename, no new file
        assert [p.name for p in sim.output_dir.iterdir()] == ["ComfyUI_00001_.png"]

        start = len(sock.messages)
        third = await client.queue_prompt(txt2img_graph(steps=2, seed=99))  # only the sampler onwards re-runs
        await sock.wait_done(third.prompt_id)
        summary = summarize(sock.messages[start:])
        assert ("execution_cached", ("4", "5", "6", "7")) in summary
        assert [v for k, v in summary if k == "executing"] == ["3", "8", "9", None]
    history = sim.history
    assert history[second.prompt_id]["outputs"] == history[first.prompt_id]["outputs"]
    assert [m[1]["nodes"] for m in history[second.prompt_id]["status"]["messages"] if m[0] == "execution_cached"] == [GRAPH_ORDER]


async def test_prompt_without_client_id_broadcasts_only_progress(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    async with Socket(session, sim, "watcher") as sock:
        async with session.post(sim.base_url + "/prompt", json={"prompt": txt2img_graph(steps=4)}) as r:
            pid = (await r.json())["prompt_id"]
        await until(lambda: pid in sim.history)
        await until(lambda: summarize(sock.messages)[-1] == ("status", 0))
    kinds = [m["type"] for m in sock.messages]
    assert set(kinds) == {"status", "progress_state", "progress"}
    assert [m["data"]["value"] for m in sock.messages if m["type"] == "progress"] == [1, 2, 3, 4]
    assert sim.history[pid]["prompt"][3] == {}  # no client_id in extra_data


async def test_per_client_routing(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    async with Socket(session, sim, "alice") as alice, Socket(session, sim, "bob") as bob:
        queued = await make_client(sim, session, "alice").queue_prompt(txt2img_graph(steps=2))
        await alice.wait_done(queued.prompt_id)
        await until(lambda: summarize(bob.messages)[-1] == ("status", 0))
    assert {m["type"] for m in bob.messages} == {"status"}
    assert "execution_start" in {m["type"] for m in alice.messages}


async def test_socket_without_client_id_gets_a_generated_sid(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    async with Socket(session, sim, None) as sock:
        sid = sock.messages[0]["data"]["sid"]
        assert len(sid) == 32 and sid in sim.client_ids


async def test_reconnect_while_running_gets_executing_without_prompt_id(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    sim.step_time = 0.01
    client = make_client(sim, session, "re")
    async with Socket(session, sim, "re") as first:
        queued = await client.queue_prompt(txt2img_graph(steps=300))
        await until(lambda: any(m["type"] == "progress" for m in first.messages))
    async with Socket(session, sim, "re") as second:
        await until(lambda: len(second.messages) >= 3)
        assert second.messages[0]["data"] == {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "re"}
        assert second.messages[1] == {"type": "executing", "data": {"node": "3"}}
        assert second.messages[2]["type"] in ("progress_state", "progress")  # live again, nothing replayed
        assert "execution_start" not in {m["type"] for m in second.messages}
        await client.interrupt(queued.prompt_id)
        await second.wait_done(queued.prompt_id)


async def test_reconnect_with_same_id_replaces_the_old_socket(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    async with Socket(session, sim, "dup") as old, Socket(session, sim, "dup") as new:
        queued = await make_client(sim, session, "dup").queue_prompt(txt2img_graph(steps=2))
        await new.wait_done(queued.prompt_id)
        assert len(old.messages) == 1  # only its own greeting


async def test_preview_frames(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    sim.preview = True
    async with Socket(session, sim, "legacy") as legacy, Socket(session, sim, "modern", flags=True) as modern:
        p1 = await make_client(sim, session, "legacy").queue_prompt(txt2img_graph(steps=2, seed=1))
        p2 = await make_client(sim, session, "modern").queue_prompt(txt2img_graph(steps=2, seed=2))
        await legacy.wait_done(p1.prompt_id)
        await modern.wait_done(p2.prompt_id)

    def kinds(frames: list[dict[str, Any] | bytes]) -> list[str]:
        return [f["type"] if isinstance(f, dict) else f"binary{struct.unpack('>I', f[:4])[0]}" for f in frames]

    legacy_kinds = [k for k in kinds(legacy.frames) if k in ("progress", "binary1", "binary4")]
    assert legacy_kinds == ["progress", "binary1"] * 2
    frame = next(f for f in legacy.frames if isinstance(f, bytes))
    assert struct.unpack(">II", frame[:8]) == (1, 1) and frame[8:10] == b"\xff\xd8"

    assert modern.messages[1] == {"type": "feature_flags",
                                  "data": {"supports_preview_metadata": True, "max_upload_size": 104857600}}
    modern_kinds = [k for k in kinds(modern.frames) if k in ("progress_state", "progress", "binary1", "binary4")]
    step_part = modern_kinds[modern_kinds.index("binary4") - 1:]
    assert step_part[:3] == ["progress_state", "binary4", "progress"]
    frame = next(f for f in modern.frames if isinstance(f, bytes))
    (length,) = struct.unpack(">I", frame[4:8])
    meta = json.loads(frame[8 : 8 + length])
    assert meta["prompt_id"] == p2.prompt_id and meta["node_id"] == "3" and meta["image_type"] == "image/jpeg"
    assert frame[8 + length : 10 + length] == b"\xff\xd8"


# ---------------------------------------------------------------- failures


async def test_execution_error(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    client = make_client(sim, session, "err")
    sim.fail_next_execution("CUDA error: out of memory")
    async with Socket(session, sim, "err") as sock:
        queued = await client.queue_prompt(txt2img_graph(steps=2, seed=7))
        await sock.wait_done(queued.prompt_id)
    summary = summarize(sock.messages)
    assert summary[-3:] == [("execution_error", None), ("status", 0), ("executing", None)]
    assert ("execution_success", None) not in summary
    error = next(m["data"] for m in sock.messages if m["type"] == "execution_error")
    assert error["node_id"] == "3" and error["node_type"] == "KSampler"
    assert error["exception_message"] == "CUDA error: out of memory"
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["executed"] == ["4", "5", "7", "6"] and error["current_inputs"]["seed"] == [7]
    assert isinstance(error["traceback"], list) and error["traceback"]
    entry = sim.history[queued.prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_error" and entry["outputs"] == {}
    # the failure is one-shot
    ok = await client.queue_prompt(txt2img_graph(steps=2, seed=8))
    await until(lambda: ok.prompt_id in sim.history)
    assert sim.history[ok.prompt_id]["status"]["status_str"] == "success"


async def test_interrupt_messages(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    sim.step_time = 0.01
    client = make_client(sim, session, "int")
    async with Socket(session, sim, "int") as sock:
        queued = await client.queue_prompt(txt2img_graph(steps=500))
        await until(lambda: any(m["type"] == "progress" for m in sock.messages))
        await client.interrupt()
        await sock.wait_done(queued.prompt_id)
    summary = summarize(sock.messages)
    assert summary[-3:] == [("execution_interrupted", None), ("status", 0), ("executing", None)]
    data = next(m["data"] for m in sock.messages if m["type"] == "execution_interrupted")
    assert data["node_id"] == "3" and data["node_type"] == "KSampler" and data["executed"] == ["4", "5", "7", "6"]
    entry = sim.history[queued.prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_interrupted"


async def test_deleted_prompt_leaves_no_trace(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    sim.step_time = 0.01
    client = make_client(sim, session, "del")
    async with Socket(session, sim, "del") as sock:
        running = await client.queue_prompt(txt2img_graph(steps=500, seed=1))
        doomed = await client.queue_prompt(txt2img_graph(seed=2))
        await until(lambda: ("status", 2) in summarize(sock.messages))
        before = len(sock.messages)
        await client.delete_from_queue([doomed.prompt_id])
        await until(lambda: ("status", 1) in summarize(sock.messages[before:]))
        await client.interrupt()
        await sock.wait_done(running.prompt_id)
    assert doomed.prompt_id not in json.dumps(sock.messages)  # no per-prompt event, ever
    # ComfyUI's delete_queue_item broadcasts `status` (twice when it empties the queue)
    statuses = [v for k, v in summarize(sock.messages[before:]) if k == "status"]
    assert statuses == [1, 1, 0]  # the last one: the interrupted prompt left the queue
    assert doomed.prompt_id not in sim.history


async def test_kill_closes_sockets(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    async with Socket(session, sim, "k") as sock:
        await sim.kill()
        assert sock.task is not None
        await asyncio.wait_for(asyncio.shield(sock.task), 2)


# ---------------------------------------------------------------- SaveImage and friends


async def run(client: ComfyClient, sim: ComfySim, graph: dict[str, Any], **kw: Any) -> dict[str, Any]:
    queued = await client.queue_prompt(graph, **kw)
    await until(lambda: queued.prompt_id in sim.history)
    return sim.history[queued.prompt_id]


async def test_save_image_names_and_counter(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    client = make_client(sim, session, "save")
    (sim.output_dir / "job123").mkdir()
    (sim.output_dir / "job123" / "render_00007_.png").write_bytes(b"")
    entry = await run(client, sim, txt2img_graph(batch_size=2, filename_prefix="job123/render"))
    assert [i["filename"] for i in entry["outputs"]["9"]["images"]] == ["render_00008_.png", "render_00009_.png"]
    assert {i["subfolder"] for i in entry["outputs"]["9"]["images"]} == {"job123"}

    bad = await run(client, sim, txt2img_graph(filename_prefix="../evil"))
    assert bad["status"]["status_str"] == "error"
    error = bad["status"]["messages"][-1][1]
    assert error["node_type"] == "SaveImage" and error["exception_type"] == "Exception"
    assert "Saving image outside the output folder is not allowed" in error["exception_message"]


async def test_png_pixels_size_and_metadata(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    client = make_client(sim, session, "png")
    graph = txt2img_graph(width=70, height=40)  # step 8 is not enforced: the latent rounds down
    entry = await run(client, sim, graph, extra_data={"extra_pnginfo": {"job": "abc"}})
    path = sim.output_dir / entry["outputs"]["9"]["images"][0]["filename"]
    with Image.open(path) as img:
        assert img.size == (64, 40)
        assert json.loads(img.info["job"]) == "abc"
        assert json.loads(img.info["prompt"])["3"]["class_type"] == "KSampler"
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50  # a pattern, not a flat colour


async def test_empty_image_and_preview_image(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    client = make_client(sim, session, "misc")
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0x336699}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fake_test"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    entry = await run(client, sim, graph)
    saved = entry["outputs"]["2"]["images"][0]
    assert saved == {"filename": "fake_test_00001_.png", "subfolder": "", "type": "output"}
    with Image.open(sim.output_dir / saved["filename"]) as img:
        assert img.getpixel((3, 3)) == (0x33, 0x66, 0x99)
    preview = entry["outputs"]["3"]["images"][0]
    assert preview["type"] == "temp" and preview["filename"].startswith("ComfyUI_temp_")
    assert preview["filename"].endswith("_00001_.png") and (sim.temp_dir / preview["filename"]).is_file()
    assert set(entry["meta"]) == {"2", "3"}


async def test_lora_and_vae_loader_graph(sim: ComfySim, session: aiohttp.ClientSession) -> None:
    client = make_client(sim, session, "lora")
    graph = txt2img_graph()
    graph["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                   "lora_name": "detail_tweaker_xl.safetensors", "strength_model": 0.8, "strength_clip": "1"}}
    graph["11"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae.safetensors"}}  # fmt: skip
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = ["10", 1]
    graph["8"]["inputs"]["vae"] = ["11", 0]
    entry = await run(client, sim, graph)
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][2]["10"]["inputs"]["strength_clip"] == 1.0  # converted during validation
