"""Secrets (issue 12): a full run of a real ``socialsyncd`` process with known fake
secrets configured (Vast key, ComfyUI token, hub tokens, webhook secret) through a
launch, an attach, a generation, a destroy and failed logins; then every log line,
response (body and headers), event, audit row and byte of the database (and its WAL)
is searched for them. 0 hits."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

import aiohttp
import pytest
from fleet_helpers import wait_for
from gen_helpers import SEED_EXAMPLE
from ops_daemon import NO_LIMITS, DaemonProcess

from socialsync.daemon.sim.comfyui import ComfySim
from socialsync.daemon.sim.vast import VastSim, demo_catalog

pytestmark = pytest.mark.timeout(60)

SECRETS = {
    "vast key": "vastkey-SECRET-7c1f0a9e3b5d4e2f8a6c",
    "comfy token": "comfytok-SECRET-2b9d4f6a8c0e1a3c5e7f",
    "hf token": "hf_SECRETabcdefghijklmnopqrstuvwxyz012",
    "civitai token": "civitai-SECRET-0f1e2d3c4b5a69788796",
    "webhook secret": "whsec-SECRET-a1b2c3d4e5f60718293a",
}


class Recorder:
    """Every response the client saw, headers and body, as text."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def call(self, s: aiohttp.ClientSession, method: str, path: str, **kw) -> tuple[int, object]:
        async with s.request(method, path, **kw) as r:
            raw = await r.read()
            self.seen.append(f"{method} {path} {r.status} {dict(r.headers)} {raw.decode(errors='replace')}")
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, None


async def test_no_secret_anywhere_after_a_full_run(tmp_path):
    comfy = ComfySim(tmp_path / "models", step_time=0.0, seed_models=True, base_dir=tmp_path / "comfy",
                     bearer_token=SECRETS["comfy token"])
    await comfy.start("127.0.0.1", 0)
    env = {
        **NO_LIMITS,
        "SOCIALSYNC_LOG_LEVEL": "DEBUG",
        "VAST_API_KEY": SECRETS["vast key"],
        "SOCIALSYNC_COMFY__TOKEN": SECRETS["comfy token"],
        "SOCIALSYNC_COMFY__PROBE_INTERVAL": "0.05",
        "SOCIALSYNC_COMFY__PROBE_INTERVAL_MAX": "0.2",
        "SOCIALSYNC_COMFY__READY_DEADLINE": "5",
        "HF_TOKEN": SECRETS["hf token"],
        "CIVITAI_TOKEN": SECRETS["civitai token"],
        "SOCIALSYNC_SCHEDULER__WEBHOOK_SECRET": SECRETS["webhook secret"],
        "SOCIALSYNC_VAST__PACING": "false",
        "SOCIALSYNC_VAST__SYNC_INTERVAL": "0.3",
        "SOCIALSYNC_VAST__SYNC_INTERVAL_TRANSITIONING": "0.1",
        "SOCIALSYNC_VAST__RETRY_BASE": "0.05",
        "SOCIALSYNC_VAST__MIN_RELIABILITY": "0.0",
    }
    rec = Recorder()
    events: list[str] = []
    try:
        async with VastSim(api_key=SECRETS["vast key"], boot_seconds=0.2, catalog=demo_catalog()) as vast:
            env["SOCIALSYNC_VAST__BASE_URL"] = vast.base_url
            with DaemonProcess(tmp_path, env=env) as d:
                d.wait_listening(20)
                bearer = {"Authorization": f"Bearer {d.admin_key}"}
                async with aiohttp.ClientSession(d.base_url, headers=bearer) as s:
                    ws = await s.ws_connect("/ws")

                    async def collect() -> None:
                        async for msg in ws:
                            events.append(msg.data)

                    reader = asyncio.create_task(collect())
                    status, offers = await rec.call(s, "GET", "/api/vast-offers")
                    assert status == 200 and offers, offers
                    status, launched = await rec.call(s, "POST", "/api/vast-servers",
                                                      json={"offerId": offers[0]["offerId"], "image": "comfy:1",
                                                            "env": {"HF_HOME": "/x"}})
                    assert status == 201, launched
                    status, attached = await rec.call(s, "POST", "/api/vast-servers/attach",
                                                      json={"name": "own", "comfyUrl": comfy.base_url})
                    assert status == 201, attached
                    sid = attached["id"]

                    async def ready() -> bool:
                        return (await rec.call(s, "GET", f"/api/vast-servers/{sid}"))[1]["setupStatus"] == "ready"
                    await wait_for(ready, timeout=15, interval=0.1)
                    status, gen = await rec.call(s, "POST", f"/api/comfy/{sid}/generate", json=SEED_EXAMPLE)
                    assert status == 202, gen

                    async def done() -> bool:
                        g = (await rec.call(s, "GET", f"/api/generations/{gen['generationId']}"))[1]
                        return g["status"] in ("completed", "failed")
                    await wait_for(done, timeout=15, interval=0.1)
                    for path in ("/api/vast-servers", "/api/generations", "/api/audit-logs?limit=500", "/api/stats",
                                 f"/api/comfy/{sid}/models", f"/api/comfy/{sid}/available-models",
                                 "/api/events/snapshot", "/api/events/info", "/api/openapi.json", "/metrics",
                                 "/api/server-analytics", "/api/queue", "/api/webhooks/deliveries"):
                        await rec.call(s, "GET", path)
                    # Secrets where they do not belong: as credentials, in bodies.
                    await rec.call(s, "GET", "/api/auth/me", headers={"Authorization": f"Bearer {SECRETS['vast key']}"})
                    await rec.call(s, "POST", "/api/auth/login",
                                   json={"username": "x", "password": SECRETS["hf token"]})
                    await rec.call(s, "POST", "/api/workflows", json={"name": SECRETS["civitai token"][:0] + "w"})
                    await rec.call(s, "DELETE", f"/api/vast-servers/{launched['id']}")
                    await asyncio.sleep(0.5)
                    await ws.close()
                    await reader
                d.signal(signal.SIGTERM)
                assert d.wait(20) == 0
            assert any(SECRETS["vast key"] in str(r.headers) + str(r.query) for r in vast.requests), \
                "the daemon never used its Vast key: nothing was tested"
    finally:
        await comfy.stop()

    assert len(events) > 5 and len(rec.seen) > 20
    db = sqlite3.connect(d.db_path)
    audit = json.dumps(db.execute("SELECT * FROM audit_logs").fetchall())
    dump = "\n".join(db.iterdump())
    db.close()
    raw_db = b"".join(p.read_bytes() for p in d.state_dir.glob("socialsync.db*"))
    places = {
        "log": d.stderr(),
        "responses": "\n".join(rec.seen),
        "events": "\n".join(events),
        "audit rows": audit,
        "database dump": dump,
        "database files": raw_db.decode("latin-1"),
    }
    hits = {(name, where): text.count(value) for name, value in SECRETS.items()
            for where, text in places.items() if value in text}
    print(f"secrets: {len(SECRETS)} secrets x {len(places)} places, {sum(hits.values())} hits")
    assert " DEBUG " in places["log"]
    assert hits == {}
