"""Cost control over real sockets: daemon → Vast simulator → ComfyUI simulators.

The launch guard (max price, caps) answers 409 BUDGET_EXCEEDED; the loop stops idle
servers and, over a cap, the most idle first; every action leaves an audit row by
``system`` and a ``cost_action`` event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fleet_helpers import fleet, server, wait_for

from socialsync.common.servers import ServerStatus
from socialsync.daemon import keys
from socialsync.daemon.demo import DemoComfyProvider
from socialsync.daemon.sim.comfyui import ComfySim

FAST = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 0.5, "ready_deadline": 5}


async def offers(api) -> list[dict]:
    async with api.get("/api/vast-offers", params={"order": "price"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def launch(api, offer_id: str, name: str) -> int:
    async with api.post("/api/vast-servers", json={"offerId": offer_id, "name": name}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["id"]


async def setup_is(api, sid: int, setup: str, status: str = "running"):
    s = await server(api, sid)
    return s if (s["status"], s["setupStatus"]) == (status, setup) else None


async def status_is(api, sid: int, status: str):
    s = await server(api, sid)
    return s if s["status"] == status else None


async def audit(api, action: str) -> list[dict]:
    async with api.get("/api/audit-logs", params={"action": action}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def drain(sub, type_: str) -> list[dict]:
    out = []
    while not sub.queue.empty():
        e = sub.queue.get_nowait()
        if e.type == type_:
            out.append(e.data)
    return out


async def test_max_price_and_cap_refuse_launch(tmp_path):
    async with fleet(tmp_path, costs={"max_price_per_hour": "0.30", "daily_cap": "1.00",
                                      "launch_horizon_hours": 2}) as (sim, d), d.session() as api:
        events = d.app[keys.BUS].subscribe(1000)
        catalog = await offers(api)
        dear = next(o for o in catalog if Decimal(o["pricePerHour"]) > Decimal("0.60"))
        async with api.post("/api/vast-servers", json={"offerId": dear["offerId"]}) as r:
            assert r.status == 409
            body = await r.json()
        assert body["code"] == "BUDGET_EXCEEDED" and "above the maximum of $0.30/h" in body["details"]
        assert not sim.requests_for("create")  # nothing was rented
        refused = drain(events, "cost_action")
        assert refused == [{"action": "launch_refused", "rule": "max_price", "reason": body["details"],
                            "serverId": None, "outcome": "success", "error": None}]
        rows = await audit(api, "server.launch")
        assert rows[0]["outcome"] == "failure" and rows[0]["details"]["code"] == "BUDGET_EXCEEDED"

        # Under the max price but 2 h of it would cross the $1.00 daily cap.
        cheap = catalog[0]
        assert Decimal(cheap["pricePerHour"]) <= Decimal("0.30")
        d.app[keys.SETTINGS].costs.daily_cap = Decimal(cheap["pricePerHour"]) * 2 - Decimal("0.01")
        async with api.post("/api/vast-servers", json={"offerId": cheap["offerId"]}) as r:
            body = await r.json()
            assert r.status == 409 and body["code"] == "BUDGET_EXCEEDED", body
        assert "daily cap" in body["details"] and not sim.requests_for("create")
        assert drain(events, "cost_action")[0]["rule"] == "daily_cap"

        # With room under the cap the same offer launches.
        d.app[keys.SETTINGS].costs.daily_cap = Decimal(cheap["pricePerHour"]) * 2 + Decimal("0.01")
        await launch(api, cheap["offerId"], "fits")
        assert len(sim.requests_for("create")) == 1


async def test_idle_servers_are_stopped_busy_and_attached_are_not(tmp_path):
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.15)
    home = ComfySim(tmp_path / "home-models", step_time=0.01, seed_models=True)
    await home.start("127.0.0.1", 0)
    try:
        async with fleet(tmp_path, sim_kw={"comfy_provider": provider}, comfy=FAST,
                         costs={"idle_stop_minutes": 0.02, "check_interval": 0.1}) as (sim, d), d.session() as api:
            events = d.app[keys.BUS].subscribe(5000)
            catalog = await offers(api)
            async with api.post("/api/vast-servers/attach", json={"name": "home", "comfyUrl": home.base_url}) as r:
                attached = (await r.json())["id"]
            busy = await launch(api, catalog[1]["offerId"], "busy")
            await wait_for(lambda: setup_is(api, busy, "ready"), timeout=10)
            # A generation in progress (30 steps of 0.15 s) keeps its server from being idle.
            async with api.post(f"/api/comfy/{busy}/generate", json={"prompt": "a lighthouse",
                                                                      "parameters": {"steps": 30}}) as r:
                assert r.status in (200, 201, 202), await r.text()
                generation = (await r.json())["generationId"]
            idle = await launch(api, catalog[0]["offerId"], "idle")
            await wait_for(lambda: setup_is(api, idle, "ready"), timeout=10)
            await wait_for(lambda: setup_is(api, attached, "ready"), timeout=10)

            await wait_for(lambda: status_is(api, idle, "stopped"), timeout=10)
            assert sim.requests_for("manage")[-1].json == {"state": "stopped"}
            async with api.get(f"/api/generations/{generation}") as r:
                assert (await r.json())["status"] in ("queued", "processing")
            assert (await server(api, busy))["status"] == "running"
            actions = drain(events, "cost_action")
            assert [(a["serverId"], a["action"], a["rule"], a["outcome"]) for a in actions] == \
                [(idle, "stop", "idle", "success")]
            assert actions[0]["reason"].startswith("idle for ") and "limit 1.2 s" in actions[0]["reason"]
            rows = await audit(api, "server.auto_stop")
            assert [(r["actor"], r["targetId"], r["outcome"]) for r in rows] == [("system", str(idle), "success")]
            assert rows[0]["details"]["rule"] == "idle" and rows[0]["details"]["name"] == "idle"

            # Once its generation is done, the busy server idles out too; the attached one never does.
            await wait_for(lambda: status_is(api, busy, "stopped"), timeout=15)
            async with api.get(f"/api/generations/{generation}") as r:
                assert (await r.json())["status"] == "completed"
            assert [a["serverId"] for a in drain(events, "cost_action")] == [busy]
            assert (await server(api, attached))["status"] == "running"
            await provider.close()
    finally:
        await home.stop()


async def test_work_no_server_can_take_does_not_keep_a_server_from_idling(tmp_path):
    # A queue item asking for a checkpoint nobody has waits for ever; it must not keep
    # every ready server running (and billing) meanwhile.
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    async with fleet(tmp_path, sim_kw={"comfy_provider": provider}, comfy=FAST,
                     costs={"idle_stop_minutes": 1, "check_interval": 3600}) as (_sim, d), d.session() as api:
        sid = await launch(api, (await offers(api))[0]["offerId"], "idle")
        await wait_for(lambda: setup_is(api, sid, "ready"), timeout=10)
        async with api.post("/api/generate", json={"prompt": "a harbour",
                                                   "parameters": {"checkpoint": "nowhere.safetensors"}}) as r:
            assert r.status == 202, await r.text()
            waiting = (await r.json())["generationId"]
        async with api.get("/api/queue") as r:
            queue = await r.json()
        assert [(i["generationId"], i["waitingFor"], i["estimatedStart"]) for i in queue["items"]] == \
            [(waiting, "no ready server has nowhere.safetensors", None)]  # no server can: no start time
        scheduler, costs = d.app[keys.SCHEDULER], d.app[keys.COSTS]
        assert await scheduler.servers_with_work([sid]) == set()

        # Idle for two hours by its rows: stopped, though the item still waits.
        await d.app[keys.DB].execute(
            "UPDATE servers SET last_activity_at = ?1, ready_at = ?1, running_since = ?1, created_at = ?1 "
            "WHERE id = ?2", ((datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="milliseconds"), sid))
        actions = await costs.check_once()
        assert [(a.server_id, a.action, a.rule, a.ok) for a in actions] == [(sid, "stop", "idle", True)]
        assert (await server(api, sid))["status"] == "stopped"
        async with api.get(f"/api/generations/{waiting}") as r:
            assert (await r.json())["status"] == "queued"
        await provider.close()


async def test_idle_server_is_destroyed_when_so_configured(tmp_path):
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    async with fleet(tmp_path, sim_kw={"comfy_provider": provider}, comfy=FAST,
                     costs={"idle_stop_minutes": 60, "idle_action": "destroy", "check_interval": 0.1}) \
            as (sim, d), d.session() as api:
        sid = await launch(api, (await offers(api))[0]["offerId"], "old")
        await wait_for(lambda: setup_is(api, sid, "ready"), timeout=10)
        assert (await server(api, sid))["status"] == "running"  # 60 min: not idle yet
        # Its last activity was two hours ago.
        past = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        await d.app[keys.DB].execute("UPDATE servers SET last_activity_at = ?, ready_at = ?, running_since = ?, "
                                     "created_at = ? WHERE id = ?", (past, past, past, past, sid))
        await wait_for(lambda: status_is(api, sid, "destroyed"), timeout=10)
        assert sim.requests_for("destroy")
        rows = await audit(api, "server.auto_destroy")
        assert len(rows) == 1 and rows[0]["actor"] == "system" and "idle for 120.0 min" in rows[0]["details"]["reason"]
        async with api.get(f"/api/vast-servers/{sid}/history") as r:
            assert (await r.json())[0]["reason"].startswith("cost control: idle for")
        await provider.close()


async def test_cap_stops_most_idle_first_then_refuses_launches(tmp_path):
    # check_interval 3600: the loop checks once at start, then the test drives each check.
    async with fleet(tmp_path, costs={"daily_cap": "1000", "check_interval": 3600}) as (sim, d), d.session() as api:
        events = d.app[keys.BUS].subscribe(5000)
        catalog = await offers(api)
        first = await launch(api, catalog[0]["offerId"], "first")
        second = await launch(api, catalog[1]["offerId"], "second")
        for sid in (first, second):
            await wait_for(lambda sid=sid: status_is(api, sid, "running"), timeout=10)
        # "second" has been idle longer: over the cap it goes first.
        db = d.app[keys.DB]
        await db.execute("UPDATE servers SET last_activity_at = ?1, running_since = ?1, created_at = ?1 "
                         "WHERE id = ?2", ("2020-01-01T00:00:00.000Z", second))

        analytics, costs = d.app[keys.ANALYTICS], d.app[keys.COSTS]
        frozen = analytics.clock()
        analytics.clock = lambda: frozen  # spend stops moving while the test picks the cap
        spend = await analytics.spend_now()
        assert set(spend.running_burn) == {first, second}
        # Room for one hour of everything but the second server: stopping it is enough.
        cap = spend.today + (spend.burn - spend.running_burn[second]) + Decimal("0.0001")
        d.app[keys.SETTINGS].costs.daily_cap = cap
        actions = await costs.check_once()
        assert [(a.server_id, a.action, a.rule, a.ok) for a in actions] == [(second, "stop", "daily_cap", True)]
        assert (await server(api, second))["status"] == "stopped"
        assert (await server(api, first))["status"] == "running"
        published = drain(events, "cost_action")
        assert [(e["serverId"], e["rule"]) for e in published] == [(second, "daily_cap")]
        assert published[0]["reason"].startswith("daily cap $") and "would cross it" in published[0]["reason"]
        assert await costs.check_once() == []  # under the cap now

        # Starting it again would take the fleet back over the cap: refused before Vast
        # hears of it (the loop would only stop it again), with the reason and an event.
        manage = len(sim.requests_for("manage"))
        async with api.patch(f"/api/vast-servers/{second}", json={"status": "running"}) as r:
            body = await r.json()
            assert r.status == 409 and body["code"] == "BUDGET_EXCEEDED", body
            assert body["details"].startswith("the daily cap of $"), body
        assert len(sim.requests_for("manage")) == manage
        assert (await server(api, second))["status"] == "stopped"
        refused = drain(events, "cost_action")
        assert [(e["action"], e["serverId"], e["rule"]) for e in refused] == [("start_refused", second, "daily_cap")]
        # With room under the cap the same start goes through.
        d.app[keys.SETTINGS].costs.daily_cap = cap + spend.running_burn[second] * 24
        async with api.patch(f"/api/vast-servers/{second}", json={"status": "running"}) as r:
            assert r.status == 200, await r.text()
        assert sim.requests_for("manage")[-1].json == {"state": "running"}
        await wait_for(lambda: status_is(api, second, "running"), timeout=10)
        async with api.patch(f"/api/vast-servers/{second}", json={"status": "stopped"}) as r:
            assert r.status == 200, await r.text()
        await wait_for(lambda: status_is(api, second, "stopped"), timeout=10)
        d.app[keys.SETTINGS].costs.daily_cap = cap
        assert drain(events, "cost_action") == []

        # The cap is spent: everything still running stops, and launches are refused.
        d.app[keys.SETTINGS].costs.daily_cap = Decimal("0")
        actions = await costs.check_once()
        assert [(a.server_id, a.rule) for a in actions] == [(first, "daily_cap")]
        assert (await server(api, first))["status"] == "stopped"
        rows = await audit(api, "server.auto_stop")
        assert sorted(int(r["targetId"]) for r in rows) == sorted([first, second])
        assert {r["actor"] for r in rows} == {"system"}
        async with api.post("/api/vast-servers", json={"offerId": catalog[2]["offerId"]}) as r:
            assert r.status == 409 and (await r.json())["code"] == "BUDGET_EXCEEDED"
        assert len(sim.requests_for("create")) == 2


async def test_monthly_cap_through_the_loop_and_stats_show_caps(tmp_path):
    async with fleet(tmp_path, costs={"monthly_cap": "0", "check_interval": 0.1}) as (_sim, d), d.session() as api:
        # Launches are refused outright when the month's cap is 0...
        catalog = await offers(api)
        async with api.post("/api/vast-servers", json={"offerId": catalog[0]["offerId"]}) as r:
            assert r.status == 409 and "monthly cap" in (await r.json())["details"]
        # ...and one started anyway (the cap raised, then lowered) is stopped by the loop.
        d.app[keys.SETTINGS].costs.monthly_cap = Decimal("1000")
        sid = await launch(api, catalog[0]["offerId"], "late")
        await wait_for(lambda: status_is(api, sid, "running"), timeout=10)
        d.app[keys.SETTINGS].costs.monthly_cap = Decimal("0.00")
        s = await wait_for(lambda: setup_is(api, sid, "pending", "stopped"), timeout=10)
        assert s["status"] == ServerStatus.STOPPED
        rows = await audit(api, "server.auto_stop")
        assert rows[0]["details"]["rule"] == "monthly_cap"
        async with api.get("/api/stats") as r:
            stats = await r.json()
        assert stats["spend"]["monthlyCap"] == "0.00" and stats["vastCredit"] == "25.00"
        assert stats["servers"]["byStatus"]["stopped"] == 1
