"""The fleet over real sockets: test client → daemon → Vast simulator."""

from __future__ import annotations

import asyncio

from fleet_helpers import VAST_KEY, fleet, server, wait_for
from harness import running_daemon

from socialsync.daemon import keys
from socialsync.daemon.sim.vast import VastSim


async def first_offer(api, **params) -> dict:
    async with api.get("/api/vast-offers", params={"order": "price", **params}) as r:
        assert r.status == 200, await r.text()
        offers = await r.json()
    assert offers
    return offers[0]


async def launch(api, offer_id: str, **body) -> dict:
    async with api.post("/api/vast-servers", json={"offerId": offer_id, "image": "comfy/comfy:1", **body}) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def test_search_offers_with_filters(tmp_path):
    async with fleet(tmp_path) as (sim, d), d.session() as api:
        async with api.get("/api/vast-offers", params={"gpuName": "RTX 4090", "maxPrice": "3",
                                                       "order": "price", "limit": "5"}) as r:
            offers = await r.json()
        assert offers and len(offers) <= 5
        assert {o["gpu"] for o in offers} == {"RTX 4090"}
        prices = [float(o["pricePerHour"]) for o in offers]
        assert prices == sorted(prices) and max(prices) <= 3
        for o in offers:
            assert o["pricePerDay"] and float(o["pricePerDay"]) == round(float(o["pricePerHour"]) * 24, 4)
            assert set(o) >= {"offerId", "gpuCount", "gpuRam", "ram", "disk", "location", "reliability"}
        body = sim.requests_for("bundles")[-1].json
        assert body["gpu_name"] == {"eq": "RTX 4090"} and body["dph_total"] == {"lte": 3.0}
        assert body["verified"] == {"eq": True} and body["rented"] == {"eq": False}
        assert body["order"] == [["dph_total", "asc"]] and body["limit"] == 5
        # region and GPU count filters
        async with api.get("/api/vast-offers", params={"region": "europe", "minGpus": "2"}) as r:
            offers = await r.json()
        assert all(o["gpuCount"] >= 2 and o["country"] in ("DE", "FI", "PL", "NL") for o in offers)
        async with api.get("/api/vast-offers", params={"region": "atlantis"}) as r:
            assert r.status == 400 and (await r.json())["code"] == "VALIDATION_ERROR"
        async with api.get("/api/vast-offers", params={"minGpus": "zero"}) as r:
            assert r.status == 400 and "minGpus" in (await r.json())["details"]


async def test_launch_runs_then_stop_start_and_destroy(tmp_path):
    async with fleet(tmp_path) as (sim, d), d.session() as api:
        bus = d.app[keys.BUS].subscribe(1000)
        offer = await first_offer(api)
        launched = await launch(api, offer["offerId"], name="alpha", onStartScript="echo hi")
        assert launched["status"] == "launching" and launched["vastId"]
        assert launched["message"] == "Server launch initiated"
        sid = launched["id"]
        create = sim.requests_for("create")
        assert len(create) == 1
        sent = create[0].json
        assert sent["env"]["-p 8188:8188"] == "1" and sent["onstart"].startswith("echo hi\n# socialsync-deadman")
        assert sent["label"] == d.app[keys.FLEET].label_for(sid) and sent["image"] == "comfy/comfy:1"

        s = await wait_for(lambda: _running(api, sid))
        assert s["serverUrl"].startswith("http://127.0.0.1:") and s["gpu"] == offer["gpu"]
        assert s["sshConnection"].startswith("ssh root@") and " -p " in s["sshConnection"]
        assert s["pricePerHour"] and s["vastId"] == launched["vastId"] and s["name"] == "alpha"
        statuses = []
        while not bus.queue.empty():
            e = bus.queue.get_nowait()
            if e.type == "server_status" and e.data["serverId"] == sid:
                statuses.append(e.data["status"])
        assert statuses[0] == "launching" and statuses[-1] == "running"
        assert set(e for e in statuses) <= {"launching", "loading", "running"}

        async with api.patch(f"/api/vast-servers/{sid}", json={"status": "stopped"}) as r:
            assert r.status == 200 and (await r.json())["status"] == "stopped"
        assert sim.instances[int(launched["vastId"])].intended == "stopped"
        await asyncio.sleep(0.5)
        assert (await server(api, sid))["status"] == "stopped"  # no flapping back to running
        async with api.patch(f"/api/vast-servers/{sid}", json={"status": "running"}) as r:
            assert r.status == 200
        await wait_for(lambda: _running(api, sid))

        while not bus.queue.empty():
            bus.queue.get_nowait()
        async with api.patch(f"/api/vast-servers/{sid}", json={"metadata": {"a": 1}, "name": "beta"}) as r:
            assert (await r.json())["metadata"] == {"a": 1}
        async with api.patch(f"/api/vast-servers/{sid}", json={"metadata": {"b": 2}}) as r:
            body = await r.json()
            assert body["metadata"] == {"a": 1, "b": 2} and body["name"] == "beta"
        async with api.patch(f"/api/vast-servers/{sid}", json={"name": "beta"}) as r:
            assert r.status == 200  # nothing changed: nothing published
        changes = []
        while not bus.queue.empty():
            e = bus.queue.get_nowait()
            if e.type == "server_status" and e.data["serverId"] == sid and (e.data["reason"] or "").startswith("upd"):
                changes.append((e.data["status"], e.data["reason"]))  # (readiness may publish meanwhile)
        assert changes == [("running", "updated: name, metadata"), ("running", "updated: metadata")]

        async with api.get(f"/api/vast-servers/{sid}/history") as r:
            history = [h["status"] for h in await r.json()]
        assert history[0] == "running" and "stopped" in history and history[-1] == "launching"

        async with api.delete(f"/api/vast-servers/{sid}") as r:
            assert r.status == 200
            assert await r.json() == {"success": True, "message": "Server destroyed successfully"}
        assert int(launched["vastId"]) not in sim.instances
        assert (await server(api, sid))["status"] == "destroyed"
        listed = await (await api.get("/api/vast-servers")).json()
        assert sid not in [x["id"] for x in listed]
        listed = await (await api.get("/api/vast-servers", params={"include": "destroyed"})).json()
        assert sid in [x["id"] for x in listed]
        async with api.delete(f"/api/vast-servers/{sid}") as r:
            assert r.status == 200  # destroying again is fine
        audit = await (await api.get("/api/audit-logs", params={"targetType": "server",
                                                                 "targetId": str(sid)})).json()
        actions = [a["action"] for a in audit]
        assert {"server.launch", "server.update", "server.destroy"} <= set(actions)
        assert VAST_KEY not in str(audit)


async def _running(api, sid):
    s = await server(api, sid)
    return s if s["status"] == "running" else None


async def test_destroying_an_instance_already_gone_at_vast_succeeds(tmp_path):
    async with fleet(tmp_path, vast={"sync_interval": 60, "sync_interval_transitioning": 60}) as (sim, d), \
            d.session() as api:
        offer = await first_offer(api)
        launched = await launch(api, offer["offerId"])
        sim.instances.pop(int(launched["vastId"]))  # gone behind our back
        async with api.delete(f"/api/vast-servers/{launched['id']}") as r:
            assert r.status == 200
        assert (await server(api, launched["id"]))["status"] == "destroyed"


async def test_launch_errors(tmp_path):
    async with fleet(tmp_path) as (sim, d), d.session() as api:
        offer = await first_offer(api)
        await launch(api, offer["offerId"])
        before = await (await api.get("/api/vast-servers")).json()
        async with api.post("/api/vast-servers", json={"offerId": offer["offerId"], "image": "x"}) as r:
            body = await r.json()
            assert r.status == 409 and body["code"] == "OFFER_UNAVAILABLE", body
        async with api.post("/api/vast-servers", json={"offerId": "999999999", "image": "x"}) as r:
            assert r.status == 409 and (await r.json())["code"] == "OFFER_UNAVAILABLE"
        assert await (await api.get("/api/vast-servers")).json() == before  # no half-written rows
        async with api.post("/api/vast-servers", json={"offerId": "abc"}) as r:
            assert r.status == 400
        async with api.post("/api/vast-servers", json={"image": "x"}) as r:
            body = await r.json()
            assert r.status == 400 and body["fields"][0]["path"] == "offerId"
        # Vast down: every attempt answers 503
        other = await first_offer(api, gpuName="RTX 3090")
        sim.inject_5xx("create", count=None)
        async with api.post("/api/vast-servers", json={"offerId": other["offerId"]}) as r:
            assert r.status in (201, 503)
        sim.clear_faults()
        sim.inject_5xx("bundles", count=None)
        async with api.get("/api/vast-offers") as r:
            body = await r.json()
            assert r.status == 503 and body["code"] == "VAST_UNAVAILABLE", body
        sim.clear_faults()


async def test_vast_auth_failure_and_no_key(tmp_path):
    async with VastSim(api_key="the-right-key") as sim, running_daemon(
        tmp_path / "s", vast={"api_key": "a-wrong-key", "base_url": sim.base_url, "pacing": False}
    ) as d, d.session() as api:
        async with api.get("/api/vast-offers") as r:
            body = await r.json()
            assert r.status == 502 and body["code"] == "VAST_AUTH_FAILED"
            assert "a-wrong-key" not in str(body)
        async with api.post("/api/vast-servers", json={"offerId": "1"}) as r:
            assert r.status == 502 and (await r.json())["code"] == "VAST_AUTH_FAILED"
        assert await (await api.get("/api/vast-servers")).json() == []
    async with running_daemon(tmp_path / "t") as d, d.session() as api:
        async with api.post("/api/vast-servers", json={"offerId": "1"}) as r:
            body = await r.json()
            assert r.status == 503 and body["code"] == "VAST_UNAVAILABLE" and "VAST_API_KEY" in body["details"]


async def test_retries_under_429_and_5xx_never_rent_twice(tmp_path):
    async with fleet(tmp_path, vast={"sync_interval": 60, "sync_interval_transitioning": 60}) as (sim, d), \
            d.session() as api:
        offer = await first_offer(api)
        sim.clear_requests()
        sim.inject_rate_limit("create", style="text", count=1, retry_after=0.2)
        launched = await launch(api, offer["offerId"])
        creates = sim.requests_for("create")
        assert [c.status for c in creates] == [429, 200]
        assert creates[1].time - creates[0].time >= 0.2  # Retry-After honoured
        # A create whose answer is lost after Vast acted: reconciled by label, never sent twice.
        second = await first_offer(api, gpuName="RTX 3090")
        sim.clear_requests()
        sim.inject_reset("create", when="after")
        async with api.post("/api/vast-servers", json={"offerId": second["offerId"]}) as r:
            body = await r.json()
            assert r.status == 201, body
        assert len(sim.requests_for("create")) == 1
        assert body["vastId"] and int(body["vastId"]) in sim.instances
        labels = [i.label for i in sim.instances.values()]
        assert len(labels) == len(set(labels)) == 2
        # 5xx bursts on the list are retried with growing delays
        sim.clear_requests()
        sim.inject_5xx("list", count=2, status=502)
        await d.app[keys.FLEET].sync_once()
        lists = sim.requests_for("list")
        assert [r.status for r in lists] == [502, 502, 200]
        assert lists[2].time - lists[1].time >= (lists[1].time - lists[0].time) * 0.5  # jittered, growing
        assert launched["id"] != body["id"]


async def test_crash_between_create_and_insert_is_reconciled_by_label(tmp_path):
    async with fleet(tmp_path, vast={"sync_interval": 60, "sync_interval_transitioning": 60}) as (sim, d), \
            d.session() as api:
        fleet_svc = d.app[keys.FLEET]
        offer = await first_offer(api)
        # The daemon dies while Vast answers slowly: the launch task is cancelled mid-call.
        sim.inject_delay("create", 2.0)
        task = asyncio.create_task(api.post("/api/vast-servers", json={"offerId": offer["offerId"]}))
        await wait_for(lambda: sim.requests_for("create"))
        await wait_for(lambda: len(sim.instances) == 1, timeout=5)
        rows = await d.app[keys.DB].fetchall("SELECT id, vast_id, label FROM servers")
        assert len(rows) == 1 and rows[0]["label"] == fleet_svc.label_for(rows[0]["id"])
        await d.app[keys.DB].execute("UPDATE servers SET vast_id = NULL")  # the answer never arrived
        task.cancel()
        await fleet_svc.sync_once()
        row = await d.app[keys.DB].fetchone("SELECT * FROM servers")
        assert row["vast_id"] == next(iter(sim.instances))
        assert len(sim.requests_for("create")) == 1


async def test_boot_deadline_destroys_a_server_that_never_boots(tmp_path):
    async with fleet(tmp_path, sim_kw={"boot_seconds": 3600}, vast={"boot_deadline": 1.0}) as (sim, d), \
            d.session() as api:
        offer = await first_offer(api)
        launched = await launch(api, offer["offerId"])
        s = await wait_for(lambda: _status(api, launched["id"], "destroyed"), timeout=10)
        assert s["status"] == "destroyed"
        assert int(launched["vastId"]) not in sim.instances
        audit = await (await api.get("/api/audit-logs", params={"action": "server.boot_timeout"})).json()
        assert audit and audit[0]["actor"] == "system"
        history = await (await api.get(f"/api/vast-servers/{launched['id']}/history")).json()
        assert any(h["status"] == "error" and "boot deadline" in (h["reason"] or "") for h in history)


async def test_boot_deadline_destroys_a_boot_that_failed_and_spares_one_that_ran(tmp_path):
    # An OCI error while booting: Vast shows the instance exited, we show `error`, and it
    # would bill its disk for ever. Past the deadline it is destroyed like a slow boot.
    async with fleet(tmp_path, sim_kw={"boot_seconds": 3600}, vast={"boot_deadline": 1.5}) as (sim, d), \
            d.session() as api:
        offers = await (await api.get("/api/vast-offers", params={"order": "price"})).json()
        failed = await launch(api, offers[0]["offerId"])
        sim.set_status(int(failed["vastId"]), "exited")
        await wait_for(lambda: _status(api, failed["id"], "error"), timeout=10)
        # One that comes up in time and fails later is an ordinary failure: kept.
        ran = await launch(api, offers[1]["offerId"])
        sim.set_boot_seconds(int(ran["vastId"]), 0)
        await wait_for(lambda: _status(api, ran["id"], "running"), timeout=10)
        sim.set_status(int(ran["vastId"]), "exited")
        await wait_for(lambda: _status(api, ran["id"], "error"), timeout=10)

        await wait_for(lambda: _status(api, failed["id"], "destroyed"), timeout=10)
        assert int(failed["vastId"]) not in sim.instances
        audit = await (await api.get("/api/audit-logs", params={"action": "server.boot_timeout"})).json()
        assert [(a["targetId"], a["actor"], a["details"]["status"]) for a in audit] == \
            [(str(failed["id"]), "system", "error")]
        await asyncio.sleep(2.0)  # past its own deadline too: still there
        assert (await server(api, ran["id"]))["status"] == "error"
        assert int(ran["vastId"]) in sim.instances


async def test_starting_without_billing_is_a_clear_409(tmp_path):
    # Vast answers a start on an account without billing/credit with 400 missing_billing
    # (reference §7): the operator gets 409 INSUFFICIENT_CREDIT, not a 502.
    async with fleet(tmp_path) as (sim, d), d.session() as api:
        launched = await launch(api, (await first_offer(api))["offerId"])
        await wait_for(lambda: _status(api, launched["id"], "running"))
        async with api.patch(f"/api/vast-servers/{launched['id']}", json={"status": "stopped"}) as r:
            assert r.status == 200
        sim.credit = 0
        async with api.patch(f"/api/vast-servers/{launched['id']}", json={"status": "running"}) as r:
            body = await r.json()
            assert r.status == 409 and body["code"] == "INSUFFICIENT_CREDIT", body
        refused = sim.requests_for("manage")[-1]
        assert refused.json == {"state": "running"} and refused.status == 400
        assert (await server(api, launched["id"]))["status"] == "stopped"


async def _status(api, sid, status):
    s = await server(api, sid)
    return s if s["status"] == status else None


async def test_adoption_and_vanished_instances(tmp_path):
    async with fleet(tmp_path, vast={"sync_interval": 60, "sync_interval_transitioning": 60}) as (sim, d), \
            d.session() as api:
        fleet_svc = d.app[keys.FLEET]
        ours = sim.add_instance(label=fleet_svc.label_prefix + "9999", status="running")
        sim.add_instance(label="someone-else", status="running")
        await fleet_svc.sync_once()  # (the daemon's own loop may have got there first)
        await fleet_svc.sync_once()
        listed = await (await api.get("/api/vast-servers")).json()
        assert [s["vastId"] for s in listed] == [str(ours)]
        audit = await (await api.get("/api/audit-logs", params={"action": "server.adopted"})).json()
        assert [a["targetId"] for a in audit] == [str(listed[0]["id"])]
        sim.instances.pop(ours)
        await fleet_svc.sync_once()
        assert (await server(api, listed[0]["id"]))["status"] == "destroyed"
        audit = await (await api.get("/api/audit-logs", params={"action": "server.vanished"})).json()
        assert [(a["targetId"], a["actor"], a["details"]["vastId"]) for a in audit] == \
            [(str(listed[0]["id"]), "system", ours)]

        # An instance of a row we destroyed, still listed (a destroy Vast lost): destroyed
        # again, and the audit log says so.
        db = d.app[keys.DB]
        row = await db.fetchone("SELECT label FROM servers WHERE id = ?", (listed[0]["id"],))
        again = sim.add_instance(label=row["label"], status="running")
        await fleet_svc.sync_once()
        assert again not in sim.instances or sim.instances[again].phase != "running"
        audit = await (await api.get("/api/audit-logs", params={"action": "server.destroy_lingering"})).json()
        assert [(a["targetId"], a["outcome"], a["details"]["vastId"]) for a in audit] == \
            [(str(listed[0]["id"]), "success", again)]


async def test_one_paged_list_per_sync_for_60_servers(tmp_path):
    async with fleet(tmp_path, vast={"sync_interval": 60, "sync_interval_transitioning": 60}) as (sim, d):
        fleet_svc = d.app[keys.FLEET]
        for i in range(60):
            sim.add_instance(label=f"{fleet_svc.label_prefix}{1000 + i}", status="running")
        await fleet_svc.sync_once()
        # Each new server gets our SSH key once (for model downloads); that is not the sync.
        await wait_for(lambda: len({r.path for r in sim.requests_for("ssh")}) == 60, timeout=30)
        sim.clear_requests()
        report = await fleet_svc.sync_once()
        assert report.pages == 3 and report.listed == 60
        endpoints = [r.endpoint for r in sim.requests]
        assert endpoints == ["list", "list", "list"], endpoints


async def test_attach_a_self_hosted_server(tmp_path):
    async with fleet(tmp_path) as (sim, d), d.session() as api:
        async with api.post("/api/vast-servers/attach", json={"name": "home-4090",
                                                              "comfyUrl": "http://127.0.0.1:1/"}) as r:
            assert r.status == 201
            s = await r.json()
        assert s["vastId"] is None and s["status"] == "running" and s["serverUrl"] == "http://127.0.0.1:1"
        async with api.post("/api/vast-servers/attach", json={"name": "x", "comfyUrl": "ftp://nope"}) as r:
            assert r.status == 400
        async with api.patch(f"/api/vast-servers/{s['id']}", json={"status": "stopped"}) as r:
            assert r.status == 409
        async with api.delete(f"/api/vast-servers/{s['id']}") as r:
            assert (await r.json())["message"] == "Server detached successfully"
        assert not sim.requests_for("destroy")
