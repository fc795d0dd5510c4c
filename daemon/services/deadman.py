"""The dead-man switch: a server we launch stops itself when the daemon is gone.

The container usually cannot reach the daemon (NAT), so the daemon pushes a lease:
every ``deadman_renew_interval`` it writes a tiny file, ``socialsync-lease.txt``, into
ComfyUI's input folder through ComfyUI's own ``POST /upload/image`` (type input,
overwrite). The onstart addition (below) is a background shell loop in the container
that looks at that file's age; once it is older than ``deadman_timeout`` (or no lease
newer than the loop's own start came within the timeout plus ``deadman_grace``) it stops its own instance with
the per-instance key Vast puts in the container's environment
(``CONTAINER_API_KEY``, ``CONTAINER_ID``). The script holds no secret.

The Vast simulator emulates the same loop for instances whose onstart carries
``MARKER`` (it reads the ``TIMEOUT=``/``GRACE=`` values back from the script).
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import shlex

from socialsync.common.servers import ServerCreate
from socialsync.common.wire import now_iso
from socialsync.daemon.comfy import ComfyError
from socialsync.daemon.services.comfy_pool import ComfyPool
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.generations import is_ready
from socialsync.daemon.settings import Settings
from socialsync.daemon.store import servers as servers_store

log = logging.getLogger(__name__)

MARKER = "# socialsync-deadman v1"
LEASE_NAME = "socialsync-lease.txt"
VAST_STOP_URL = "https://console.vast.ai/api/v0/instances/${CONTAINER_ID}/"


def onstart_addition(comfy_root: str, timeout: float, grace: float, check_every: int) -> str:
    lease = posixpath.join(comfy_root.rstrip("/") or "/", "input", LEASE_NAME)
    body = '{"state":"stopped"}'
    return "\n".join([
        MARKER,
        f"TIMEOUT={int(timeout)} GRACE={int(grace)} LEASE={shlex.quote(lease)} \\",
        f"nohup sh -c {shlex.quote(_loop(check_every, body))} >/dev/null 2>&1 &",
    ])


def _loop(check_every: int, body: str) -> str:
    # A lease older than the loop itself (left from before a stop) does not count.
    return (
        'start=$(date +%s); while sleep ' + str(check_every) + '; do now=$(date +%s); '
        'last=$start; limit=$((TIMEOUT + GRACE)); '
        'if [ -f "$LEASE" ]; then m=$(stat -c %Y "$LEASE"); '
        'if [ "$m" -gt "$start" ]; then last=$m; limit=$TIMEOUT; fi; fi; '
        'if [ $((now - last)) -gt "$limit" ]; then curl -fsS -X PUT "' + VAST_STOP_URL + '" '
        '-H "Authorization: Bearer ${CONTAINER_API_KEY}" -H "Content-Type: application/json" '
        "-d " + shlex.quote(body) + "; fi; done"
    )


def parse_addition(onstart: str | None) -> tuple[float, float] | None:
    """(timeout, grace) of a script with the dead-man addition, else None."""
    if not onstart or MARKER not in onstart:
        return None
    values: dict[str, float] = {}
    for token in onstart.split(MARKER, 1)[1].split():
        name, _, value = token.partition("=")
        if name in ("TIMEOUT", "GRACE") and value.isdigit():
            values[name] = float(value)
    return (values["TIMEOUT"], values.get("GRACE", 0.0)) if "TIMEOUT" in values else None


class DeadmanService:
    def __init__(self, fleet: FleetService, pool: ComfyPool, settings: Settings):
        self.fleet = fleet
        self.pool = pool
        self.settings = settings
        self.scheduler = settings.scheduler
        self._task: asyncio.Task | None = None
        self.renewals = 0

    @property
    def enabled(self) -> bool:
        return bool(self.scheduler.deadman_timeout)

    def addition(self, req: ServerCreate) -> str | None:
        """The fleet's onstart hook: the loop to append to a launched server's onstart."""
        if not self.enabled:
            return None
        assert self.scheduler.deadman_timeout is not None
        return onstart_addition(self.settings.models.comfy_root, self.scheduler.deadman_timeout,
                                self.scheduler.deadman_grace, self.scheduler.deadman_check_interval)

    async def start(self) -> None:
        if self.enabled:
            self.fleet.add_onstart_addition(self.addition)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="deadman-renew")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.renew_once()
            except Exception:
                log.exception("lease renewal failed")
            await asyncio.sleep(self.scheduler.deadman_renew_interval)

    async def renew_once(self) -> int:
        rows = [r for r in await servers_store.list_all(self.fleet.db) if r["vast_id"] is not None and is_ready(r)]
        results = await asyncio.gather(*(self._renew(r) for r in rows))
        return sum(results)

    async def _renew(self, row) -> bool:
        client = self.pool.client(row["id"], row["comfy_url"])
        try:
            async with asyncio.timeout(10):
                await client.upload_image(f"{now_iso()}\n".encode(), LEASE_NAME, type="input", overwrite=True)
        except (ComfyError, TimeoutError) as exc:
            log.info("lease not renewed server_id=%d error=%s", row["id"], exc)
            return False
        self.renewals += 1
        return True
