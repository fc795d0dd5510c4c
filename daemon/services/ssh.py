"""SSH to the servers: our identity, its key on every Vast instance, and running one
program on a server over asyncssh.

- ``SshIdentity``: an ed25519 key generated once and kept in ``<state>/ssh/id_ed25519``
  (0600); its public half is what Vast attaches to our instances.
- ``KeyAttacher``: a fleet listener that attaches the public key to each Vast instance
  when it becomes running (idempotent; also for the servers already running at start).
- ``HostKeys``: trust on first use, per server: a server that later shows another host
  key is refused.
- ``run_program``: run a fixed command line with a program and secrets written to the
  channel's stdin (never to argv), reading JSON lines from stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from socialsync.common.servers import ServerStatus
from socialsync.daemon.services.fleet import FleetService
from socialsync.daemon.services.tasks import KeyedTasks
from socialsync.daemon.store import servers as servers_store
from socialsync.daemon.vast import VastError, VastNotFoundError

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger(__name__)

KEY_NAME = "id_ed25519"


def _asyncssh():
    """asyncssh (and its cryptography) is imported on first use, not at daemon start."""
    import asyncssh

    return asyncssh


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    username: str = "root"

    def __str__(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"


def endpoints_of(row, username: str) -> list[SshEndpoint]:
    """Where a server's SSH listens: direct (``22/tcp`` mapped on the public IP) first, then
    Vast's proxy; for an attached server, ``metadata.ssh`` (``{host, port, user}``)."""
    found: list[SshEndpoint] = []
    if row["kind"] == "attached":
        try:
            meta = json.loads(row["metadata"] or "{}").get("ssh") or {}
        except ValueError:
            meta = {}
        if isinstance(meta, dict) and meta.get("host"):
            try:
                found.append(SshEndpoint(str(meta["host"]), int(meta.get("port") or 22), str(meta.get("user") or username)))
            except (TypeError, ValueError):
                pass
        return found
    for host_key, port_key in (("ssh_direct_host", "ssh_direct_port"), ("ssh_host", "ssh_port")):
        host, port = row[host_key], row[port_key]
        if host and port:
            endpoint = SshEndpoint(str(host), int(port), username)
            if endpoint not in found:
                found.append(endpoint)
    return found


class SshIdentity:
    """Our one SSH key pair."""

    def __init__(self, key: asyncssh.SSHKey, path: Path, comment: str):
        self.key = key
        self.path = path
        self.public_line = key.export_public_key("openssh").decode().strip()
        if len(self.public_line.split()) < 3:
            self.public_line = f"{self.public_line} {comment}"

    @classmethod
    async def load_or_create(cls, directory: Path, comment: str = "socialsync") -> SshIdentity:
        def work() -> asyncssh.SSHKey:
            asyncssh = _asyncssh()
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = directory / KEY_NAME
            if path.exists():
                return asyncssh.read_private_key(str(path))
            key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
            tmp = path.with_name(KEY_NAME + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key("openssh"))
            os.replace(tmp, path)
            (directory / f"{KEY_NAME}.pub").write_bytes(key.export_public_key("openssh"))
            log.info("ssh key created path=%s", path)
            return key

        key = await asyncio.to_thread(work)
        return cls(key, directory / KEY_NAME, comment)


class LazyIdentity:
    """Our identity, loaded (or created) on first use."""

    def __init__(self, directory: Path, comment: str):
        self.directory = directory
        self.comment = comment
        self._identity: SshIdentity | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> SshIdentity:
        if self._identity is None:
            async with self._lock:
                if self._identity is None:
                    self._identity = await SshIdentity.load_or_create(self.directory, self.comment)
        return self._identity


class HostKeys:
    """Trust on first use, one entry per server (a rented box's host key is its own):
    kept in ``known_hosts.json`` beside our key."""

    def __init__(self, path: Path, policy: str = "tofu"):
        self.path = path
        self.policy = policy
        self._keys: dict[str, str] = {}
        if path.exists():
            try:
                self._keys = json.loads(path.read_text())
            except ValueError:
                log.warning("unreadable %s; starting with no known host keys", path)

    def forget(self, ident: str) -> None:
        if self._keys.pop(ident, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self._keys, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def check(self, ident: str, key: asyncssh.SSHKey) -> bool:
        line = key.export_public_key("openssh").decode().split()
        text = " ".join(line[:2])
        if self.policy == "accept":
            return True
        known = self._keys.get(ident)
        if known is None:
            self._keys[ident] = text
            self._save()
            log.info("ssh host key remembered server=%s key=%s", ident, text[:40])
            return True
        if known != text:
            log.warning("ssh host key changed server=%s: refusing to connect", ident)
            return False
        return True


class KeyAttacher:
    """Attach our public key to every Vast instance of ours once it runs."""

    def __init__(self, fleet: FleetService, identity: LazyIdentity, retry_base: float = 2.0):
        self.fleet = fleet
        self.identity = identity
        self.retry_base = retry_base
        self._done: dict[int, int] = {}  # server id → vast id the key is on
        self._tasks = KeyedTasks()
        fleet.add_listener(self._on_change)

    async def start(self) -> None:
        for row in await servers_store.list_vast_live(self.fleet.db):
            if row["status"] == ServerStatus.RUNNING and row["vast_id"] is not None:
                self._schedule(row["id"], int(row["vast_id"]))

    async def stop(self) -> None:
        await self._tasks.stop()

    def _on_change(self, old, new) -> None:
        # Runs inside the fleet's lock: only schedule.
        if new["kind"] != "vast" or new["vast_id"] is None or new["status"] != ServerStatus.RUNNING:
            if new["status"] == ServerStatus.DESTROYED:
                self._done.pop(new["id"], None)
            return
        if old is None or old["status"] != ServerStatus.RUNNING or old["vast_id"] != new["vast_id"]:
            self._schedule(new["id"], int(new["vast_id"]))

    def _schedule(self, server_id: int, vast_id: int) -> asyncio.Task[bool]:
        return self._tasks.get(server_id) or self._tasks.spawn(
            server_id, self._attach(server_id, vast_id, attempts=4), name=f"ssh-key-{server_id}")

    def attached(self, server_id: int, vast_id: int) -> bool:
        return self._done.get(server_id) == vast_id

    async def ensure(self, row) -> bool:
        """Make sure our key is on this Vast server (waits for a running attach)."""
        if row["kind"] != "vast" or row["vast_id"] is None:
            return True
        vast_id = int(row["vast_id"])
        if self.attached(row["id"], vast_id):
            return True
        return await asyncio.shield(self._schedule(row["id"], vast_id))

    async def _attach(self, server_id: int, vast_id: int, attempts: int) -> bool:
        vast = self.fleet.vast
        if vast is None:
            return False
        public_line = (await self.identity.get()).public_line
        for attempt in range(1, attempts + 1):
            try:
                await vast.attach_ssh_key(vast_id, public_line)
            except VastNotFoundError:
                log.warning("ssh key not attached: instance gone server_id=%d vast_id=%d", server_id, vast_id)
                return False
            except VastError as exc:
                log.warning("ssh key attach failed server_id=%d vast_id=%d attempt=%d error=%s",
                            server_id, vast_id, attempt, exc)
                if attempt < attempts:
                    await asyncio.sleep(self.retry_base * 2 ** (attempt - 1) * (0.5 + random.random() / 2))
                continue
            self._done[server_id] = vast_id
            log.info("ssh key attached server_id=%d vast_id=%d", server_id, vast_id)
            return True
        return False


class SshError(Exception):
    """Could not run the program: no connection, refused, or the connection broke."""

    def __init__(self, message: str, *, auth: bool = False):
        super().__init__(message)
        self.auth = auth


@dataclass
class RunResult:
    exit_status: int | None
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def last(self) -> dict[str, Any] | None:
        return self.events[-1] if self.events else None


async def _all(*coros: Awaitable[Any]) -> None:
    """Run together; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)  # type: ignore[arg-type]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None


def _client_factory(host_keys: HostKeys, ident: str) -> Callable[[], Any]:
    asyncssh = _asyncssh()

    class Client(asyncssh.SSHClient):
        def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
            return host_keys.check(ident, key)

    return Client


async def run_program(
    endpoint: SshEndpoint,
    identity: SshIdentity,
    host_keys: HostKeys,
    host_ident: str,
    command: str,
    stdin_text: str,
    on_event: Callable[[dict[str, Any]], Awaitable[None] | None],
    *,
    connect_timeout: float,
    run_timeout: float,
    stall_timeout: float | None = None,
) -> RunResult:
    """Run ``command`` on ``endpoint``; write ``stdin_text`` then EOF; hand every JSON line of
    stdout to ``on_event``. Raises ``SshError`` when the connection cannot be made or
    breaks before the program exits; a program that ran and exited returns its status."""
    asyncssh = _asyncssh()
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                endpoint.host, endpoint.port, username=endpoint.username, client_keys=[identity.key],
                known_hosts=lambda *_: ([], [], []), client_factory=_client_factory(host_keys, host_ident),
                agent_path=None, config=None, preferred_auth="publickey", connect_timeout=connect_timeout,
                keepalive_interval=15, keepalive_count_max=4,
            ),
            connect_timeout + 5,
        )
    except asyncssh.PermissionDenied as exc:
        raise SshError(f"{endpoint}: our key was refused ({exc.reason})", auth=True) from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise SshError(f"{endpoint}: host key not trusted ({exc.reason}); it changed since the first "
                       "connection", auth=True) from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise SshError(f"{endpoint}: cannot connect ({type(exc).__name__}: {exc})") from None

    result = RunResult(exit_status=None)
    stderr_lines: list[str] = []
    try:
        async with conn:
            try:
                process = await conn.create_process(command, encoding="utf-8", errors="replace")
            except asyncssh.Error as exc:
                raise SshError(f"{endpoint}: the session was refused ({exc})") from None

            async def feed() -> None:
                process.stdin.write(stdin_text)
                await process.stdin.drain()
                process.stdin.write_eof()

            async def pump_stderr() -> None:
                async for line in process.stderr:
                    stderr_lines.append(line.rstrip("\n"))
                    del stderr_lines[:-20]

            async def pump_stdout() -> None:
                while True:
                    if stall_timeout:
                        line = await asyncio.wait_for(process.stdout.readline(), stall_timeout)
                    else:
                        line = await process.stdout.readline()
                    if not line:
                        return
                    try:
                        event = json.loads(line)
                    except ValueError:
                        stderr_lines.append(line.rstrip("\n"))
                        continue
                    if not isinstance(event, dict):
                        continue
                    result.events.append(event)
                    del result.events[:-50]
                    outcome = on_event(event)
                    if asyncio.iscoroutine(outcome):
                        await outcome

            try:
                await asyncio.wait_for(_all(feed(), pump_stdout(), pump_stderr()), run_timeout)
                await asyncio.wait_for(process.wait_closed(), 10)
            except TimeoutError:
                with contextlib.suppress(Exception):
                    process.kill()
                raise SshError(f"{endpoint}: no output for {stall_timeout or run_timeout:g} s") from None
            except (asyncssh.Error, OSError, BrokenPipeError) as exc:
                raise SshError(f"{endpoint}: the connection broke ({type(exc).__name__}: {exc})") from None
            result.exit_status = process.exit_status
            if result.exit_status is None and process.exit_signal is None:
                raise SshError(f"{endpoint}: the connection closed before the program finished")
    except (asyncssh.Error, OSError) as exc:
        if result.exit_status is None:
            raise SshError(f"{endpoint}: the connection broke ({type(exc).__name__}: {exc})") from None
    result.stderr_tail = "\n".join(stderr_lines[-5:])
    return result
