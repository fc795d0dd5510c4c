"""Readiness over real sockets: daemon → Vast simulator → ComfyUI simulators."""

from __future__ import annotations

from fleet_helpers import fleet, server, wait_for
from harness import free_port

from socialsync.daemon import keys
from socialsync.daemon.demo import DemoComfyProvider
from socialsync.daemon.sim.comfyui import ComfySim

FAST = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 0.2, "ready_deadline": 1.5}


async def test_vast_server_goes_pending_installing_ready(tmp_path):
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    async with fleet(tmp_path, sim_kw={"comfy_provider": provider}, comfy=FAST) as (_sim, d), d.session() as api:
        events = d.app[keys.BUS].subscribe(1000)
        offers = await (await api.get("/api/vast-offers", params={"order": "price"})).json()
        async with api.post("/api/vast-servers", json={"offerId": offers[0]["offerId"]}) as r:
            sid = (await r.json())["id"]
        s = await wait_for(lambda: _setup(api, sid, "ready"))
        assert s["status"] == "running"
        assert s["metadata"]["gpuName"] == "NVIDIA GeForce RTX 4090" and s["metadata"]["vramTotalGb"] > 0
        seen = []
        while not events.queue.empty():
            e = events.queue.get_nowait()
            if e.type == "server_status" and e.data["serverId"] == sid:
                pair = (e.data["status"], e.data["setupStatus"])
                if not seen or seen[-1] != pair:
                    seen.append(pair)
        assert seen[0] == ("launching", "pending")
        assert seen[-2:] == [("running", "installing"), ("running", "ready")]

        # ComfyUI dies on a ready server: back to installing, then failed at the deadline.
        vast_id = int(s["vastId"])
        await provider.sims[vast_id].kill()
        await wait_for(lambda: _setup(api, sid, "installing"), timeout=5)
        failed = await wait_for(lambda: _setup(api, sid, "failed"), timeout=5)
        assert "did not answer" in failed["statusMessage"]

        # It comes back after the deadline (the server kept running): ready again by itself.
        await provider.sims[vast_id].restart()
        back = await wait_for(lambda: _setup(api, sid, "ready"), timeout=5)
        assert back["status"] == "running" and back["metadata"]["gpuName"]
        history = await (await api.get(f"/api/vast-servers/{sid}/history")).json()
        assert [h["setupStatus"] for h in history[:2]] == ["ready", "failed"]
        await provider.close()


async def test_attached_server_that_never_answers_fails(tmp_path):
    async with fleet(tmp_path, comfy=FAST) as (_sim, d), d.session() as api:
        async with api.post("/api/vast-servers/attach",
                            json={"name": "dead", "comfyUrl": f"http://127.0.0.1:{free_port()}"}) as r:
            sid = (await r.json())["id"]
        s = await wait_for(lambda: _setup(api, sid, "failed"), timeout=6)
        assert "did not answer within 1.5 s" in s["statusMessage"]
        history = await (await api.get(f"/api/vast-servers/{sid}/history")).json()
        assert [h["setupStatus"] for h in reversed(history)] == ["pending", "installing", "failed"]


async def test_attached_comfyui_becomes_ready(tmp_path):
    comfy = ComfySim(tmp_path / "models", step_time=0.01, seed_models=True)
    await comfy.start("127.0.0.1", 0)
    try:
        async with fleet(tmp_path, comfy=FAST) as (_sim, d), d.session() as api:
            async with api.post("/api/vast-servers/attach", json={"name": "home", "comfyUrl": comfy.base_url}) as r:
                sid = (await r.json())["id"]
            s = await wait_for(lambda: _setup(api, sid, "ready"))
            assert s["serverUrl"] == comfy.base_url and s["metadata"]["comfyuiVersion"]
    finally:
        await comfy.stop()


async def test_per_server_comfyui_credentials(tmp_path):
    # Two boxes behind authenticating proxies, each with its own credentials; the daemon
    # sends each its own, never shows them, and probes again when they change.
    token = "tok-5f1e9a-not-a-real-one"
    bearer = ComfySim(tmp_path / "m1", step_time=0.01, seed_models=True, bearer_token=token)
    basic = ComfySim(tmp_path / "m2", step_time=0.01, seed_models=True, basic_auth=("olga", "pw-83c1b7"))
    for sim in (bearer, basic):
        await sim.start("127.0.0.1", 0)
    try:
        async with fleet(tmp_path, comfy=FAST) as (_sim, d), d.session() as api:
            events = d.app[keys.BUS].subscribe(5000)
            async with api.post("/api/vast-servers/attach", json={
                    "name": "proxied", "comfyUrl": basic.base_url,
                    "comfyAuth": {"username": "olga", "password": "pw-83c1b7"}}) as r:
                assert r.status == 201, await r.text()
                body = await r.json()
            assert body["comfyAuth"] == "basic"
            await wait_for(lambda: _setup(api, body["id"], "ready"))

            async with api.post("/api/vast-servers/attach", json={"name": "tokened", "comfyUrl": bearer.base_url}) as r:
                sid = (await r.json())["id"]
            failed = await wait_for(lambda: _setup(api, sid, "failed"), timeout=6)  # 401 without the token
            assert failed["comfyAuth"] is None
            async with api.patch(f"/api/vast-servers/{sid}", json={"comfyAuth": {"token": token}}) as r:
                assert r.status == 200 and (await r.json())["comfyAuth"] == "bearer"
            await wait_for(lambda: _setup(api, sid, "ready"), timeout=3)  # probed again at once

            async with api.patch(f"/api/vast-servers/{sid}", json={"comfyAuth": {"token": "x", "username": "y"}}) as r:
                assert r.status == 400 and (await r.json())["code"] == "VALIDATION_ERROR"
            async with api.patch(f"/api/vast-servers/{sid}", json={"comfyAuth": {}}) as r:
                assert r.status == 200 and (await r.json())["comfyAuth"] is None  # removed: 401 again
            await wait_for(lambda: _setup(api, sid, "installing") or _setup(api, sid, "failed"), timeout=3)

            # Nowhere to be seen: responses, audit rows, events.
            listed = await (await api.get("/api/vast-servers")).text()
            audit = await (await api.get("/api/audit-logs", params={"limit": 500})).text()
            seen = []
            while not events.queue.empty():
                e = events.queue.get_nowait()
                seen.append(str(e.data))
            for secret in (token, "pw-83c1b7"):
                assert secret not in listed and secret not in audit and not any(secret in x for x in seen)
    finally:
        for sim in (bearer, basic):
            await sim.stop()


async def _setup(api, sid, setup):
    s = await server(api, sid)
    return s if s["setupStatus"] == setup else None


async def test_a_demo_restarted_on_the_same_state_can_launch_again(tmp_path):
    """The demo's simulated Vast starts afresh each time; a launch after a restart must not
    collide with an instance id a destroyed row already holds."""
    from harness import running_daemon

    state = tmp_path / "state"
    for _ in range(2):
        async with running_daemon(state, demo=True, sim={"boot_seconds": 0.2, "step_time": 0.01}) as d, \
                d.session() as api:
            offers = await (await api.get("/api/vast-offers", params={"order": "price"})).json()
            async with api.post("/api/vast-servers", json={"offerId": offers[0]["offerId"]}) as r:
                assert r.status == 201, await r.text()
                sid = (await r.json())["id"]
            async with api.delete(f"/api/vast-servers/{sid}") as r:
                assert r.status == 200
