"""A daemon wired to a Vast simulator on loopback, for fleet tests."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any

from harness import running_daemon

from socialsync.daemon.sim.vast import VastSim, demo_catalog

VAST_KEY = "vast-test-key-0123456789"


def vast_settings(sim: VastSim, **over: Any) -> dict[str, Any]:
    return {
        "api_key": VAST_KEY, "base_url": sim.base_url, "pacing": False, "sync_interval": 0.3,
        "sync_interval_transitioning": 0.1, "retry_base": 0.05, "retry_deadline": 5.0, "request_timeout": 5.0,
        "min_reliability": None, "min_direct_ports": None, **over,
    }


@asynccontextmanager
async def fleet(tmp_path, *, sim_kw: dict | None = None, vast: dict | None = None, **daemon_kw: Any):
    sim_kw = {"api_key": VAST_KEY, "boot_seconds": 0.3, "catalog": demo_catalog(), **(sim_kw or {})}
    async with VastSim(**sim_kw) as sim, running_daemon(
        tmp_path / "state", vast=vast_settings(sim, **(vast or {})), **daemon_kw
    ) as d:
        yield sim, d


async def wait_for(check, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def server(api, server_id: int) -> dict:
    async with api.get(f"/api/vast-servers/{server_id}") as r:
        assert r.status == 200, await r.text()
        return await r.json()
