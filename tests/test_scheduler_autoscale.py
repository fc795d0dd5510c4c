"""The optional autoscaling rule: with an empty fleet and work waiting longer than the
threshold, the scheduler rents the cheapest matching offer and the work runs on it."""

from __future__ import annotations

import asyncio

from fleet_helpers import fleet, wait_for

from socialsync.daemon import keys
from socialsync.daemon.demo import DemoComfyProvider

FAST = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 0.5, "ready_deadline": 10}


async def test_autoscale_rents_the_cheapest_matching_offer_and_the_queue_drains(tmp_path):
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    scheduler = {"autoscale": True, "queue_wait_threshold": 0.3, "autoscale_cooldown": 60,
                 "autoscale_gpu_name": "RTX 3090", "autoscale_max_servers": 1, "safety_interval": 0.2}
    async with fleet(tmp_path, sim_kw={"comfy_provider": provider}, comfy=FAST, scheduler=scheduler) as (sim, d), \
            d.session() as api:
        async with api.get("/api/vast-offers", params={"gpuName": "RTX 3090", "order": "price"}) as r:
            cheapest = (await r.json())[0]
        async with api.post("/api/generate", json={"prompt": "a harbour at dawn",
                                                   "parameters": {"steps": 1, "width": 64, "height": 64}}) as r:
            assert r.status == 202, await r.text()
            gid = (await r.json())["generationId"]

        async def done():
            async with api.get(f"/api/generations/{gid}") as resp:
                g = await resp.json()
            return g if g["status"] in ("completed", "failed", "cancelled") else None

        g = await wait_for(done, timeout=40, interval=0.2)
        assert g["status"] == "completed", g
        servers = await (await api.get("/api/vast-servers")).json()
        assert len(servers) == 1 and servers[0]["name"] == f"autoscale-{cheapest['offerId']}"
        assert g["serverId"] == servers[0]["id"]
        assert [c.json["label"] for c in sim.requests_for("create")] and len(sim.requests_for("create")) == 1
        audit = await (await api.get("/api/audit-logs", params={"action": "server.autoscale"})).json()
        assert len(audit) == 1 and audit[0]["actor"] == "system"
        assert audit[0]["details"]["offerId"] == cheapest["offerId"]
    await provider.close()


async def test_autoscale_waits_for_a_booting_server_instead_of_renting_more(tmp_path):
    """No cooldown, room for three servers, work waiting: while the first rented server
    boots (loading at Vast, then installing) the rule rents nothing more."""
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    scheduler = {"autoscale": True, "queue_wait_threshold": 0.1, "autoscale_cooldown": 0,
                 "autoscale_max_servers": 3, "safety_interval": 0.1}
    async with fleet(tmp_path, sim_kw={"comfy_provider": provider, "boot_seconds": 3.0}, comfy=FAST,
                     scheduler=scheduler) as (sim, d), d.session() as api:
        async with api.post("/api/generate", json={"prompt": "a harbour at dawn",
                                                   "parameters": {"steps": 1, "width": 64, "height": 64}}) as r:
            gid = (await r.json())["generationId"]

        async def first_booting():
            servers = await (await api.get("/api/vast-servers")).json()
            return servers if servers and servers[0]["status"] == "loading" else None

        await wait_for(first_booting, timeout=15, interval=0.05)

        async def completed():
            async with api.get(f"/api/generations/{gid}") as resp:
                g = await resp.json()
            return g if g["status"] == "completed" else None

        await wait_for(completed, timeout=40, interval=0.2)
        assert len(sim.requests_for("create")) == 1  # the wait through loading/installing rented nothing more
    await provider.close()


async def test_autoscale_rents_nothing_for_work_no_server_of_the_fleet_could_run(tmp_path):
    # A ready server, and an item asking for a checkpoint it does not have: one more
    # server from the same image would not have it either, so nothing is rented.
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    scheduler = {"autoscale": True, "queue_wait_threshold": 0.1, "autoscale_cooldown": 0,
                 "autoscale_max_servers": 3, "safety_interval": 0.1}
    async with fleet(tmp_path, sim_kw={"comfy_provider": provider}, comfy=FAST, scheduler=scheduler) as (sim, d), \
            d.session() as api:
        offers = await (await api.get("/api/vast-offers", params={"order": "price"})).json()
        async with api.post("/api/vast-servers", json={"offerId": offers[0]["offerId"]}) as r:
            sid = (await r.json())["id"]

        async def ready():
            async with api.get(f"/api/vast-servers/{sid}") as resp:
                return (await resp.json())["setupStatus"] == "ready"

        await wait_for(ready, timeout=15)
        async with api.post("/api/generate", json={"prompt": "a harbour",
                                                   "parameters": {"checkpoint": "nowhere.safetensors"}}) as r:
            assert r.status == 202, await r.text()
        scheduler_svc = d.app[keys.SCHEDULER]
        await asyncio.sleep(0.5)  # well past the threshold
        assert await scheduler_svc.oldest_wait() == 0.0
        assert await scheduler_svc.autoscale_once() is None
        assert len(sim.requests_for("create")) == 1  # only the one launched above
    await provider.close()
