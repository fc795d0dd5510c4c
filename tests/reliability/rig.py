"""What the reliability scripts share: simulators on loopback in this process, a real
``socialsyncd`` process wired to them (``ops_daemon.DaemonProcess``), and small
helpers. The simulators outlive the daemon, so a ``kill -9`` of it loses nothing of
"the outside world"."""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from ops_daemon import NO_LIMITS, DaemonProcess  # noqa: E402

from socialsync.daemon.sim.comfyui import ComfySim  # noqa: E402
from socialsync.daemon.sim.vast import VastSim, demo_catalog  # noqa: E402

VAST_KEY = "vast-reliability-key-0123456789"


def daemon_env(vast_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        **NO_LIMITS,
        "SOCIALSYNC_COMFY__PROBE_INTERVAL": "0.05",
        "SOCIALSYNC_COMFY__PROBE_INTERVAL_MAX": "0.3",
        "SOCIALSYNC_COMFY__HEALTH_INTERVAL": "0.5",
        "SOCIALSYNC_COMFY__READY_DEADLINE": "10",
        "SOCIALSYNC_COMFY__REQUEST_TIMEOUT": "5",
        "SOCIALSYNC_VAST__PACING": "false",
        "SOCIALSYNC_VAST__SYNC_INTERVAL": "0.5",
        "SOCIALSYNC_VAST__SYNC_INTERVAL_TRANSITIONING": "0.2",
        "SOCIALSYNC_VAST__RETRY_BASE": "0.05",
        "SOCIALSYNC_VAST__RETRY_DEADLINE": "10",
        "SOCIALSYNC_VAST__REQUEST_TIMEOUT": "5",
        "SOCIALSYNC_VAST__MIN_RELIABILITY": "0.0",
        "SOCIALSYNC_SHUTDOWN_TIMEOUT": "10",
    }
    if vast_url:
        env["VAST_API_KEY"] = VAST_KEY
        env["SOCIALSYNC_VAST__BASE_URL"] = vast_url
    env.update(extra)
    return env


@asynccontextmanager
async def simulators(tmp: Path, *, comfy: int = 1, step_time: float = 0.01, vast: bool = True,
                     boot_seconds: float = 0.3, **vast_kw: Any):
    async with AsyncExitStack() as stack:
        vsim = None
        if vast:
            vsim = await stack.enter_async_context(
                VastSim(api_key=VAST_KEY, boot_seconds=boot_seconds, catalog=demo_catalog(), **vast_kw))
        sims = []
        for i in range(comfy):
            sim = ComfySim(tmp / f"models-{i}", step_time=step_time, seed_models=True, base_dir=tmp / f"comfy-{i}")
            await sim.start("127.0.0.1", 0)
            stack.push_async_callback(sim.stop)
            sims.append(sim)
        yield vsim, sims


async def wait_until(check, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def attach(s, sim: ComfySim, name: str) -> int:
    async with s.post("/api/vast-servers/attach", json={"name": name, "comfyUrl": sim.base_url}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["id"]


async def wait_ready(s, sid: int, timeout: float = 20.0) -> None:
    async def ready() -> bool:
        async with s.get(f"/api/vast-servers/{sid}") as r:
            return r.status == 200 and (await r.json())["setupStatus"] == "ready"
    await wait_until(ready, timeout)


__all__ = ["VAST_KEY", "DaemonProcess", "attach", "daemon_env", "simulators", "wait_ready", "wait_until"]
