"""``socialsyncd --demo``: a simulated Vast account whose instances run simulated ComfyUI
servers, all in-process on loopback. The daemon talks to them through exactly the same
clients as to the real services."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from socialsync.daemon import keys
from socialsync.daemon.sim.comfyui import ComfySim
from socialsync.daemon.sim.vast import VastSim, demo_catalog

log = logging.getLogger(__name__)
DEMO_KEY = "demo-vast-key"


class DemoComfyProvider:
    """Gives every simulated instance that reaches ``running`` its own ComfyUI simulator.
    With ``shared_models`` they all list one models folder (the demo); without, each has
    its own under ``root/comfy-<id>`` (what a download test needs)."""

    def __init__(self, root: Path, step_time: float, *, shared_models: bool = True):
        self.root = root
        self.step_time = step_time
        self.models_dir = root / "models" if shared_models else None
        self.sims: dict[int, ComfySim] = {}

    async def on_running(self, instance: dict[str, Any]) -> int:
        instance_id = int(instance["id"])
        old = self.sims.pop(instance_id, None)
        if old is not None:
            await old.stop()
        sim = ComfySim(self.models_dir, step_time=self.step_time, seed_models=True,
                       base_dir=self.root / f"comfy-{instance_id}")
        await sim.start("127.0.0.1", 0)
        self.sims[instance_id] = sim
        return sim.port

    async def on_gone(self, instance_id: int) -> None:
        sim = self.sims.pop(int(instance_id), None)
        if sim is not None:
            await sim.stop()

    async def close(self) -> None:
        for instance_id in list(self.sims):
            await self.on_gone(instance_id)


async def demo_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.demo:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="socialsync-demo-") as tmp:
        provider = DemoComfyProvider(Path(tmp), settings.sim.step_time)
        from socialsync.daemon.sim.ssh import SshSim, comfy_roots  # asyncssh only in demo mode

        root = settings.models.comfy_root
        ssh = SshSim(comfy_roots(provider.sims, root), comfy_root=root)  # model downloads really run
        # Vast never reuses an instance id; a demo restarted on the same state directory
        # must not either, so it continues after the highest id this database has seen.
        first_id = max(20_000_001, int(await app[keys.DB].scalar("SELECT max(vast_id) FROM servers") or 0) + 1)
        sim = VastSim(api_key=DEMO_KEY, catalog=demo_catalog(), boot_seconds=settings.sim.boot_seconds,
                      reboot_seconds=min(3.0, settings.sim.boot_seconds), auto_tick=0.5,
                      comfy_provider=provider, ssh_provider=ssh, credit=500.0,
                      first_instance_id=first_id)
        ssh.attach_vast(sim)
        await sim.start("127.0.0.1", 0)
        vast = settings.vast
        vast.api_key = SecretStr(DEMO_KEY)
        vast.base_url = sim.base_url
        vast.pacing = False
        vast.sync_interval = min(vast.sync_interval, 5.0)
        vast.sync_interval_transitioning = min(vast.sync_interval_transitioning, 1.0)
        settings.comfy.probe_interval = min(settings.comfy.probe_interval, 0.5)
        settings.comfy.health_interval = min(settings.comfy.health_interval, 10.0)
        app[keys.EXTRAS]["demo"] = {"vast": sim, "comfy": provider, "ssh": ssh}
        log.info("demo mode: simulated Vast at %s", sim.base_url)
        try:
            yield
        finally:
            await sim.stop()
            await ssh.close()
            await provider.close()
