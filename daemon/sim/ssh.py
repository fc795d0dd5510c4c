"""A simulated SSH endpoint for every simulated Vast instance (asyncssh on loopback).

Plug it into ``VastSim(ssh_provider=SshSim(...))``: each instance that reaches
``running`` gets its own SSH server on ``127.0.0.1:<port>`` (the sim reports it as
``ssh_host``/``ssh_port`` and as ``22/tcp``). Like a real instance it accepts only the
public keys attached to that instance through the Vast API
(``POST /api/v0/instances/{id}/ssh/``), and it really runs the command it is given,
with ``/bin/sh -c``, so a model download really fetches its URL onto this machine.

The instance's filesystem is a sandbox: paths under the configured ComfyUI root
(``/workspace/ComfyUI`` by default) are rewritten to local directories, normally the
directories of that instance's ComfyUI simulator, so a downloaded model appears in
``GET /models/<folder>`` at once. ``python3`` at the start of a command is this
interpreter. Everything else in the command is left exactly as sent: quoting mistakes
would really bite here.

Knobs: ``commands`` (every command asked for, executed or not), ``auth_log``, and
``drop_after(nbytes)``: kill the running command and drop the connection once its
progress output reports ``nbytes`` (a broken connection mid-download).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/workspace/ComfyUI"


@dataclass
class SshCommand:
    instance_id: int
    username: str
    command: str
    exit_status: int | None = None
    dropped: bool = False


@dataclass
class _Drop:
    after_bytes: int
    count: int
    instance_id: int | None


@dataclass
class _Instance:
    id: int
    acceptor: asyncssh.SSHAcceptor
    port: int
    conns: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    procs: set[asyncio.subprocess.Process] = field(default_factory=set)
    sandbox: Path | None = None


def _key_text(key: asyncssh.SSHKey | str) -> str:
    text = key if isinstance(key, str) else key.export_public_key("openssh").decode()
    return " ".join(text.split()[:2])


def comfy_roots(sims: Mapping[int, Any], comfy_root: str = DEFAULT_ROOT) -> Callable[[int], dict[str, Path]]:
    """Map an instance's ComfyUI root to its ComfyUI simulator (``{instance id: ComfySim}``,
    e.g. ``DemoComfyProvider.sims``): ``<root>/models`` → the sim's models directory,
    ``<root>`` → its base directory."""

    def roots(instance_id: int) -> dict[str, Path]:
        sim = sims.get(int(instance_id))
        if sim is None:
            raise KeyError(f"instance {instance_id} has no ComfyUI simulator")
        return {f"{comfy_root}/models": Path(sim.models_dir), comfy_root: Path(sim.output_dir).parent}

    return roots


class SshSim:
    def __init__(
        self,
        roots: Callable[[int], Mapping[str, Path]] | None = None,
        *,
        vast: Any = None,
        host: str = "127.0.0.1",
        comfy_root: str = DEFAULT_ROOT,
        python: str = sys.executable,
    ) -> None:
        self.roots = roots
        self.vast = vast
        self.host = host
        self.comfy_root = comfy_root.rstrip("/")
        self.python = python
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        #: Extra keys per instance, beside the ones attached through the Vast sim.
        self.extra_keys: dict[int, set[str]] = {}
        self.commands: list[SshCommand] = []
        self.auth_log: list[tuple[int, str, str, bool]] = []  # (instance, user, key, accepted)
        self._instances: dict[int, _Instance] = {}
        self._drops: list[_Drop] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._by_conn: dict[Any, set[asyncio.subprocess.Process]] = {}

    # -- wiring ----------------------------------------------------------------------
    def attach_vast(self, vast: Any) -> None:
        """The Vast sim whose ``POST …/ssh/`` keys are the authorized ones."""
        self.vast = vast

    def authorized_keys(self, instance_id: int) -> set[str]:
        keys = set(self.extra_keys.get(instance_id, set()))
        inst = None
        if self.vast is not None:
            inst = self.vast.instances.get(instance_id)
        if inst is not None:
            keys.update(_key_text(k) for k in inst.ssh_keys)
        return keys

    def port(self, instance_id: int) -> int | None:
        inst = self._instances.get(int(instance_id))
        return inst.port if inst else None

    def drop_after(self, nbytes: int, count: int = 1, instance_id: int | None = None) -> None:
        """Fault: once a running command prints progress with ``bytes >= nbytes``, kill it
        and drop the SSH connection (``count`` times)."""
        self._drops.append(_Drop(int(nbytes), int(count), instance_id))

    # -- the provider protocol -------------------------------------------------------
    async def on_running(self, instance: dict[str, Any]) -> int:
        instance_id = int(instance["id"])
        await self.on_gone(instance_id)
        acceptor = await asyncssh.create_server(
            lambda: _Server(self, instance_id), self.host, 0, server_host_keys=[self.host_key],
            process_factory=lambda p: self._spawn(instance_id, p), encoding=None, line_editor=False,
            allow_scp=False, agent_forwarding=False, x11_forwarding=False, config=None,
        )
        port = acceptor.get_port()
        self._instances[instance_id] = _Instance(instance_id, acceptor, port)
        log.debug("ssh sim listening instance_id=%s port=%d", instance_id, port)
        return port

    async def on_gone(self, instance_id: int) -> None:
        inst = self._instances.pop(int(instance_id), None)
        if inst is None:
            return
        inst.acceptor.close()
        for proc in list(inst.procs):
            _kill(proc)
        for conn in list(inst.conns):
            conn.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(inst.acceptor.wait_closed(), 2)

    async def close(self) -> None:
        for instance_id in list(self._instances):
            await self.on_gone(instance_id)
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> SshSim:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the filesystem --------------------------------------------------------------
    def _mapping(self, instance_id: int) -> dict[str, Path]:
        if self.roots is not None:
            mapping = dict(self.roots(instance_id))
        else:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="sshsim-")
            base = Path(self._tmp.name) / f"instance-{instance_id}"
            mapping = {self.comfy_root: base}
        for local in mapping.values():
            if shlex.quote(str(local)) != str(local):
                raise ValueError(f"sandbox path must be shell-safe: {local}")
            local.mkdir(parents=True, exist_ok=True)
        return mapping

    def rewrite(self, instance_id: int, command: str) -> tuple[str, Path]:
        """The command as it runs here: remote paths → sandbox, leading python3 → this one."""
        mapping = self._mapping(instance_id)
        for remote in sorted(mapping, key=len, reverse=True):
            pattern = re.escape(remote) + r"(?=/|'|\"|\s|$)"
            command = re.sub(pattern, lambda _m, local=str(mapping[remote]): local, command)
        command = re.sub(r"^\s*python3(?=\s)", lambda _m: shlex.quote(self.python), command)
        base = mapping.get(self.comfy_root) or next(iter(mapping.values()))
        return command, base

    # -- sessions --------------------------------------------------------------------
    def _spawn(self, instance_id: int, process: asyncssh.SSHServerProcess) -> None:
        task = asyncio.get_running_loop().create_task(self._run(instance_id, process))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run(self, instance_id: int, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        record = SshCommand(instance_id, str(process.get_extra_info("username")), command)
        self.commands.append(record)
        inst = self._instances.get(instance_id)
        if inst is None or not command:
            process.stderr.write(b"this simulator runs commands only (no interactive shell)\n")
            process.exit(1)
            return
        try:
            local, cwd = self.rewrite(instance_id, command)
        except (KeyError, ValueError) as exc:
            process.stderr.write(f"sandbox unavailable: {exc}\n".encode())
            process.exit(1)
            return
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", local, cwd=str(cwd), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        inst.procs.add(proc)
        conn = process.get_extra_info("connection")
        self._by_conn.setdefault(conn, set()).add(proc)

        async def pump_in() -> None:
            try:
                while True:
                    data = await process.stdin.read(65536)
                    if not data:
                        break
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (asyncssh.Error, BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    proc.stdin.close()

        async def pump_out() -> None:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    return
                if self._should_drop(instance_id, line):
                    record.dropped = True
                    _kill(proc)
                    if conn is not None:
                        conn.abort()
                    return
                with contextlib.suppress(Exception):
                    process.stdout.write(line)

        async def pump_err() -> None:
            while True:
                data = await proc.stderr.read(65536)
                if not data:
                    return
                with contextlib.suppress(Exception):
                    process.stderr.write(data)

        async def hang_up() -> None:
            # The client went away (channel closed): the command dies with its session,
            # as it does under sshd once it writes to the closed pipe.
            await process.channel.wait_closed()
            _kill(proc)

        helpers = [asyncio.ensure_future(pump_in()), asyncio.ensure_future(hang_up())]
        try:
            await asyncio.gather(pump_out(), pump_err())
            record.exit_status = await proc.wait()
        except asyncio.CancelledError:
            _kill(proc)
            raise
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            inst.procs.discard(proc)
            self._by_conn.get(conn, set()).discard(proc)
        if not record.dropped:
            with contextlib.suppress(Exception):
                process.exit(record.exit_status if record.exit_status >= 0 else 255)

    def _should_drop(self, instance_id: int, line: bytes) -> bool:
        if not self._drops:
            return False
        try:
            event = json.loads(line)
        except ValueError:
            return False
        done = event.get("bytes") if isinstance(event, dict) else None
        if not isinstance(done, int):
            return False
        for drop in self._drops:
            if drop.count > 0 and (drop.instance_id in (None, instance_id)) and done >= drop.after_bytes:
                drop.count -= 1
                log.debug("ssh sim drops the connection instance_id=%s at bytes=%d", instance_id, done)
                return True
        return False


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


class _Server(asyncssh.SSHServer):
    def __init__(self, sim: SshSim, instance_id: int):
        self.sim = sim
        self.instance_id = instance_id
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        inst = self.sim._instances.get(self.instance_id)
        if inst is not None:
            inst.conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        inst = self.sim._instances.get(self.instance_id)
        if inst is not None and self.conn is not None:
            inst.conns.discard(self.conn)
        for proc in self.sim._by_conn.pop(self.conn, set()):
            _kill(proc)  # the session is gone: so is what it ran

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        text = _key_text(key)
        accepted = text in self.sim.authorized_keys(self.instance_id)
        self.sim.auth_log.append((self.instance_id, username, text, accepted))
        return accepted
