"""The readiness gate (``setupStatus``): a running server is ``installing`` until its
ComfyUI answers ``GET /system_stats``, then ``ready``; ``failed`` when it never answers
within the deadline. A ready server that stops answering goes back to ``installing``.
A ``failed`` server that is still running keeps being asked, every ``health_interval``:
when its ComfyUI answers after all (a slow first start, a model download that took
longer than the deadline), it becomes ``ready`` without anyone having to act."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from typing import Any

from socialsync.common.servers import ServerStatus, SetupStatus
from socialsync.daemon.comfy.errors import ComfyError
from socialsync.daemon.services.comfy_pool import ComfyPool
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.tasks import KeyedTasks
from socialsync.daemon.settings import ComfySettings
from socialsync.daemon.store import servers as store

log = logging.getLogger(__name__)
DEVICE_NAME = re.compile(r"^(?:cuda:\d+\s+)?(.*?)(?:\s*:\s*\w+)?$")


def stats_metadata(stats: dict[str, Any]) -> dict[str, Any]:
    """GPU name and VRAM from ``/system_stats`` (the server's own view of its hardware)."""
    meta: dict[str, Any] = {}
    system = stats.get("system") or {}
    if system.get("comfyui_version"):
        meta["comfyuiVersion"] = system["comfyui_version"]
    devices = stats.get("devices") or []
    if devices:
        dev = devices[0]
        match = DEVICE_NAME.match(str(dev.get("name") or ""))
        meta["gpuName"] = match.group(1) if match else dev.get("name")
        if isinstance(dev.get("vram_total"), int | float):
            meta["vramTotal"] = int(dev["vram_total"])
            meta["vramTotalGb"] = round(dev["vram_total"] / 2**30, 1)
    return meta


class Readiness:
    def __init__(self, fleet: FleetService, pool: ComfyPool, settings: ComfySettings):
        self.fleet = fleet
        self.pool = pool
        self.settings = settings
        self.health_interval = settings.health_interval
        self._tasks = KeyedTasks()
        fleet.add_listener(self._on_change)

    async def start(self) -> None:
        """Pick up every server that is running now (after a daemon restart)."""
        for row in await store.list_all(self.fleet.db):
            if row["status"] == ServerStatus.RUNNING and row["comfy_url"]:
                self._ensure(row)

    async def stop(self) -> None:
        await self._tasks.stop()

    def suspect(self, server_id: int) -> None:
        """Someone (the watcher) lost contact: check now instead of at the next interval."""
        task = self._tasks.get(server_id)
        if task is not None and getattr(task, "phase", "") == "health":
            self._tasks.cancel(server_id)
            self._spawn(server_id, probe_first=True)

    def _on_change(self, old, new) -> None:
        # Runs inside the fleet's lock: only schedule here, never await the fleet.
        if new["status"] == ServerStatus.RUNNING and new["comfy_url"]:
            # A new address or new credentials: probe again from the start, failed or not.
            again = old is not None and (old["comfy_url"] != new["comfy_url"] or old["comfy_auth"] != new["comfy_auth"])
            if again:
                self._cancel(new["id"])
            elif new["setup_status"] == SetupStatus.FAILED and (old is None or old["status"] == ServerStatus.RUNNING):
                return
            self._ensure(new)
        else:
            self._cancel(new["id"])
            self.pool.forget(new["id"])

    def _ensure(self, row) -> None:
        if row["id"] in self._tasks:
            return
        self._spawn(row["id"], probe_first=row["setup_status"] != SetupStatus.READY)

    def _spawn(self, server_id: int, probe_first: bool) -> None:
        self._tasks.spawn(server_id, self._run(server_id, probe_first), name=f"readiness-{server_id}")

    def _cancel(self, server_id: int) -> None:
        self._tasks.cancel(server_id)

    async def _run(self, server_id: int, probe_first: bool) -> None:
        task = asyncio.current_task()
        while True:
            if probe_first:
                task.phase = "probe"  # type: ignore[attr-defined]
                outcome = await self._probe(server_id)
                if outcome == "gone":
                    return
                if outcome == "failed":
                    task.phase = "late"  # type: ignore[attr-defined]
                    if not await self._late(server_id):
                        return
            probe_first = True
            task.phase = "health"  # type: ignore[attr-defined]
            await self._health(server_id)

    async def _url(self, server_id: int) -> str | None:
        row = await store.get(self.fleet.db, server_id)
        if row is None or row["status"] != ServerStatus.RUNNING:
            return None
        return row["comfy_url"]

    async def _probe(self, server_id: int) -> str:
        """pending/installing → ``"ready"``, or ``"failed"`` at the deadline, or ``"gone"``
        (the server stopped running or lost its URL)."""
        deadline = time.monotonic() + self.settings.ready_deadline
        await self.fleet.set_setup(server_id, SetupStatus.INSTALLING, "waiting for ComfyUI to answer")
        delay = self.settings.probe_interval
        last_error = "no answer yet"
        while True:
            url = await self._url(server_id)
            if url is None:
                return "gone"
            try:
                stats = await self.pool.client(server_id, url).system_stats()
            except (ComfyError, ValueError) as exc:
                last_error = str(exc) or type(exc).__name__
            else:
                await self.fleet.set_setup(server_id, SetupStatus.READY, "ComfyUI answers",
                                           metadata=stats_metadata(stats))
                return "ready"
            if time.monotonic() + delay > deadline:
                reason = f"ComfyUI did not answer within {self.settings.ready_deadline:g} s: {last_error}"
                await self.fleet.set_setup(server_id, SetupStatus.FAILED, reason)
                log.warning("server setup failed server_id=%d reason=%s", server_id, reason)
                return "failed"
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 1.6, self.settings.probe_interval_max)

    async def _late(self, server_id: int) -> bool:
        """A failed server that still runs: ask every ``health_interval``; ``ready`` (True)
        as soon as it answers, False when it stops running."""
        while True:
            await asyncio.sleep(self.health_interval)
            url = await self._url(server_id)
            if url is None:
                return False
            try:
                stats = await self.pool.client(server_id, url).system_stats()
            except (ComfyError, ValueError):
                continue
            await self.fleet.set_setup(server_id, SetupStatus.READY, "ComfyUI answers (after the deadline)",
                                       metadata=stats_metadata(stats))
            log.info("failed server answers after all server_id=%d", server_id)
            return True

    async def _health(self, server_id: int) -> None:
        """Returns when a ready server stops answering (two failures in a row)."""
        failures = 0
        while True:
            await asyncio.sleep(self.health_interval if failures == 0 else min(2.0, self.health_interval))
            url = await self._url(server_id)
            if url is None:
                return
            try:
                await self.pool.client(server_id, url).system_stats()
                failures = 0
            except (ComfyError, ValueError) as exc:
                failures += 1
                if failures >= 2:
                    log.warning("ready server stopped answering server_id=%d error=%s", server_id, exc)
                    return
