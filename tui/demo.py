"""``socialsync demo``: a newcomer's one command.

1. start ``socialsyncd --demo`` as a child process (simulated Vast.ai and ComfyUI, all
   in-process on loopback) on a free port, with its state in a temporary directory;
2. launch servers from the cheapest offers through the API, as an operator would;
3. open the console on it (or, ``--headless``, print how to attach one and wait);
4. stop the daemon when the console quits, on Ctrl-C, on SIGTERM/SIGHUP, or if the
   console crashes; then remove the temporary directory.

The daemon runs in its own session and process group: the terminal's Ctrl-C reaches
this process only, which stops the daemon in order (SIGTERM to the group, SIGKILL after
``STOP_TIMEOUT``). On Linux the child also asks the kernel for SIGTERM should this
process die without cleaning up (``PR_SET_PDEATHSIG``, see ``DIE_WITH_PARENT``), so no demo daemon outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

START_TIMEOUT = 90.0  # a cold start imports a lot; a loaded machine is slow
STOP_TIMEOUT = 10.0
CHILD_SHUTDOWN_TIMEOUT = "5"  # the demo daemon's own shutdown deadline (it holds nothing precious)
SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")

Console = Callable[[str, str, str], int]  # (url, api key, transport) -> exit status


class Terminated(BaseException):  # a signal, as KeyboardInterrupt is
    """SIGTERM or SIGHUP arrived: stop the demo as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class DemoError(Exception):
    """The demo daemon could not be started."""


@dataclass
class DemoDaemon:
    proc: subprocess.Popen[bytes]
    url: str
    root: Path
    state_dir: Path
    log_path: Path
    temporary: bool
    api_key: str = ""
    servers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key_file(self) -> Path:
        return self.state_dir / "admin.key"

    def attach_command(self) -> str:
        return f"socialsync --url {self.url} --api-key-file {self.key_file}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# On Linux the daemon is started through this stub: it asks the kernel for SIGTERM when
# its parent (this process) dies, checks the parent is still there, then becomes the
# daemon (exec keeps the pid and the death signal). A stub rather than a preexec_fn,
# which is unsafe when the parent has threads.
DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def daemon_command(*args: str) -> list[str]:
    cmd = [sys.executable, "-m", "socialsync.daemon", *args]
    if sys.platform.startswith("linux"):
        return [sys.executable, "-S", "-c", DIE_WITH_PARENT, str(os.getpid()), *cmd]
    return cmd


def spawn_daemon(state_dir: Path | None, port: int) -> DemoDaemon:
    """Start ``socialsyncd --demo`` in its own process group; returns at once."""
    temporary = state_dir is None
    root = Path(tempfile.mkdtemp(prefix="socialsync-demo-")) if state_dir is None else state_dir.resolve()
    state = root / "state" if temporary else root
    try:
        state.mkdir(parents=True, exist_ok=True)
        config = root / "demo.toml"
        # The demo never reads the operator's own socialsyncd config (a real Vast key,
        # cost caps): an empty file of its own. SOCIALSYNC_* variables still apply.
        config.write_text("# socialsync demo: defaults only\n")
        log_path = root / "daemon.log"
        port = port or free_port()
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARS}
        env["SOCIALSYNC_RUNTIME_DIR"] = str(root / "run")  # its own ZeroMQ socket
        # Its own temporary files (the simulated servers' disks) inside ours, so that
        # removing ours leaves nothing even if it is killed before cleaning up.
        (root / "tmp").mkdir(exist_ok=True)
        env["TMPDIR"] = str(root / "tmp")
        env.setdefault("SOCIALSYNC_SHUTDOWN_TIMEOUT", CHILD_SHUTDOWN_TIMEOUT)
        env.pop("SOCIALSYNC_STATE_DIR", None)
        cmd = daemon_command("--demo", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--state-dir", str(state))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
    except BaseException:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return DemoDaemon(proc, f"http://127.0.0.1:{port}", root, state, log_path, temporary)


def stop_daemon(daemon: DemoDaemon, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM to the daemon's process group, SIGKILL after ``timeout``; its exit status."""
    proc = daemon.proc

    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session: its group id is its pid

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt, Terminated):
            signal_group(signal.SIGKILL)
            proc.wait()
    return proc.returncode


def log_tail(daemon: DemoDaemon, lines: int = 20) -> str:
    try:
        text = daemon.log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


async def wait_ready(daemon: DemoDaemon, timeout: float = START_TIMEOUT) -> None:
    """Until ``/api/health`` answers (the daemon listens and its admin key is written)."""
    from socialsync.common.client import DaemonClient, DaemonUnavailable
    from socialsync.common.errors import ApiError

    deadline = time.monotonic() + timeout
    async with DaemonClient(daemon.url, timeout=2.0) as client:
        while True:
            if daemon.proc.poll() is not None:
                raise DemoError(f"the demo daemon exited with status {daemon.proc.returncode}")
            try:
                await client.request("GET", "/api/health")
                break
            except (DaemonUnavailable, ApiError):
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"the demo daemon did not answer at {daemon.url} within {timeout:g} s")
            await asyncio.sleep(0.1)
    daemon.api_key = daemon.key_file.read_text().strip()


async def launch_servers(daemon: DemoDaemon, count: int, err: TextIO) -> None:
    """Rent the ``count`` cheapest offers, through the API like any operator."""
    from socialsync.common.client import DaemonClient
    from socialsync.common.errors import ApiError

    if count <= 0:
        return
    async with DaemonClient(daemon.url, daemon.api_key) as client:
        offers = await client.request("GET", "/api/vast-offers", params={"order": "price", "limit": count})
        for i, offer in enumerate(offers, 1):
            try:
                launched = await client.request("POST", "/api/vast-servers",
                                                json={"offerId": offer["offerId"], "name": f"demo-{i}"})
            except ApiError as exc:
                err.write(f"warning: could not launch offer {offer['offerId']}: {exc.error} ({exc.code})\n")
                continue
            daemon.servers.append({**launched, "name": f"demo-{i}", "offerId": offer["offerId"],
                                   "gpu": offer.get("gpu"), "pricePerHour": offer.get("pricePerHour")})
            err.write(f"launched server {launched['id']} demo-{i}: {offer.get('gpu')} at "
                      f"${offer.get('pricePerHour')}/h ({offer.get('location')})\n")


def run_demo(args: argparse.Namespace, console: Console | None,
             out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The ``socialsync demo`` command; ``console`` opens the TUI (None: ``--headless``)."""
    out = out or sys.stdout
    err = err or sys.stderr
    headless = args.headless or console is None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def on_signal(signum: int, frame: object) -> None:
        raise Terminated(signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    daemon: DemoDaemon | None = None
    status = 0
    try:
        err.write("starting the demo daemon (simulated Vast.ai and ComfyUI on this machine)…\n")
        if os.environ.get("VAST_API_KEY") or os.environ.get("SOCIALSYNC_VAST__API_KEY"):
            err.write("a Vast key is configured: for your real fleet run `socialsyncd` (or the systemd unit) "
                      "and then `socialsync`; this is still the simulated demo.\n")
        err.flush()
        daemon = spawn_daemon(Path(args.state_dir) if args.state_dir else None, args.port)
        try:
            asyncio.run(wait_ready(daemon))
            asyncio.run(launch_servers(daemon, args.servers, err))
        except DemoError as exc:
            err.write(f"error: {exc}\n")
            tail = log_tail(daemon)
            if tail:
                err.write(f"the daemon's log ({daemon.log_path}) ends with:\n{tail}\n")
            return 1
        if headless:
            status = _headless(daemon, args, out, err)
        else:
            assert console is not None
            status = console(daemon.url, daemon.api_key, args.transport)
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        status = 130
    except Terminated as exc:
        err.write(f"\n{exc} received\n")
        status = 128 + exc.signum
    finally:
        if daemon is not None:
            err.write("stopping the demo daemon…\n")
            err.flush()
            stop_daemon(daemon)
            if daemon.temporary:
                shutil.rmtree(daemon.root, ignore_errors=True)
            else:
                shutil.rmtree(daemon.root / "tmp", ignore_errors=True)
                err.write(f"the demo's state is kept in {daemon.state_dir}\n")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    err.write("demo stopped\n")
    return status


def _headless(daemon: DemoDaemon, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    info = {"url": daemon.url, "apiKeyFile": str(daemon.key_file), "pid": daemon.proc.pid,
            "stateDir": str(daemon.state_dir), "log": str(daemon.log_path), "servers": daemon.servers,
            "attach": daemon.attach_command()}
    if args.json:
        out.write(json.dumps(info) + "\n")
    else:
        out.write(f"demo daemon: {daemon.url} (pid {daemon.proc.pid}, log {daemon.log_path})\n"
                  f"attach a console: {daemon.attach_command()}\n"
                  "Ctrl-C stops the demo.\n")
    out.flush()
    code = daemon.proc.wait()
    err.write(f"error: the demo daemon exited by itself with status {code}\n")
    tail = log_tail(daemon)
    if tail:
        err.write(f"the daemon's log ends with:\n{tail}\n")
    return 1
