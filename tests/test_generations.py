"""Generations over real sockets: test client → daemon → ComfyUI simulator, and back."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import re
import sqlite3
import time

import aiohttp
from fleet_helpers import wait_for
from gen_helpers import FINAL, SEED_EXAMPLE, rig, wait_ready
from harness import free_port
from PIL import Image

from socialsync.common.wire import now_iso
from socialsync.daemon import keys
from socialsync.daemon.services.generations import PROGRESS_INTERVAL
from socialsync.daemon.store import generations as gstore


def sim_output(sim, queue_id: str) -> list[bytes]:
    entry = sim.history[queue_id]
    files = [f for node in entry["outputs"].values() for f in node.get("images", [])]
    return [(sim.output_dir / f["subfolder"] / f["filename"]).read_bytes() for f in files]


async def read_ws_until(ws, gid: int, final_type: str, timeout: float = 15) -> list[dict]:
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive_json()
            if msg["type"].startswith("generation_") and msg["data"].get("generationId") == gid:
                seen.append(msg)
                if msg["type"] == final_type:
                    return seen


async def test_seed_example_end_to_end(tmp_path):
    async with rig(tmp_path, step_time=0.02) as r:
        async with r.api.ws_connect("/ws?types=generation_progress,generation_completed,generation_failed") as ws:
            hello = await ws.receive_json()
            assert hello["type"] == "hello"
            before = await r.daemon.app[keys.DB].scalar("SELECT last_activity_at FROM servers WHERE id = ?", (r.sid,))
            started = time.monotonic()
            data = await r.generate(body=SEED_EXAMPLE)
            assert set(data) == {"success", "generationId", "queueId", "message", "estimatedTime"}
            assert data["success"] is True and data["message"] == "Image generation started"
            assert data["estimatedTime"] == "30-60 seconds"  # no history yet on this server
            gid, queue_id = data["generationId"], data["queueId"]
            assert re.fullmatch(r"[0-9a-f-]{36}", queue_id)
            wire = await read_ws_until(ws, gid, "generation_completed")
            elapsed = time.monotonic() - started

        g = await r.generation(gid)
        assert g["status"] == "completed" and g["progress"] == 100 and g["error"] is None
        assert g["step"] == g["steps"] == 20  # even when the last step's message was throttled away
        assert g["queueId"] == queue_id and g["serverId"] == r.sid
        assert g["prompt"] == SEED_EXAMPLE["prompt"] and g["negativePrompt"] == "blurry, low quality"
        assert g["parameters"]["sampler"] == "euler_ancestral"  # A1111 spelling mapped
        assert g["parameters"]["cfg_scale"] == 7.5 and g["parameters"]["steps"] == 20
        assert g["parameters"]["width"] == 512 and g["parameters"]["height"] == 512
        assert g["checkpoint"] == "sd_xl_base_1.0.safetensors"  # the server's first checkpoint
        assert isinstance(g["seed"], int) and 0 <= g["seed"] < 2**32  # random, and stored
        assert g["startedAt"] and g["completedAt"] and g["createdAt"] <= g["startedAt"] <= g["completedAt"]
        assert 0 < g["durationMs"] <= elapsed * 1000 + 50

        # What ComfyUI ran is what we stored.
        entry = r.sim.history[queue_id]
        graph = entry["prompt"][2]
        assert graph["3"]["inputs"]["seed"] == g["seed"] and graph["3"]["inputs"]["sampler_name"] == "euler_ancestral"
        assert graph["6"]["inputs"]["text"] == SEED_EXAMPLE["prompt"]

        # Real PNGs, stored by content, served back with the same bytes.
        expected = sim_output(r.sim, queue_id)
        assert len(expected) == 1 and expected[0][:8] == b"\x89PNG\r\n\x1a\n"
        assert len(g["imageUrls"]) == 1 and g["images"][0]["url"] == g["imageUrls"][0]
        sha = hashlib.sha256(expected[0]).hexdigest()
        assert g["imageUrls"][0] == f"/api/images/{sha}.png"
        image = g["images"][0]
        assert image["sha256"] == sha and image["size"] == len(expected[0]) and image["contentType"] == "image/png"
        assert (image["width"], image["height"]) == (512, 512)
        on_disk = r.daemon.settings.images_dir / sha[:2] / f"{sha}.png"
        assert on_disk.read_bytes() == expected[0]
        for url in (g["imageUrls"][0], f"/api/images/{gid}/0"):
            async with r.api.get(url) as resp:
                assert resp.status == 200 and resp.content_type == "image/png"
                assert await resp.read() == expected[0]
        async with aiohttp.ClientSession(base_url=r.daemon.base_url) as anonymous:
            async with anonymous.get(g["imageUrls"][0]) as resp:
                assert resp.status == 401

        # Events on the wire: queued → processing → completed, progress never going back.
        progress = [m["data"] for m in wire if m["type"] == "generation_progress"]
        statuses = [p["status"] for p in progress]
        assert statuses[0] == "queued" and statuses[-1] == "completed"
        assert statuses == sorted(statuses, key=["queued", "processing", "completed"].index)
        values = [p["progress"] for p in progress]
        assert values == sorted(values) and values[-1] == 100
        for p in progress:
            assert set(p) <= {"generationId", "progress", "status", "serverId", "step", "steps"}
        done = wire[-1]["data"]
        assert done == {"generationId": gid, "serverId": r.sid, "status": "completed", "imageUrls": g["imageUrls"],
                        "durationMs": g["durationMs"]}

        # The server was marked active; the list shows it; images outlive the server.
        after = await r.daemon.app[keys.DB].scalar("SELECT last_activity_at FROM servers WHERE id = ?", (r.sid,))
        assert after > before
        async with r.api.get(f"/api/comfy/{r.sid}/generations") as resp:
            listed = await resp.json()
        assert [x["id"] for x in listed] == [gid] and listed[0]["imageUrls"] == g["imageUrls"]
        async with r.api.delete(f"/api/vast-servers/{r.sid}") as resp:
            assert resp.status == 200
        await r.sim.stop()
        async with r.api.get(g["imageUrls"][0]) as resp:
            assert resp.status == 200 and await resp.read() == expected[0]
        audit = await r.daemon.app[keys.DB].fetchall(
            "SELECT target_id, outcome FROM audit_logs WHERE action = 'generation.create'")
        assert [(a["target_id"], a["outcome"]) for a in audit] == [(str(gid), "success")]


async def test_progress_is_throttled_and_ordered(tmp_path):
    async with rig(tmp_path, step_time=0.03) as r:
        body = {"prompt": "a slow one", "parameters": {"steps": 60}}  # ~1.8 s of sampling
        gid = (await r.generate(body=body))["generationId"]
        g = await r.final(gid)
        assert g["status"] == "completed"
        events = r.of(gid, "generation_progress")
        processing = [e for e in events if e["data"]["status"] == "processing"]
        seconds = (g["durationMs"] or 0) / 1000
        # One per interval at most, plus the status change into processing and a trailing flush.
        assert len(processing) <= seconds / PROGRESS_INTERVAL + 3, (len(processing), seconds)
        assert len(processing) >= 4  # progress is really reported while it runs
        values = [e["data"]["progress"] for e in events]
        assert values == sorted(values) and values[-1] == 100
        steps = [e["data"].get("step") for e in processing if e["data"].get("step")]
        assert steps == sorted(steps) and all(e["data"].get("steps") == 60 for e in processing[1:])
        seqs = [e["seq"] for e in r.of(gid)]
        assert seqs == sorted(seqs)
        assert r.of(gid)[-1]["type"] == "generation_completed"
        # The gaps between progress events respect the throttle (the status change aside).
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(processing[1:])]
        assert gaps and min(gaps) >= PROGRESS_INTERVAL - 0.02, gaps


async def test_refusals_each_with_its_code(tmp_path):
    async with rig(tmp_path) as r:
        async def refused(sid, body, status, code):
            async with r.api.post(f"/api/comfy/{sid}/generate", json=body) as resp:
                data = await resp.json()
                assert resp.status == status, data
                assert data["code"] == code, data
                return data

        ok = {"prompt": "x"}
        await refused(999, ok, 404, "SERVER_NOT_FOUND")
        await refused("abc", ok, 404, "SERVER_NOT_FOUND")
        dead = await _attach_dead(r.api)
        data = await refused(dead, ok, 409, "SERVER_NOT_READY")
        assert "not ready" in data["error"].lower()

        def params(**p):
            return {"prompt": "x", "parameters": p}

        for body, path in [
            (params(width=513), "parameters.width"),
            (params(height=32), "parameters.height"),
            (params(width=8192), "parameters.width"),
            (params(steps=0), "parameters.steps"),
            (params(steps=151), "parameters.steps"),
            (params(cfg_scale=31), "parameters.cfg_scale"),
            (params(cfg_scale=-1), "parameters.cfg_scale"),
            (params(seed=-2), "parameters.seed"),
            (params(batchSize=9), "parameters.batchSize"),
            (params(sampller="euler"), "parameters.sampller"),
            ({"prompt": ""}, "prompt"),
            ({"prompt": "x", "negative": "typo"}, "negative"),
            ({"parameters": {}}, "prompt"),
        ]:
            data = await refused(r.sid, body, 400, "VALIDATION_ERROR")
            assert path in [f["path"] for f in data["fields"]], (body, data)

        data = await refused(r.sid, params(sampler="warp_drive"), 400, "VALIDATION_ERROR")
        assert "warp_drive" in data["details"] and "euler" in data["details"]
        data = await refused(r.sid, params(scheduler="sometimes"), 400, "VALIDATION_ERROR")
        assert "karras" in data["details"]
        data = await refused(r.sid, params(checkpoint="nope.safetensors"), 400, "VALIDATION_ERROR")
        assert "v1-5-pruned-emaonly.safetensors" in data["details"]
        await refused(r.sid, {"prompt": "x", "workflowId": 4242}, 404, "NOT_FOUND")
        assert r.sim.history == {} and r.sim.queue_remaining == 0  # nothing was sent
        assert await r.daemon.app[keys.DB].scalar("SELECT count(*) FROM generations") == 0

        # Accepted spellings: DPM++ 2M Karras → dpmpp_2m + karras; cfgScale and batch_size aliases.
        gid = (await r.generate(body={"prompt": "x", "parameters": {
            "sampler": "DPM++ 2M Karras", "cfgScale": 5, "batch_size": 2, "seed": 7,
            "checkpoint": "v1-5-pruned-emaonly.safetensors", "width": 64, "height": 64}}))["generationId"]
        g = await r.final(gid)
        assert g["status"] == "completed" and len(g["imageUrls"]) == 2
        assert g["parameters"]["sampler"] == "dpmpp_2m" and g["parameters"]["scheduler"] == "karras"
        assert g["seed"] == 7 and g["checkpoint"] == "v1-5-pruned-emaonly.safetensors"
        assert g["parameters"]["cfg_scale"] == 5 and g["parameters"]["batchSize"] == 2

        # ComfyUI's own refusal: 422 with its node errors, and the row failed, not processing.
        async with r.api.post("/api/workflows", json={"name": "bad denoise", "graph": _graph(denoise=2.0)}) as resp:
            wf = await resp.json()
            assert resp.status == 201, wf
        data = await refused(r.sid, {"prompt": "x", "workflowId": wf["id"]}, 422, "GENERATION_FAILED")
        assert data["nodeErrors"]["3"]["errors"][0]["type"] == "value_bigger_than_max"
        assert "denoise" in data["details"]
        rows = await (await r.api.get(f"/api/comfy/{r.sid}/generations?status=failed")).json()
        assert len(rows) == 1 and "refused" in rows[0]["error"] and rows[0]["workflowId"] == wf["id"]
        assert [e["data"]["status"] for e in r.of(rows[0]["id"], "generation_failed")] == ["failed"]


async def test_unavailable_comfy_is_503_and_the_row_fails(tmp_path):
    async with rig(tmp_path) as r:
        busy = (await r.generate(body={"prompt": "busy", "parameters": {"steps": 100}}))["generationId"]
        await r.status(busy, "processing")
        # The post is cut off, and so are the looks into /queue before a re-post: the
        # daemon cannot know whether ComfyUI has it. It fails the row and takes the
        # prompt back out of ComfyUI's queue, so nothing runs unseen. (aiohttp retries an
        # idempotent GET once on a reused connection: two drops per look.)
        r.sim.drop_next_response("/prompt", 1)
        r.sim.drop_next_response("/queue", 4)
        data = await r.generate(body={"prompt": "x"}, expect=503)
        assert data["code"] == "COMFY_UNAVAILABLE"
        rows = await (await r.api.get(f"/api/comfy/{r.sid}/generations")).json()
        assert rows[0]["status"] == "failed" and rows[0]["error"].startswith("ComfyUI unavailable")
        assert rows[0]["queueId"] not in r.sim.pending_prompt_ids
        assert (await r.final(busy))["status"] == "completed"
        assert rows[0]["queueId"] not in r.sim.history

        # The answer is lost but the prompt visibly runs: that is a success, not a 503.
        r.sim.drop_next_response("/prompt", 1)
        r.sim.drop_next_response("/queue", 4)
        gid = (await r.generate(body={"prompt": "y", "parameters": {"steps": 2}}))["generationId"]
        assert (await r.final(gid))["status"] == "completed"


async def test_cancel_pending_and_running_leaves_the_others(tmp_path):
    async with rig(tmp_path, step_time=0.05) as r:
        body = {"prompt": "long", "parameters": {"steps": 40}}  # 2 s each
        ids = [(await r.generate(body={**body, "prompt": f"long {i}"}))["generationId"] for i in range(3)]
        first, pending, last = ids
        await r.status(first, "processing")
        g_pending = await r.generation(pending)
        assert g_pending["status"] == "queued" and g_pending["queueId"] in r.sim.pending_prompt_ids

        async with r.api.delete(f"/api/generations/{pending}") as resp:
            cancelled = await resp.json()
            assert resp.status == 200, cancelled
        assert cancelled["status"] == "cancelled" and "cancelled by" in cancelled["error"]
        assert g_pending["queueId"] not in r.sim.pending_prompt_ids
        assert r.sim.running_prompt_id == (await r.generation(first))["queueId"]
        assert (await r.generation(first))["status"] == "processing"
        assert (await r.generation(last))["status"] == "queued"

        running_qid = (await r.generation(first))["queueId"]
        async with r.api.delete(f"/api/generations/{first}") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
        await wait_for(lambda: running_qid in r.sim.history)
        assert r.sim.history[running_qid]["status"]["messages"][-1][0] == "execution_interrupted"
        assert (await r.final(last))["status"] == "completed"  # the last one ran normally
        assert (await r.generation(first))["status"] == "cancelled"
        assert (await r.generation(pending))["status"] == "cancelled"

        for gid in (first, pending):
            failed = r.of(gid, "generation_failed")
            assert [e["data"]["status"] for e in failed] == ["cancelled"]
            assert not r.of(gid, "generation_completed")
        async with r.api.delete(f"/api/generations/{first}") as resp:
            assert resp.status == 409 and (await resp.json())["code"] == "CONFLICT"
        async with r.api.delete("/api/generations/999999") as resp:
            assert resp.status == 404 and (await resp.json())["code"] == "NOT_FOUND"
        audit = await r.daemon.app[keys.DB].fetchall(
            "SELECT target_id, outcome FROM audit_logs WHERE action = 'generation.cancel' ORDER BY id")
        assert [a["outcome"] for a in audit] == ["success", "success", "failure", "failure"]


async def test_server_death_mid_run_fails_everything_on_it(tmp_path):
    async with rig(tmp_path, step_time=0.05) as r:
        body = {"prompt": "doomed", "parameters": {"steps": 150}}
        running = (await r.generate(body=body))["generationId"]
        waiting = (await r.generate(body=body))["generationId"]
        await r.status(running, "processing")
        killed_at = time.monotonic()
        await r.sim.kill()
        for gid in (running, waiting):
            g = await r.final(gid, timeout=5)
            assert g["status"] == "failed", g
            assert g["error"].startswith("server became unready"), g["error"]
        deadline = r.daemon.settings.comfy.ready_deadline
        assert time.monotonic() - killed_at < deadline + 1
        assert await r.daemon.app[keys.DB].scalar(
            "SELECT count(*) FROM generations WHERE status IN ('queued', 'processing')") == 0
        assert [e["data"]["status"] for e in r.of(running, "generation_failed")] == ["failed"]
        data = await r.generate(body={"prompt": "x"}, expect=409)
        assert data["code"] == "SERVER_NOT_READY"

        # It comes back: ready again, and generations work again.
        await r.sim.start("127.0.0.1", r.sim.port)
        await wait_ready(r.api, r.sid, timeout=10)


async def test_server_destroyed_mid_run(tmp_path):
    async with rig(tmp_path, step_time=0.05) as r:
        gid = (await r.generate(body={"prompt": "x", "parameters": {"steps": 100}}))["generationId"]
        await r.status(gid, "processing")
        async with r.api.delete(f"/api/vast-servers/{r.sid}") as resp:
            assert resp.status == 200
        g = await r.final(gid, timeout=5)
        assert g["status"] == "failed" and g["error"] == "server became unready: the server was destroyed"


async def test_execution_error_fails_with_comfy_reason(tmp_path):
    async with rig(tmp_path) as r:
        r.sim.fail_next_execution("CUDA error: out of memory")
        gid = (await r.generate(body={"prompt": "x", "parameters": {"steps": 3}}))["generationId"]
        g = await r.final(gid)
        assert g["status"] == "failed"
        assert "KSampler" in g["error"] and "CUDA error: out of memory" in g["error"]
        assert r.of(gid)[-1]["type"] == "generation_failed"
        # The next one is fine, and the stored seed makes it repeatable: same pixels
        # (the PNG metadata differs: it names the generation).
        body = {"prompt": "same", "parameters": {"seed": 42, "steps": 2}}
        a = await r.final((await r.generate(body=body))["generationId"])
        b = await r.final((await r.generate(body={"prompt": "same", "parameters": {"seed": a["seed"], "steps": 2}}))[
            "generationId"])
        c = await r.final((await r.generate(body={"prompt": "same", "parameters": {"seed": 43, "steps": 2}}))[
            "generationId"])
        assert a["status"] == b["status"] == c["status"] == "completed"
        pixels = []
        for g in (a, b, c):
            async with r.api.get(g["imageUrls"][0]) as resp:
                with Image.open(io.BytesIO(await resp.read())) as img:
                    pixels.append(img.tobytes())
        assert pixels[0] == pixels[1] != pixels[2]


async def test_estimated_time_from_recent_durations(tmp_path):
    async with rig(tmp_path, step_time=0.01) as r:
        for i in range(4):
            await r.final((await r.generate(body={"prompt": f"p{i}", "parameters": {"steps": 3}}))["generationId"])
        data = await r.generate(body={"prompt": "next"})
        assert re.fullmatch(r"\d+-\d+ seconds", data["estimatedTime"]) and data["estimatedTime"] != "30-60 seconds"
        await r.final(data["generationId"])


async def test_watcher_reconnects_after_a_websocket_drop(tmp_path):
    async with rig(tmp_path, step_time=0.03) as r:
        gid = (await r.generate(body={"prompt": "x", "parameters": {"steps": 40}}))["generationId"]
        await r.status(gid, "processing")
        await r.sim.drop_websockets()  # a blip, not a death: the server still answers
        g = await r.final(gid)
        assert g["status"] == "completed" and g["imageUrls"]
        s = await (await r.api.get(f"/api/vast-servers/{r.sid}")).json()
        assert s["setupStatus"] == "ready"


async def test_image_route_refuses_anything_but_a_content_name(tmp_path):
    async with rig(tmp_path) as r:
        g = await r.final((await r.generate(body={"prompt": "x", "parameters": {"steps": 1}}))["generationId"])
        sha = g["images"][0]["sha256"]
        secret = r.daemon.settings.state_dir / "socialsync.db"
        assert secret.exists()
        for path in ["/api/images/..%2F..%2Fsocialsync.db", "/api/images/%2e%2e%2fadmin.key",
                     f"/api/images/{sha.upper()}.png", f"/api/images/{sha}.exe", f"/api/images/{sha[:-1]}.png",
                     f"/api/images/{'0' * 64}.png", "/api/images/admin.key", f"/api/images/{sha}.png.part",
                     f"/api/images/{g['id']}/1", f"/api/images/{g['id']}/-1", "/api/images/999/0",
                     f"/api/images/{g['id']}/..%2F..%2Fadmin.key"]:
            async with r.api.get(path) as resp:
                body = await resp.read()
                assert resp.status == 404, (path, resp.status)
                assert b"SQLite" not in body and b"PNG" not in body
        async with r.api.get(f"/api/images/{g['id']}/0") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
            assert hashlib.sha256(await resp.read()).hexdigest() == sha


async def test_ten_thousand_rows_paged_with_each_filter(tmp_path):
    async with rig(tmp_path, servers=2) as r:
        db_path = r.daemon.settings.db_path
        statuses = ["completed", "completed", "failed", "cancelled", "completed"]
        now = now_iso()

        def fill() -> None:
            with sqlite3.connect(db_path) as conn:
                conn.executemany(
                    "INSERT INTO generations (server_id, prompt, status, progress, created_at, completed_at, "
                    "parameters) VALUES (?, ?, ?, 100, ?, ?, '{}')",
                    ((r.server_ids[i % 2], f"prompt {i}", statuses[i % 5], now, now) for i in range(10_000)))
        await asyncio.to_thread(fill)
        sid = r.server_ids[0]
        mine = await r.daemon.app[keys.DB].fetchall(
            "SELECT id, status FROM generations WHERE server_id = ? ORDER BY id DESC", (sid,))
        assert len(mine) == 5000

        async def page(query: str, server: int = sid) -> list[dict]:
            async with r.api.get(f"/api/comfy/{server}/generations{query}") as resp:
                data = await resp.json()
                assert resp.status == 200, data
                return data

        default = await page("")
        assert [g["id"] for g in default] == [m["id"] for m in mine[:50]]  # seed defaults: 50, offset 0
        assert set(default[0]) >= {"id", "serverId", "prompt", "status", "imageUrls", "createdAt", "completedAt"}
        assert [g["id"] for g in await page("?limit=10&offset=4990")] == [m["id"] for m in mine[4990:5000]]
        assert await page("?offset=5000") == []
        for status in ("completed", "failed", "cancelled"):
            expected = [m["id"] for m in mine if m["status"] == status]
            got = await page(f"?status={status}&limit=100&offset=20")
            assert [g["id"] for g in got] == expected[20:120]
            assert all(g["status"] == status for g in got)
            last = await page(f"?status={status}&limit=500&offset={len(expected) - 3}")
            assert [g["id"] for g in last] == expected[-3:]
        assert await page("?status=processing") == []
        keyset = await page(f"?limit=5&beforeId={mine[100]['id']}")
        assert [g["id"] for g in keyset] == [m["id"] for m in mine[101:106]]
        other = await page("?limit=3", server=r.server_ids[1])
        assert all(g["serverId"] == r.server_ids[1] for g in other)
        everything = await (await r.api.get("/api/generations?limit=7&status=failed")).json()
        assert len(everything) == 7 and {g["status"] for g in everything} == {"failed"}

        for query, path in [("?limit=0", "limit"), ("?limit=501", "limit"), ("?offset=-1", "offset"),
                            ("?status=done", "status"), ("?sort=id", "sort")]:
            async with r.api.get(f"/api/comfy/{sid}/generations{query}") as resp:
                data = await resp.json()
                assert resp.status == 400 and data["code"] == "VALIDATION_ERROR"
                assert path in [f["path"] for f in data["fields"]]
        async with r.api.get("/api/comfy/777/generations") as resp:
            assert resp.status == 404 and (await resp.json())["code"] == "SERVER_NOT_FOUND"

        # Every page query walks one index, newest first, with no sort step.
        with sqlite3.connect(db_path) as conn:
            for server, status, before in [(True, False, False), (True, True, False), (False, True, False),
                                           (True, False, True), (True, True, True)]:
                sql = gstore.page_sql(server_id=server, status=status, before_id=before)
                args = [a for a, on in ((sid, server), ("failed", status), (10**9, before)) if on] + [50, 0]
                plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
                assert "TEMP B-TREE" not in plan, plan
                index = ("generations_server_status_id" if server and status else
                         "generations_server_id" if server else "generations_status_id")
                assert f"COVERING INDEX {index}" in plan, plan

        started = time.perf_counter()
        for offset in (0, 2500, 4950):
            await page(f"?limit=50&offset={offset}&status=completed")
        assert time.perf_counter() - started < 2.0


async def test_concurrent_generations_on_two_servers(tmp_path):
    async with rig(tmp_path, servers=2, step_time=0.005) as r:
        bodies = [{"prompt": f"p{i}", "parameters": {"steps": 4, "width": 64, "height": 64}} for i in range(12)]
        results = await asyncio.gather(*(r.generate(server_id=r.server_ids[i % 2], body=b)
                                         for i, b in enumerate(bodies)))
        finals = [await r.final(x["generationId"]) for x in results]
        assert all(f["status"] == "completed" and len(f["imageUrls"]) == 1 for f in finals)
        assert len({f["imageUrls"][0] for f in finals}) == 12
        assert {f["serverId"] for f in finals} == set(r.server_ids)
        service = r.daemon.app[keys.GENERATIONS]
        assert not service._tracks and not service._by_generation  # nothing left behind
        waited = await service.wait(finals[0]["id"], timeout=1)
        assert waited.status == "completed"


async def _attach_dead(api) -> int:
    async with api.post("/api/vast-servers/attach",
                        json={"name": "dead", "comfyUrl": f"http://127.0.0.1:{free_port()}"}) as r:
        return (await r.json())["id"]


def _graph(denoise: float = 1.0) -> dict:
    from socialsync.daemon.sim.comfyui import txt2img_graph

    return txt2img_graph(ckpt="sd_xl_base_1.0.safetensors", denoise=denoise)


def test_final_statuses_are_the_model_ones():
    from socialsync.common.generations import FINAL_STATUSES

    assert set(FINAL) == {str(s) for s in FINAL_STATUSES}


async def test_roles_viewer_reads_operator_writes(tmp_path):
    async with rig(tmp_path) as r:
        keys_made = {}
        for role in ("viewer", "operator"):
            async with r.api.post("/api/api-keys", json={"name": role, "role": role}) as resp:
                keys_made[role] = (await resp.json())["key"]
        async with r.daemon.session(keys_made["viewer"]) as viewer, r.daemon.session(keys_made["operator"]) as op:
            async with viewer.post(f"/api/comfy/{r.sid}/generate", json={"prompt": "x"}) as resp:
                assert resp.status == 403 and (await resp.json())["code"] == "FORBIDDEN"
            async with viewer.post("/api/workflows", json={"name": "w", "graph": _graph()}) as resp:
                assert resp.status == 403
            async with op.post(f"/api/comfy/{r.sid}/generate", json={"prompt": "x", "parameters": {"steps": 1}}) as resp:
                gid = (await resp.json())["generationId"]
                assert resp.status == 202
            await r.final(gid)
            async with viewer.get(f"/api/comfy/{r.sid}/generations") as resp:
                assert resp.status == 200 and (await resp.json())[0]["principal"] == "operator"
            async with viewer.get(f"/api/generations/{gid}") as resp:
                image = (await resp.json())["imageUrls"][0]
            async with viewer.get(image) as resp:
                assert resp.status == 200
            async with viewer.delete(f"/api/generations/{gid}") as resp:
                assert resp.status == 403
