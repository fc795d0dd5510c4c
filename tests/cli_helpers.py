"""Run ``socialsync`` as a subprocess against a real daemon process, for the CLI tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "socialsync.tui"]
DAEMON = [sys.executable, "-m", "socialsync.daemon"]

# Fast simulators and no rate limits: the tests make many requests in little time.
FAST_DEMO_ENV = {
    "SOCIALSYNC_SIM__BOOT_SECONDS": "0.3",
    "SOCIALSYNC_SIM__STEP_TIME": "0.05",
    "SOCIALSYNC_LIMITS__AUTH": "10000",
    "SOCIALSYNC_LIMITS__SERVER_MANAGEMENT": "10000",
    "SOCIALSYNC_LIMITS__GENERATION": "10000",
    "SOCIALSYNC_LIMITS__DEFAULT": "10000",
    "SOCIALSYNC_SHUTDOWN_TIMEOUT": "5",
}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a process under test: none of the developer's settings, keys
    or directories, and XDG directories of its own."""
    drop = ("VAST_API_KEY", "STATE_DIRECTORY", "CONFIGURATION_DIRECTORY", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET",
            "XDG_RUNTIME_DIR", "JOURNAL_STREAM")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCIALSYNC_") and k not in drop}
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class RealDaemon:
    proc: subprocess.Popen[str]
    url: str
    state_dir: Path
    home: Path

    @property
    def key_file(self) -> Path:
        return self.state_dir / "admin.key"

    @property
    def key(self) -> str:
        return self.key_file.read_text().strip()

    def api(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        """A plain request, to compare the CLI's output with the API's."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"X-API-Key": key or self.key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def cli(self, *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60,
            auth: bool = True) -> subprocess.CompletedProcess[str]:
        """``socialsync --url <this daemon> --api-key-file <its admin key> ARGS``."""
        prefix = ["--url", self.url, "--api-key-file", str(self.key_file)] if auth else []
        return run_cli(*prefix, *args, env=env or clean_env(self.home), input=input, timeout=timeout)

    def cli_bg(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*CLI, "--url", self.url, "--api-key-file", str(self.key_file), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, env=clean_env(self.home))


def run_cli(*args: str, env: dict[str, str], input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise AssertionError(f"the daemon did not answer at {url}")


def start_demo_daemon(home: Path, port: int) -> RealDaemon:
    state = home / "state"
    (home / "tmp").mkdir(exist_ok=True)  # the simulators' files: under the test's directory, never /tmp
    env = clean_env(home, SOCIALSYNC_RUNTIME_DIR=str(home / "run"), TMPDIR=str(home / "tmp"), **FAST_DEMO_ENV)
    config = home / "socialsync.toml"
    config.write_text("")  # never the developer's own
    with open(home / "daemon.log", "w") as log:
        proc = subprocess.Popen([*DAEMON, "--demo", "--state-dir", str(state), "--port", str(port),
                                 "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    daemon = RealDaemon(proc, f"http://127.0.0.1:{port}", state, home)
    try:
        wait_http(daemon.url, proc)
    except BaseException:
        stop_process(proc)
        raise
    return daemon


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15) -> int | None:
    """SIGTERM (to its process group when it leads one), SIGKILL after ``timeout``."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait()
    return proc.returncode


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_many(*commands: list[str], env: dict[str, str], timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Several ``socialsync`` runs at once (each one's start-up is most of its time)."""
    procs = [subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, env=env) for args in commands]
    results = []
    try:
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess([*CLI, *args], proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def wait_until(check: Any, timeout: float = 30, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)
