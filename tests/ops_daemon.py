"""A real ``socialsyncd`` process for the operations tests: started with a clean
environment on a free loopback port, its stderr in a file (a pipe could fill up and
stall the daemon), always killed at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import free_port

from socialsync.tui.demo import DIE_WITH_PARENT

# Inherited from a CI runner started by systemd, these would talk to the real manager.
_FOREIGN = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID",
            "VAST_API_KEY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CONFIGURATION_DIRECTORY")
NO_LIMITS = {f"SOCIALSYNC_LIMITS__{c}": "1000000" for c in ("AUTH", "SERVER_MANAGEMENT", "GENERATION", "DEFAULT")}

# Runs the real ``main()`` after ``prelude`` (before the daemon is imported) and
# ``patch`` (Python source, ``m`` is the daemon's ``__main__`` module): how a test makes
# a cleanup hang or the loop block.
LAUNCHER = """
import sys
{prelude}
import socialsync.daemon.__main__ as m
{patch}
sys.exit(m.main(sys.argv[1:]))
"""


def daemon_command() -> list[str]:
    """The console script ``pip`` installed next to this Python, else ``-m``."""
    script = shutil.which("socialsyncd", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "socialsync.daemon"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCIALSYNC_") and k not in _FOREIGN}
    env.update(extra)
    return env


class DaemonProcess:
    def __init__(self, tmp: Path, *, env: dict[str, str] | None = None, patch: str | None = None,
                 prelude: str | None = None, args: tuple[str, ...] = (), stderr: Path | None = None):
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = stderr or tmp / "stderr.log"
        if patch is None and prelude is None:
            command = daemon_command()
        else:
            command = [sys.executable, "-c", LAUNCHER.format(prelude=prelude or "", patch=patch or "")]
        self.command = [*command, "--state-dir", str(self.state_dir), "--port", str(self.port), *args]
        self.env = clean_env(**(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        # On Linux through the demo's stub: the kernel sends the daemon SIGTERM if this
        # process dies before it could kill it (a killed test run or reliability script
        # leaves no daemon behind). exec keeps the pid, so signals and waits reach the daemon.
        command = self.command
        if sys.platform.startswith("linux"):
            command = [sys.executable, "-S", "-c", DIE_WITH_PARENT, str(os.getpid()), *command]
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, env=self.env)
        return self

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def port_answers(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def wait_listening(self, timeout: float = 10) -> DaemonProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
            if self.port_answers():
                return self
            time.sleep(0.02)
        raise AssertionError(f"daemon did not listen within {timeout}s:\n{self.stderr()}")

    @property
    def admin_key(self) -> str:
        return (self.state_dir / "admin.key").read_text().strip()

    @property
    def db_path(self) -> Path:
        return self.state_dir / "socialsync.db"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
