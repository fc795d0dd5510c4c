"""The dead-man switch: a launched server gets the onstart loop, the daemon renews its
lease through ComfyUI, and once the daemon is gone the (simulated) instance stops
itself with its own per-instance key."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
from fleet_helpers import VAST_KEY, vast_settings, wait_for
from gen_helpers import FAST, wait_ready
from harness import running_daemon
from ops_daemon import DaemonProcess

from socialsync.daemon import keys
from socialsync.daemon.demo import DemoComfyProvider
from socialsync.daemon.services.deadman import LEASE_NAME, MARKER
from socialsync.daemon.sim.vast import VastSim, demo_catalog


async def test_instance_stops_itself_after_the_daemon_dies(tmp_path):
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    sim = VastSim(api_key=VAST_KEY, boot_seconds=0.3, catalog=demo_catalog(), comfy_provider=provider,
                  auto_tick=0.1)
    await sim.start()
    try:
        async with running_daemon(tmp_path / "state", vast=vast_settings(sim), comfy=FAST,
                                  scheduler={"deadman_timeout": 1.5, "deadman_renew_interval": 0.2}) as d, \
                d.session() as api:
            offer = next(iter(sim.offers))
            async with api.post("/api/vast-servers", json={"offerId": str(offer), "onStartScript": "echo hi"}) as r:
                assert r.status == 201, await r.text()
                launched = await r.json()
            vast_id = int(launched["vastId"])
            onstart = sim.instances[vast_id].onstart
            assert onstart.startswith("echo hi\n") and MARKER in onstart
            assert VAST_KEY not in onstart and sim.instances[vast_id].api_key not in onstart
            await wait_ready(api, launched["id"], timeout=15)
            lease = provider.sims[vast_id].input_dir / LEASE_NAME
            await wait_for(lease.exists, timeout=5)
            await asyncio.sleep(2.5)  # longer than the timeout: the renewals keep it running
            assert sim.instances[vast_id].phase == "running" and not sim.deadman_stops
            assert d.app[keys.DEADMAN].renewals >= 3
        # The daemon is gone: nobody renews.
        # (the phase flips inside the stop request; the answer is recorded just after)
        await wait_for(lambda: sim.deadman_stops, timeout=8)
        assert sim.deadman_stops == [(vast_id, 200)] and sim.instances[vast_id].phase == "stopped"
        stop = [q for q in sim.requests_for("manage") if q.json == {"state": "stopped"}][-1]
        assert stop.headers["Authorization"] == f"Bearer {sim.instances[vast_id].api_key}"
    finally:
        await sim.stop()
        await provider.close()


async def test_switch_is_on_by_default_and_can_be_turned_off(tmp_path):
    sim = VastSim(api_key=VAST_KEY, boot_seconds=0.3, catalog=demo_catalog())
    await sim.start()
    try:
        offers = iter(sim.offers)
        async with running_daemon(tmp_path / "on", vast=vast_settings(sim)) as d, d.session() as api:
            async with api.post("/api/vast-servers", json={"offerId": str(next(offers))}) as r:
                launched = await r.json()
            onstart = sim.instances[int(launched["vastId"])].onstart
            assert d.app[keys.DEADMAN].enabled and MARKER in onstart and "TIMEOUT=1800 " in onstart
        async with running_daemon(tmp_path / "off", vast=vast_settings(sim), scheduler={"deadman_timeout": 0}) as d, \
                d.session() as api:
            async with api.post("/api/vast-servers", json={"offerId": str(next(offers))}) as r:
                launched = await r.json()
            assert sim.instances[int(launched["vastId"])].onstart is None
            assert not d.app[keys.DEADMAN].enabled
    finally:
        await sim.stop()


async def test_instance_stops_itself_after_the_daemon_is_killed(tmp_path):
    # The real daemon process, killed with SIGKILL: no shutdown runs, nothing is told.
    provider = DemoComfyProvider(tmp_path / "comfy", step_time=0.01)
    sim = VastSim(api_key=VAST_KEY, boot_seconds=0.3, catalog=demo_catalog(), comfy_provider=provider,
                  auto_tick=0.1)
    await sim.start()
    env = {
        "VAST_API_KEY": VAST_KEY, "SOCIALSYNC_VAST__BASE_URL": sim.base_url, "SOCIALSYNC_VAST__PACING": "false",
        "SOCIALSYNC_VAST__SYNC_INTERVAL": "0.3", "SOCIALSYNC_VAST__SYNC_INTERVAL_TRANSITIONING": "0.1",
        "SOCIALSYNC_COMFY__PROBE_INTERVAL": "0.05", "SOCIALSYNC_COMFY__PROBE_INTERVAL_MAX": "0.2",
        "SOCIALSYNC_SCHEDULER__DEADMAN_TIMEOUT": "1.5", "SOCIALSYNC_SCHEDULER__DEADMAN_RENEW_INTERVAL": "0.2",
    }
    try:
        with DaemonProcess(tmp_path, env=env) as d:
            d.wait_listening(30)
            async with aiohttp.ClientSession(d.base_url, headers={"X-API-Key": d.admin_key}) as api:
                async with api.post("/api/vast-servers", json={"offerId": str(next(iter(sim.offers)))}) as r:
                    assert r.status == 201, await r.text()
                    launched = await r.json()
                vast_id = int(launched["vastId"])
                await wait_ready(api, launched["id"], timeout=15)
                lease = provider.sims[vast_id].input_dir / LEASE_NAME
                await wait_for(lease.exists, timeout=5)
                await asyncio.sleep(2.0)  # longer than the timeout: renewed, still running
                assert sim.instances[vast_id].phase == "running" and not sim.deadman_stops
            d.signal(signal.SIGKILL)
            d.wait(10)
        # (the phase flips inside the stop request; the answer is recorded just after)
        await wait_for(lambda: sim.deadman_stops, timeout=8)
        assert sim.deadman_stops == [(vast_id, 200)] and sim.instances[vast_id].phase == "stopped"
    finally:
        await sim.stop()
        await provider.close()
