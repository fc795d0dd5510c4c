"""A real daemon process killed with SIGKILL while generations are in flight, then
started again on the same state directory: every generation reaches its right end."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import uuid

import aiohttp
from fleet_helpers import wait_for
from gen_helpers import FINAL, wait_ready
from ops_daemon import NO_LIMITS, DaemonProcess

from socialsync.common.wire import now_iso
from socialsync.daemon.services.generations import LOST_AFTER_RESTART
from socialsync.daemon.sim.comfyui import ComfySim

ENV = {**NO_LIMITS, "SOCIALSYNC_COMFY__PROBE_INTERVAL": "0.05", "SOCIALSYNC_COMFY__HEALTH_INTERVAL": "0.5",
       "SOCIALSYNC_COMFY__READY_DEADLINE": "5", "SOCIALSYNC_COMFY__REQUEST_TIMEOUT": "5",
       "SOCIALSYNC_LOG_LEVEL": "DEBUG"}


async def start(tmp_path) -> DaemonProcess:
    proc = DaemonProcess(tmp_path, env=ENV)
    await asyncio.to_thread(lambda: proc.start().wait_listening(30))
    return proc


def session(proc: DaemonProcess) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=proc.base_url, headers={"Authorization": f"Bearer {proc.admin_key}"})


async def generate(api, sid: int, prompt: str, steps: int) -> dict:
    async with api.post(f"/api/comfy/{sid}/generate", json={"prompt": prompt, "parameters": {"steps": steps}}) as r:
        data = await r.json()
        assert r.status == 202, data
        return data


async def one(api, gid: int) -> dict:
    async with api.get(f"/api/generations/{gid}") as r:
        assert r.status == 200
        return await r.json()


async def test_sigkill_mid_generation_then_restart_reconciles_everything(tmp_path):
    sim = ComfySim(tmp_path / "models", step_time=0.03, seed_models=True, base_dir=tmp_path / "comfy")
    await sim.start("127.0.0.1", 0)
    first = second = None
    try:
        first = await start(tmp_path)
        async with session(first) as api:
            async with api.post("/api/vast-servers/attach", json={"name": "box", "comfyUrl": sim.base_url}) as r:
                sid = (await r.json())["id"]
            await wait_ready(api, sid, timeout=15)

            done_before = await generate(api, sid, "finished before the crash", 3)
            await wait_for(lambda: _status(api, done_before["generationId"], "completed"), timeout=15)
            during = await generate(api, sid, "finishes while the daemon is down", 10)
            long = await generate(api, sid, "still running at restart", 150)
            deleted = await generate(api, sid, "deleted on the server while the daemon is down", 5)
            pending = await generate(api, sid, "still pending at restart", 5)
            await wait_for(lambda: _status(api, during["generationId"], "processing"), timeout=15)

        await asyncio.to_thread(first.kill)  # SIGKILL: no cleanup of any kind
        assert first.proc is not None and first.proc.returncode == -9

        # While it is down: one prompt is deleted on the server, and a row whose prompt
        # was never posted (a crash between the row and the post) is left behind.
        async with aiohttp.ClientSession() as raw, raw.post(f"{sim.base_url}/queue",
                                                            json={"delete": [deleted["queueId"]]}) as r:
            assert r.status == 200
        never_sent, orphan = _insert_rows(first.db_path, sid)
        await wait_for(lambda: during["queueId"] in sim.history and sim.running_prompt_id == long["queueId"],
                       timeout=15)
        sim.step_time = 0.5  # "long" keeps running however slowly the daemon comes back

        restarted_at = now_iso()
        second = await start(tmp_path)
        async with session(second) as api:
            ids = [x["generationId"] for x in (done_before, during, long, deleted, pending)] + [never_sent, orphan]
            # The reconcile handles one server's rows in order: the last one failing means it is done.
            await wait_for(lambda: _status(api, never_sent, "failed"), timeout=30)
            assert (await one(api, long["generationId"]))["status"] == "processing"
            assert (await one(api, pending["generationId"]))["status"] == "queued"
            sim.step_time = 0.003

            async def all_final():
                rows = [await one(api, gid) for gid in ids]
                return rows if all(g["status"] in FINAL for g in rows) else None

            rows = await wait_for(all_final, timeout=30)
            by_id = {g["id"]: g for g in rows}
            for item in (done_before, during, long, pending):
                g = by_id[item["generationId"]]
                assert g["status"] == "completed", g
                assert len(g["imageUrls"]) == 1
                expected = _sim_output(sim, g["queueId"])
                async with api.get(g["imageUrls"][0]) as r:
                    assert r.status == 200 and r.content_type == "image/png"
                    body = await r.read()
                assert body == expected and g["images"][0]["sha256"] == hashlib.sha256(expected).hexdigest()
            assert by_id[deleted["generationId"]]["status"] == "failed"
            assert by_id[deleted["generationId"]]["error"] == LOST_AFTER_RESTART
            assert by_id[never_sent]["error"] == LOST_AFTER_RESTART
            assert by_id[orphan]["status"] == "failed" and "server is gone" in by_id[orphan]["error"]
            assert by_id[during["generationId"]]["progress"] == 100
            # Timings of what ran while the daemon was away come from ComfyUI's own clock.
            assert by_id[long["generationId"]]["startedAt"] < restarted_at
            assert by_id[during["generationId"]]["startedAt"] < by_id[during["generationId"]]["completedAt"] < restarted_at
            log = second.stderr()
            assert "reconciling generations=6 servers=2" in log
            assert f"generation resumed generation_id={long['generationId']}" in log
            assert f"generation resumed generation_id={pending['generationId']}" in log

            # And the restarted daemon takes new work on the same server.
            again = await generate(api, sid, "after the restart", 2)
            await wait_for(lambda: _status(api, again["generationId"], "completed"), timeout=15)
        with sqlite3.connect(second.db_path) as conn:
            assert conn.execute(
                "SELECT count(*) FROM generations WHERE status IN ('queued', 'processing')").fetchone()[0] == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                await asyncio.to_thread(proc.kill)
        await sim.stop()


async def _status(api, gid: int, status: str) -> bool:
    return (await one(api, gid))["status"] == status


def _insert_rows(db_path, sid: int) -> tuple[int, int]:
    now = now_iso()
    with sqlite3.connect(db_path) as conn:
        cur = conn.execute("INSERT INTO generations (server_id, prompt, status, queue_id, created_at) "
                           "VALUES (?, 'never sent', 'queued', ?, ?)", (sid, str(uuid.uuid4()), now))
        never_sent = cur.lastrowid
        cur = conn.execute("INSERT INTO generations (server_id, prompt, status, queue_id, created_at) "
                           "VALUES (NULL, 'no server', 'processing', ?, ?)", (str(uuid.uuid4()), now))
        return never_sent, cur.lastrowid


def _sim_output(sim: ComfySim, queue_id: str) -> bytes:
    files = [f for node in sim.history[queue_id]["outputs"].values() for f in node.get("images", [])]
    assert len(files) == 1
    return (sim.output_dir / files[0]["subfolder"] / files[0]["filename"]).read_bytes()
