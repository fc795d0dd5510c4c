"""ComfyClient against the ComfyUI simulator over real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fleet_helpers import wait_for
from PIL import Image

from socialsync.daemon.comfy import (
    ComfyClient,
    ComfyError,
    ComfyHTTPError,
    ComfyNotFoundError,
    ComfyPromptRejected,
    ComfyUnavailableError,
)
from socialsync.daemon.sim.comfyui import MODEL_FOLDERS, SAMPLERS, SCHEDULERS, ComfySim, txt2img_graph


@pytest.fixture
def calls() -> list[tuple[str, str, float]]:
    return []


@pytest.fixture
def client(sim: ComfySim, session: aiohttp.ClientSession, calls: list[tuple[str, str, float]]) -> ComfyClient:
    return ComfyClient(
        sim.base_url,
        session=session,
        client_id="test-client",
        timeout=5,
        retry_wait=(0.01, 0.05),
        on_call=lambda endpoint, outcome, seconds: calls.append((endpoint, outcome, seconds)),
    )


def until(predicate, timeout: float = 5.0):
    """``wait_for`` at a ComfyUI simulator's pace."""
    return wait_for(predicate, timeout, interval=0.005)


async def finished(client: ComfyClient, prompt_id: str) -> dict[str, Any]:
    return await until(lambda: client.history(prompt_id))


# ---------------------------------------------------------------- basics


async def test_system_stats_has_a_cuda_device(client: ComfyClient) -> None:
    stats = await client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    device = stats["devices"][0]
    assert device["type"] == "cuda" and device["index"] == 0
    assert device["name"].startswith("cuda:0 NVIDIA GeForce RTX 4090")
    assert device["vram_total"] == 24 * 1024**3
    assert await client.ping()


async def test_queue_prompt_and_history_entry(client: ComfyClient, sim: ComfySim) -> None:
    graph = txt2img_graph(seed=5, steps=3)
    assert client.post_activity("my-own-id-0001") is None
    queued = await client.queue_prompt(graph, extra_data={"extra_pnginfo": {"job": "abc"}})
    assert (client.post_activity(queued.prompt_id) or 0) <= time.monotonic()
    assert queued.number == 0 and queued.node_errors == {}
    entry = await finished(client, queued.prompt_id)

    number, pid, stored_graph, extra, outputs = entry["prompt"]
    assert (number, pid, outputs) == (0, queued.prompt_id, ["9"])
    assert stored_graph == graph
    assert extra == {"extra_pnginfo": {"job": "abc"}, "client_id": "test-client"}
    assert entry["outputs"] == {"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    names = [m[0] for m in entry["status"]["messages"]]
    assert names == ["execution_start", "execution_cached", "execution_success"]
    assert all(isinstance(m[1]["timestamp"], int) and m[1]["timestamp"] > 1_600_000_000_000 for m in entry["status"]["messages"])
    assert entry["meta"] == {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
    # the client-chosen id is used as is, and counters continue
    again = await client.queue_prompt(txt2img_graph(seed=6), prompt_id="my-own-id-0001")
    assert again.prompt_id == "my-own-id-0001" and again.number == 1


async def test_unknown_history_id_is_none(client: ComfyClient) -> None:
    assert await client.history("nope") is None


async def test_api_aliases_and_prompt_info(client: ComfyClient, session: aiohttp.ClientSession, sim: ComfySim) -> None:
    async with session.get(sim.base_url + "/api/queue") as r1, session.get(sim.base_url + "/queue") as r2:
        assert await r1.json() == await r2.json() == {"queue_running": [], "queue_pending": []}
    async with session.get(sim.base_url + "/api/prompt") as r:
        assert await r.json() == {"exec_info": {"queue_remaining": 0}}
    async with session.get(sim.base_url + "/api/jobs") as r:
        assert r.status == 404  # not in 0.3.64
    assert await client.queue_remaining() == 0
    assert await client.features() == {"supports_preview_metadata": True, "max_upload_size": 104857600}


# ---------------------------------------------------------------- 400 bodies


def _bad(graph_change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    graph = txt2img_graph()
    graph_change(graph)
    return graph


REJECTIONS = [
    pytest.param(
        lambda g: g["4"]["inputs"].update(ckpt_name="nope.safetensors"),
        "4", "CheckpointLoaderSimple", "ckpt_name", "value_not_in_list",
        "ckpt_name: 'nope.safetensors' not in ['sd_xl_base_1.0.safetensors', 'v1-5-pruned-emaonly.safetensors']",
        id="unknown-checkpoint",
    ),
    pytest.param(
        lambda g: g["3"]["inputs"].update(sampler_name="euler_a"),
        "3", "KSampler", "sampler_name", "value_not_in_list",
        "sampler_name: 'euler_a' not in (list of length 42)", id="a1111-sampler-name",
    ),
    pytest.param(
        lambda g: g["3"]["inputs"].update(seed=-1),
        "3", "KSampler", "seed", "value_smaller_than_min", "Value -1 smaller than min of 0", id="negative-seed",
    ),
    pytest.param(
        lambda g: g["3"]["inputs"].update(steps=10001),
        "3", "KSampler", "steps", "value_bigger_than_max", "Value 10001 bigger than max of 10000", id="too-many-steps",
    ),
    pytest.param(
        lambda g: g["5"]["inputs"].update(width="wide"),
        "5", "EmptyLatentImage", "width", "invalid_input_type", "width, wide, invalid literal", id="not-an-int",
    ),
    pytest.param(
        lambda g: g["6"]["inputs"].pop("clip"),
        "6", "CLIPTextEncode", "clip", "required_input_missing", "Required input is missing", id="missing-input",
    ),
    pytest.param(
        lambda g: g["9"]["inputs"].update(images=["3", 0]),
        "9", "SaveImage", "images", "return_type_mismatch",
        "images, received_type(LATENT) mismatch input_type(IMAGE)", id="bad-link",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("change", "node", "class_type", "input_name", "kind", "text"), REJECTIONS)
async def test_rejections_name_node_class_and_input(
    client: ComfyClient, change: Callable[[dict[str, Any]], None], node: str, class_type: str, input_name: str,
    kind: str, text: str,
) -> None:  # fmt: skip
    with pytest.raises(ComfyPromptRejected) as info:
        await client.queue_prompt(_bad(change))
    exc = info.value
    assert exc.error_type == "prompt_outputs_failed_validation"
    message = str(exc)
    assert f"node {node} ({class_type}) input {input_name}: {kind}: {text}" in message, message
    problem = next(p for p in exc.problems if p.node_id == node)
    assert (problem.class_type, problem.input_name, problem.type) == (class_type, input_name, kind)
    entry = exc.node_errors[node]
    assert entry["class_type"] == class_type and entry["dependent_outputs"] == ["9"]
    if node != "9":
        assert exc.details == ""  # upstream problems never reach the top-level details


async def test_value_not_in_list_shapes(client: ComfyClient) -> None:
    with pytest.raises(ComfyPromptRejected) as info:
        await client.queue_prompt(_bad(lambda g: g["3"]["inputs"].update(sampler_name="euler_a", scheduler="nope")))
    errors = {e["extra_info"]["input_name"]: e for e in info.value.node_errors["3"]["errors"]}
    assert errors["sampler_name"]["extra_info"]["input_config"] is None  # > 20 entries
    assert errors["scheduler"]["extra_info"]["input_config"][0] == SCHEDULERS  # short list kept
    assert errors["scheduler"]["details"] == f"scheduler: 'nope' not in {SCHEDULERS}"


async def test_structural_rejections(client: ComfyClient, session: aiohttp.ClientSession, sim: ComfySim) -> None:
    with pytest.raises(ComfyPromptRejected) as info:
        await client.queue_prompt({"1": {"inputs": {}}})
    assert info.value.error_type == "invalid_prompt"
    assert str(info.value) == (
        "prompt rejected (invalid_prompt): Cannot execute because a node is missing the class_type property. "
        "(Node ID '#1')"
    )
    with pytest.raises(ComfyPromptRejected) as info:
        await client.queue_prompt({"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "NoSuchNode", "inputs": {}}})
    assert "Cannot execute because node NoSuchNode does not exist." in str(info.value)
    assert "Node ID '#2'" in str(info.value)
    with pytest.raises(ComfyPromptRejected) as info:
        await client.queue_prompt({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}})
    assert info.value.error_type == "prompt_no_outputs" and info.value.node_errors == {}
    async with session.post(sim.base_url + "/prompt", json={"client_id": "x"}) as r:
        assert r.status == 400
        assert await r.json() == {
            "error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}},
            "node_errors": {},
        }


async def test_rejected_prompts_still_increment_the_counter(client: ComfyClient) -> None:
    for _ in range(3):
        with pytest.raises(ComfyPromptRejected):
            await client.queue_prompt(_bad(lambda g: g["3"]["inputs"].update(seed=-1)))
    queued = await client.queue_prompt(txt2img_graph())
    assert queued.number == 3


async def test_output_node_error_goes_to_details(client: ComfyClient) -> None:
    graph = _bad(lambda g: g["9"]["inputs"].pop("filename_prefix"))
    with pytest.raises(ComfyPromptRejected) as info:
        await client.queue_prompt(graph)
    assert info.value.details == "Required input is missing: filename_prefix"


async def test_partially_valid_prompt_is_queued_with_node_errors(client: ComfyClient) -> None:
    graph = txt2img_graph()
    graph["10"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad"}}
    queued = await client.queue_prompt(graph)
    assert list(queued.node_errors) == ["10"]
    entry = await finished(client, queued.prompt_id)
    assert entry["prompt"][4] == ["9"]


async def test_non_json_body_is_a_plain_500(session: aiohttp.ClientSession, sim: ComfySim) -> None:
    async with session.post(sim.base_url + "/prompt", data=b"{not json") as r:
        assert r.status == 500
        assert r.content_type == "text/plain"
        assert await r.text() == "500 Internal Server Error\n\nServer got itself in trouble"


async def test_500_from_prompt_is_not_retried(client: ComfyClient, calls: list[tuple[str, str, float]]) -> None:
    with pytest.raises(ComfyUnavailableError) as info:
        await client.queue_prompt("not a graph")  # type: ignore[arg-type]
    assert info.value.status == 500
    assert [(e, o) for e, o, _ in calls] == [("POST /prompt", "http_500")]


async def test_origin_check(session: aiohttp.ClientSession, sim: ComfySim) -> None:
    async with session.get(sim.base_url + "/queue", headers={"Origin": "http://example.com"}) as r:
        assert r.status == 403 and await r.read() == b""
    async with session.get(sim.base_url + "/queue", headers={"Origin": f"http://127.0.0.1:{sim.port}"}) as r:
        assert r.status == 200
    async with session.options(sim.base_url + "/prompt") as r:
        assert r.status == 200


# ---------------------------------------------------------------- retries


async def test_transport_error_after_queueing_does_not_queue_twice(
    client: ComfyClient, sim: ComfySim, calls: list[tuple[str, str, float]]
) -> None:
    sim.drop_next_response("/prompt")
    queued = await client.queue_prompt(txt2img_graph(), prompt_id="only-once")
    assert queued.prompt_id == "only-once"
    await finished(client, "only-once")
    assert list(sim.history) == ["only-once"] and sim.queue_remaining == 0
    endpoints = [(e, o) for e, o, _ in calls]
    assert endpoints[:2] == [("POST /prompt", "connection_error"), ("GET /queue", "ok")]
    assert endpoints.count(("POST /prompt", "connection_error")) == 1
    assert ("POST /prompt", "ok") not in endpoints


async def test_dead_server_is_unavailable_after_retries(client: ComfyClient, sim: ComfySim,
                                                        calls: list[tuple[str, str, float]]) -> None:  # fmt: skip
    await sim.kill()
    with pytest.raises(ComfyUnavailableError):
        await client.system_stats()
    assert [(e, o) for e, o, _ in calls] == [("GET /system_stats", "connection_error")] * 3
    assert not await client.ping()


async def test_start_delay_502_then_ready(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with ComfySim(base_dir=tmp_path, start_delay=0.4) as sim:
        client = ComfyClient(sim.base_url, session=session, client_id="c", attempts=1)
        with pytest.raises(ComfyUnavailableError) as info:
            await client.system_stats()
        assert info.value.status == 502
        await until(client.ping)
        assert (await client.system_stats())["devices"]


async def test_start_delay_refuses_connections(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with ComfySim(base_dir=tmp_path, start_delay=0.3, start_mode="refuse") as sim:
        client = ComfyClient(sim.base_url, session=session, client_id="c", attempts=1)
        with pytest.raises(ComfyUnavailableError) as info:
            await client.system_stats()
        assert info.value.status is None
        await until(client.ping)


async def test_restart_loses_queue_and_history(client: ComfyClient, sim: ComfySim) -> None:
    queued = await client.queue_prompt(txt2img_graph())
    await finished(client, queued.prompt_id)
    await sim.restart()
    assert await client.history(queued.prompt_id) is None
    assert await client.history_all() == {}
    assert (await client.queue_prompt(txt2img_graph(seed=2))).number == 0


# ---------------------------------------------------------------- auth and prefix


async def test_path_prefix_and_bearer_token(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with ComfySim(base_dir=tmp_path, path_prefix="/proxy/abc", bearer_token="s3cret", step_time=0) as sim:
        assert sim.base_url.endswith("/proxy/abc")
        anonymous = ComfyClient(sim.base_url, session=session, client_id="c")
        with pytest.raises(ComfyHTTPError) as info:
            await anonymous.system_stats()
        assert info.value.status == 401
        client = ComfyClient(sim.base_url + "/", session=session, client_id="c", bearer_token="s3cret")
        queued = await client.queue_prompt(txt2img_graph())
        entry = await finished(client, queued.prompt_id)
        written, _, ctype = await client.view("ComfyUI_00001_.png", "", "output", tmp_path / "out.png")
        assert written > 0 and ctype == "image/png" and entry["status"]["completed"]
        assert client.ws_url() == f"ws://127.0.0.1:{sim.port}/proxy/abc/ws?clientId=c"


async def test_basic_auth(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with ComfySim(base_dir=tmp_path, basic_auth=("op", "pw")) as sim:
        bad = ComfyClient(sim.base_url, session=session, client_id="c", auth=("op", "wrong"))
        with pytest.raises(ComfyHTTPError):
            await bad.system_stats()
        good = ComfyClient(sim.base_url, session=session, client_id="c", auth=("op", "pw"))
        assert await good.model_folders() == MODEL_FOLDERS
        with warnings.catch_warnings():  # aiohttp >= 3.14 deprecates BasicAuth; still accepted
            warnings.simplefilter("ignore", DeprecationWarning)
            legacy = aiohttp.BasicAuth("op", "pw")
        assert await ComfyClient(sim.base_url, session=session, client_id="c", auth=legacy).model_folders()
    with pytest.raises(ValueError):
        ComfyClient("http://x", session=session, client_id="c", auth=("a", ""), bearer_token="b")


# ---------------------------------------------------------------- files


async def test_view_streams_the_png_to_disk(client: ComfyClient, sim: ComfySim, tmp_path: Path) -> None:
    queued = await client.queue_prompt(txt2img_graph(width=96, height=64, batch_size=2, filename_prefix="job1/render"))
    entry = await finished(client, queued.prompt_id)
    images = entry["outputs"]["9"]["images"]
    assert images == [
        {"filename": "render_00001_.png", "subfolder": "job1", "type": "output"},
        {"filename": "render_00002_.png", "subfolder": "job1", "type": "output"},
    ]
    downloaded = await client.download_outputs(entry["outputs"], tmp_path / "dl")
    assert [d.path.name for d in downloaded] == ["job1_render_00001_.png", "job1_render_00002_.png"]
    for d in downloaded:
        on_sim = (sim.output_dir / "job1" / d.file.filename).read_bytes()
        assert d.path.read_bytes() == on_sim
        assert d.sha256 == hashlib.sha256(on_sim).hexdigest() and d.bytes_written == len(on_sim)
        assert d.content_type == "image/png"
        with Image.open(d.path) as img:
            assert img.size == (96, 64) and img.format == "PNG"
    assert downloaded[0].path.read_bytes() != downloaded[1].path.read_bytes()  # batch items differ
    assert not list((tmp_path / "dl").glob("*.part"))


async def test_seed_changes_pixels_and_identical_graph_is_cached(client: ComfyClient, sim: ComfySim,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    first = await finished(client, (await client.queue_prompt(txt2img_graph(seed=1))).prompt_id)
    second = await finished(client, (await client.queue_prompt(txt2img_graph(seed=2))).prompt_id)
    again = await finished(client, (await client.queue_prompt(txt2img_graph(seed=2))).prompt_id)
    names = [e["outputs"]["9"]["images"][0]["filename"] for e in (first, second, again)]
    assert names == ["ComfyUI_00001_.png", "ComfyUI_00002_.png", "ComfyUI_00002_.png"]
    assert sorted(p.name for p in sim.output_dir.iterdir()) == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    a = await client.view("ComfyUI_00001_.png", dest=tmp_path / "a.png")
    b = await client.view("ComfyUI_00002_.png", dest=tmp_path / "b.png")
    assert a.sha256 != b.sha256
    other_text = await finished(client, (await client.queue_prompt(txt2img_graph(seed=1, positive="a cat"))).prompt_id)
    c = await client.view(other_text["outputs"]["9"]["images"][0]["filename"], dest=tmp_path / "c.png")
    assert c.sha256 not in (a.sha256, b.sha256)


async def test_view_errors(client: ComfyClient, session: aiohttp.ClientSession, sim: ComfySim, tmp_path: Path) -> None:
    (sim.output_dir / "x.png").write_bytes(b"\x89PNG fake")
    assert (await client.view("x.png [output]", type="temp", dest=tmp_path / "x.png")).bytes_written == 9
    with pytest.raises(ComfyNotFoundError):
        await client.view("missing.png", dest=tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "m.png.part").exists()
    for params, status in [
        ({"filename": "../x.png"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "x.png", "type": "nope"}, 400),
        ({"filename": "x.png", "subfolder": "../../"}, 403),
        ({}, 404),
    ]:
        async with session.get(sim.base_url + "/view", params=params) as r:
            assert (r.status, await r.read()) == (status, b""), params
    with pytest.raises(ComfyHTTPError) as info:
        await client.view("x.png", "../..", dest=tmp_path / "y.png")
    assert info.value.status == 403


async def test_upload_image_dedupe_and_load_image(client: ComfyClient, sim: ComfySim) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 24), (200, 10, 10)).save(buf, format="PNG")
    red = buf.getvalue()
    first = await client.upload_image(red, "ref.png")
    assert (first.name, first.subfolder, first.type) == ("ref.png", "", "input")
    assert (await client.upload_image(red, "ref.png")).name == "ref.png"  # same bytes: reused
    assert (await client.upload_image(red + b"x", "ref.png")).name == "ref (1).png"
    assert (await client.upload_image(b"new", "ref.png", overwrite=True)).name == "ref.png"
    assert (sim.input_dir / "ref.png").read_bytes() == b"new"
    await client.upload_image(red, "ref2.png", subfolder="sub")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "sub/ref2.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "echo"}},
    }
    entry = await finished(client, (await client.queue_prompt(graph)).prompt_id)
    with Image.open(sim.output_dir / entry["outputs"]["2"]["images"][0]["filename"]) as img:
        assert img.size == (40, 24) and img.convert("RGB").getpixel((5, 5)) == (200, 10, 10)
    graph["1"]["inputs"]["image"] = "missing.png"
    with pytest.raises(ComfyPromptRejected) as info:
        await client.queue_prompt(graph)
    assert "node 1 (LoadImage) input image: custom_validation_failed: LoadImage - Invalid image file: missing.png" in str(info.value)


# ---------------------------------------------------------------- models and object_info


async def test_models_listing(client: ComfyClient, sim: ComfySim) -> None:
    assert await client.model_folders() == MODEL_FOLDERS
    assert await client.models("checkpoints") == ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
    (sim.models_dir / "checkpoints" / "SDXL").mkdir()
    (sim.models_dir / "checkpoints" / "SDXL" / "juggernaut.safetensors").write_bytes(b"x" * 1234)
    (sim.models_dir / "checkpoints" / "notes.txt").write_text("not a model")
    (sim.models_dir / "clip").mkdir()
    (sim.models_dir / "clip" / "t5xxl.safetensors").write_bytes(b"")
    listed = await client.models("checkpoints")
    assert "SDXL/juggernaut.safetensors" in listed and "notes.txt" not in listed
    assert await client.models("text_encoders") == ["t5xxl.safetensors"]  # legacy models/clip
    with pytest.raises(ComfyNotFoundError):
        await client.models("clip")
    sized = {m.name: m for m in await client.models_with_sizes("checkpoints")}
    assert sized["SDXL/juggernaut.safetensors"].size == 1234
    assert sized["sd_xl_base_1.0.safetensors"].size == 0 and sized["sd_xl_base_1.0.safetensors"].modified
    with pytest.raises(ComfyNotFoundError):
        await client.models_with_sizes("nope")
    info = await client.object_info("CheckpointLoaderSimple")
    assert info is not None and "SDXL/juggernaut.safetensors" in info["input"]["required"]["ckpt_name"][0]
    assert sim.available_checkpoints == listed


async def test_object_info(client: ComfyClient) -> None:
    samplers, schedulers = await client.samplers_and_schedulers()
    assert samplers == SAMPLERS and len(samplers) == 42
    assert schedulers == SCHEDULERS and len(schedulers) == 9
    assert await client.object_info("NoSuchNode") is None
    everything = await client.object_info()
    assert everything is not None
    for name in ("CheckpointLoaderSimple", "EmptyLatentImage", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage",
                 "PreviewImage", "LoraLoader", "VAELoader", "EmptyImage", "LoadImage"):  # fmt: skip
        assert name in everything
    ks = everything["KSampler"]
    assert ks["input"]["required"]["seed"] == [
        "INT",
        {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True,
         "tooltip": "The random seed used for creating the noise."},
    ]  # fmt: skip
    assert ks["output"] == ["LATENT"] and ks["output_node"] is False
    assert everything["SaveImage"]["output_node"] is True
    assert everything["SaveImage"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


# ---------------------------------------------------------------- queue semantics


async def test_queue_delete_and_interrupt(client: ComfyClient, sim: ComfySim) -> None:
    sim.step_time = 0.02
    a = await client.queue_prompt(txt2img_graph(seed=1, steps=200))
    b = await client.queue_prompt(txt2img_graph(seed=2))
    c = await client.queue_prompt(txt2img_graph(seed=3))
    front = await client.queue_prompt(txt2img_graph(seed=4), front=True)
    assert front.number == -3
    await until(lambda: sim.running_prompt_id == a.prompt_id)
    state = await client.queue()
    assert [i.prompt_id for i in state.running] == [a.prompt_id]
    assert [i.prompt_id for i in state.pending] == [front.prompt_id, b.prompt_id, c.prompt_id]
    assert state.running[0].client_id == "test-client" and state.running[0].outputs == ["9"]
    assert state.position(c.prompt_id) == 3

    await client.delete_from_queue([b.prompt_id, "unknown-id"])
    await client.delete_from_queue([a.prompt_id])  # running: untouched
    await client.interrupt(c.prompt_id)  # not running: nothing happens
    state = await client.queue()
    assert [i.prompt_id for i in state.running] == [a.prompt_id]
    assert [i.prompt_id for i in state.pending] == [front.prompt_id, c.prompt_id]

    await client.interrupt(a.prompt_id)
    entry_a = await finished(client, a.prompt_id)
    assert entry_a["status"]["status_str"] == "error" and entry_a["status"]["completed"] is False
    last_name, last_data = entry_a["status"]["messages"][-1]
    assert last_name == "execution_interrupted" and last_data["node_type"] == "KSampler"
    entry_c = await finished(client, c.prompt_id)
    assert entry_c["status"]["status_str"] == "success"
    order = list(sim.history)
    assert order == [a.prompt_id, front.prompt_id, c.prompt_id]  # front jumped ahead of c
    assert await client.history(b.prompt_id) is None  # deleted: never in history


async def test_clear_queue_and_history_paging(client: ComfyClient, sim: ComfySim) -> None:
    ids = [(await client.queue_prompt(txt2img_graph(seed=s))).prompt_id for s in range(4)]
    await until(lambda: len(sim.history) == 4)
    assert list(await client.history_all(max_items=2)) == ids[2:]
    assert list(await client.history_all(max_items=2, offset=1)) == ids[1:3]
    await client.delete_history([ids[0]])
    assert list(await client.history_all()) == ids[1:]
    await client.clear_history()
    assert await client.history_all() == {}
    sim.step_time = 0.05
    first = await client.queue_prompt(txt2img_graph(seed=10, steps=50))
    await client.queue_prompt(txt2img_graph(seed=11))
    await client.clear_queue()
    assert (await client.queue()).pending == []
    await client.interrupt()
    await finished(client, first.prompt_id)


async def test_history_is_capped(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with ComfySim(base_dir=tmp_path, step_time=0, history_max=3) as sim:
        client = ComfyClient(sim.base_url, session=session, client_id="c")
        ids = [(await client.queue_prompt(txt2img_graph(seed=s))).prompt_id for s in range(5)]
        await until(lambda: sim.queue_remaining == 0 and len(sim.history) == 3)
        await until(lambda: list(sim.history) == ids[2:])


# ---------------------------------------------------------------- entry point


async def test_python_m_entry_point(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socialsync.daemon.sim.comfyui", "--port", "0", "--models-dir", str(tmp_path / "m"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        async with session.get(base_url + "/system_stats") as r:
            assert r.status == 200
            assert json.loads(await r.text())["devices"][0]["type"] == "cuda"
        assert (tmp_path / "m" / "checkpoints" / "sd_xl_base_1.0.safetensors").exists()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_client_rejects_bad_urls(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError):
        ComfyClient("ftp://x", session=session, client_id="c")
    client = ComfyClient("https://host.example:8443/p/", session=session, client_id="id 1")
    assert client.base_url == "https://host.example:8443/p"
    assert client.ws_url() == "wss://host.example:8443/p/ws?clientId=id+1"
    with pytest.raises(ComfyError):
        raise ComfyNotFoundError("", endpoint="GET /x")
