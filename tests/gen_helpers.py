"""A daemon with ComfyUI simulators attached and ready, for the generation tests."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fleet_helpers import wait_for
from harness import Daemon, running_daemon

from socialsync.daemon import keys
from socialsync.daemon.sim.comfyui import ComfySim

FAST = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 0.2, "ready_deadline": 1.5,
        "request_timeout": 5.0}
FINAL = ("completed", "failed", "cancelled")
SEED_EXAMPLE = {  # the API document's example body, exactly (workflow 1: the built-in txt2img)
    "prompt": "beautiful landscape mountain view",
    "negativePrompt": "blurry, low quality",
    "workflowId": 1,
    "parameters": {"width": 512, "height": 512, "steps": 20, "cfg_scale": 7.5, "sampler": "euler_a"},
}


@dataclass
class Rig:
    daemon: Daemon
    api: aiohttp.ClientSession
    sims: list[ComfySim]
    server_ids: list[int]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sim(self) -> ComfySim:
        return self.sims[0]

    @property
    def sid(self) -> int:
        return self.server_ids[0]

    async def generate(self, server_id: int | None = None, body: dict | None = None, expect: int = 202) -> dict:
        sid = self.sid if server_id is None else server_id
        async with self.api.post(f"/api/comfy/{sid}/generate", json=body or SEED_EXAMPLE) as r:
            data = await r.json()
            assert r.status == expect, (r.status, data)
            return data

    async def generation(self, gid: int) -> dict:
        async with self.api.get(f"/api/generations/{gid}") as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def final(self, gid: int, timeout: float = 15) -> dict:
        async def check():
            g = await self.generation(gid)
            return g if g["status"] in FINAL else None
        return await wait_for(check, timeout=timeout)

    async def status(self, gid: int, status: str, timeout: float = 10) -> dict:
        async def check():
            g = await self.generation(gid)
            return g if g["status"] == status else None
        return await wait_for(check, timeout=timeout)

    def of(self, gid: int, type_: str | None = None) -> list[dict[str, Any]]:
        """Events of one generation collected from the bus (in order)."""
        return [e for e in self.events if e["data"].get("generationId") == gid and (type_ is None or e["type"] == type_)]


async def attach(api: aiohttp.ClientSession, sim: ComfySim, name: str = "gpu") -> int:
    async with api.post("/api/vast-servers/attach", json={"name": name, "comfyUrl": sim.base_url}) as r:
        assert r.status == 201, await r.text()
        sid = (await r.json())["id"]
    await wait_ready(api, sid)
    return sid


async def wait_ready(api: aiohttp.ClientSession, sid: int, setup: str = "ready", timeout: float = 10) -> dict:
    async def check():
        async with api.get(f"/api/vast-servers/{sid}") as r:
            s = await r.json()
        return s if s["setupStatus"] == setup else None
    return await wait_for(check, timeout=timeout)


@asynccontextmanager
async def rig(tmp_path, *, servers: int = 1, step_time: float = 0.01, comfy: dict | None = None, **daemon_kw: Any):
    """``servers`` ComfySims attached to a real daemon on loopback, all ready; every
    bus event recorded in ``rig.events``."""
    async with AsyncExitStack() as stack:
        sims = []
        for i in range(servers):
            sim = ComfySim(tmp_path / f"models-{i}", step_time=step_time, seed_models=True,
                           base_dir=tmp_path / f"comfy-{i}")
            await sim.start("127.0.0.1", 0)
            stack.push_async_callback(sim.stop)
            sims.append(sim)
        d = await stack.enter_async_context(running_daemon(tmp_path / "state", comfy={**FAST, **(comfy or {})},
                                                           **daemon_kw))
        api = await stack.enter_async_context(d.session())
        events: list[dict[str, Any]] = []
        d.app[keys.BUS].add_listener(
            lambda e: events.append({**e.as_dict(), "at": time.monotonic()}) if e.type.startswith("generation_")
            else None)
        sids = [await attach(api, sim, f"gpu-{i}") for i, sim in enumerate(sims)]
        await wait_for(lambda: d.app[keys.GENERATIONS].reconciled)
        yield Rig(d, api, sims, sids, events)
        await asyncio.sleep(0)

