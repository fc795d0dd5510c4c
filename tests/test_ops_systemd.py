"""systemd: sd_notify seen on a real datagram socket, from the real ``socialsyncd``
process; the watchdog driven by the event loop; the unit file checked by systemd's tools."""

from __future__ import annotations

import asyncio
import configparser
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from harness import running_daemon
from ops_daemon import DaemonProcess

from socialsync.daemon import keys
from socialsync.daemon.settings import Settings
from socialsync.daemon.systemd import Notifier, Systemd, notify_address, watchdog_interval

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "socialsyncd.service"
INSTALLED_EXEC = "/opt/socialsync/.venv/bin/socialsyncd"
WATCHDOG_USEC = 400_000


class NotifySocket:
    """What systemd listens on: a bound AF_UNIX datagram socket (a short path: the
    limit is 108 bytes), every message kept with its arrival time."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sdn-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append((time.monotonic(), fields))
        return fields

    def until(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout}s; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    ns = NotifySocket()
    try:
        yield ns
    finally:
        ns.close()


def pings_between(ns: NotifySocket, start: float, end: float) -> list[float]:
    return [t for t, fields in ns.messages if start <= t <= end and fields.get("WATCHDOG") == "1"]


# -- sd_notify and the watchdog settings, as functions ------------------------------------------
def test_notify_is_a_noop_without_notify_socket():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready("x") is False and notifier.watchdog() is False
    assert Systemd.from_environ({"WATCHDOG_USEC": "400000"}).watchdog is None  # nobody to ping


def test_notify_reaches_an_abstract_socket():
    name = f"socialsync-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.ready("listening here;\nsecond line")
            assert server.recv(4096) == b"READY=1\nSTATUS=listening here; second line"
        finally:
            notifier.close()


def test_notify_address_forms():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract") == "\0abstract"
    assert notify_address("vsock:2:1234") is None
    assert notify_address(None) is None and notify_address("") is None


def test_watchdog_interval_from_environment():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "400000"}) == 0.4
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42"}, pid=42) == 0.4
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "43"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


# -- the real process ------------------------------------------------------------------------------
def test_real_process_notifies_ready_status_watchdog_and_stopping(tmp_path, notify_socket):
    ns = notify_socket
    env = {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with DaemonProcess(tmp_path, env=env) as d:
        ready = ns.until("READY", timeout=10)
        # READY=1 only once the port answers: at this very moment an HTTP request works.
        assert d.port_answers()
        with urllib.request.urlopen(f"{d.base_url}/api/health", timeout=5) as r:
            assert r.status == 200
        assert ready["READY"] == "1"
        assert ready["STATUS"] == f"listening 127.0.0.1:{d.port}; 0 servers (0 ready), 0 generations running"
        ready_at = ns.messages[-1][0]

        while time.monotonic() < ready_at + 1.6:
            ns.receive(0.5)
        pings = pings_between(ns, ready_at, ready_at + 1.6)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        half = WATCHDOG_USEC / 2e6
        assert len(pings) >= 5, pings
        assert 0.75 * half < statistics.median(gaps) < 1.25 * half, gaps  # every 0.2 s
        assert max(gaps) < 2 * half, gaps  # never as late as WATCHDOG_USEC (a restart)

        d.signal(signal.SIGTERM)
        stopping = ns.until("STOPPING", timeout=10)
        assert stopping["STOPPING"] == "1" and stopping["STATUS"] == "shutting down"
        assert int(stopping["EXTEND_TIMEOUT_USEC"]) == int(Settings().shutdown_timeout * 1e6)
        assert d.wait(15) == 0


def test_watchdog_pings_stop_while_the_loop_is_blocked(tmp_path, notify_socket):
    """The ping is a loop task: a handler that blocks the loop for 1.2 s silences it, so
    systemd would notice (a thread would have gone on pinging)."""
    patch = """
import time
from aiohttp import web
real = m.create_app
def create_app(settings):
    app = real(settings)
    async def block(request):
        time.sleep(1.2)
        return web.Response(text="blocked")
    app.router.add_get("/test/block", block)
    return app
m.create_app = create_app
"""
    ns = notify_socket
    env = {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with DaemonProcess(tmp_path, env=env, patch=patch) as d:
        ns.until("READY", timeout=10)
        ns.until("WATCHDOG", timeout=2)
        with urllib.request.urlopen(f"{d.base_url}/test/block", timeout=5) as r:
            assert r.read() == b"blocked"
        blocked_until = time.monotonic()
        ns.until("WATCHDOG", timeout=2)
        while time.monotonic() < blocked_until + 0.5:
            ns.receive(0.3)
        pings = pings_between(ns, 0, time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) > 1.0, gaps  # the silence while blocked
        assert min(gaps[-2:]) < 0.4, gaps  # and pinging again afterwards
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0


async def test_status_is_refreshed_from_the_database(tmp_path, notify_socket):
    """STATUS= follows the rows: periodically, and soon after a fleet event."""
    ns = notify_socket
    ns.sock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def next_status(timeout: float = 5) -> str:
        while True:
            data = await asyncio.wait_for(loop.sock_recv(ns.sock, 4096), timeout)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            if "STATUS" in fields:
                return fields["STATUS"]

    async with running_daemon(tmp_path / "state") as d:
        db = d.app[keys.DB]
        sd = Systemd(Notifier(ns.path), status_interval=0.2, status_debounce=0.05)
        try:
            await sd.ready(d.app, "127.0.0.1:1")
            assert await next_status() == "listening 127.0.0.1:1; 0 servers (0 ready), 0 generations running"
            now = "2026-01-01T00:00:00Z"
            for status, setup in [("running", "ready"), ("running", "installing"), ("destroyed", "ready")]:
                await db.execute("INSERT INTO servers (name, status, setup_status, created_at, updated_at) "
                                 "VALUES ('s', ?, ?, ?, ?)", (status, setup, now, now))
            for status in ("processing", "queued", "queued", "completed"):
                await db.execute("INSERT INTO generations (prompt, status, created_at) VALUES ('p', ?, ?)",
                                 (status, now))
            assert await next_status() == ("listening 127.0.0.1:1; 2 servers (1 ready), "
                                           "1 generation running, 2 queued")

            sd.status_interval = 3600  # from now on only an event can trigger a refresh
            await asyncio.sleep(0.3)  # let the refresher pick up the long interval
            await db.execute("UPDATE generations SET status = 'completed'")
            d.app[keys.BUS].publish("generation_completed", {"generationId": 1})
            assert await next_status(2) == "listening 127.0.0.1:1; 2 servers (1 ready), 0 generations running"
        finally:
            await sd.stopping()
            await sd.aclose()


def test_daemon_runs_under_memory_deny_write_execute(tmp_path):
    """``MemoryDenyWriteExecute=yes`` must not break CPython, orjson, pyzmq or sqlite:
    the kernel's own W^X switch (PR_SET_MDWE, Linux 6.3+) stands in for systemd's
    seccomp filter, set before anything is imported."""
    probe = subprocess.run([sys.executable, "-c", MDWE + "print('enforced')"],
                           capture_output=True, text=True, timeout=30)
    if "enforced" not in probe.stdout:
        pytest.skip(f"this kernel cannot enforce W^X with prctl(PR_SET_MDWE): {probe.stderr.strip()[-200:]}")
    patch = """
import os, orjson, zmq
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.bind("ipc://" + os.environ["TEST_ZMQ_SOCKET"])
pub.send_multipart([b"t", orjson.dumps({"ok": True})])
pub.close(0)
ctx.term()
"""
    env = {"TEST_ZMQ_SOCKET": str(tmp_path / "zmq.sock")}
    with DaemonProcess(tmp_path, env=env, prelude=MDWE, patch=patch) as d:
        d.wait_listening()
        req = urllib.request.Request(f"{d.base_url}/api/api-keys", method="POST", data=b'{"name":"mdwe"}',
                                     headers={"Authorization": f"Bearer {d.admin_key}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 201
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0, d.stderr()


# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), then check that W|X memory is refused.
MDWE = """
import ctypes, mmap
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    raise SystemExit("prctl(PR_SET_MDWE) failed errno=%d" % ctypes.get_errno())
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    raise SystemExit("W^X memory was allowed")
"""


# -- the unit file ---------------------------------------------------------------------------------
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def seconds(value: str) -> float:
    number, unit_ = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[unit_]


def test_unit_file_is_a_notify_service_with_a_watchdog():
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"] == INSTALLED_EXEC
    assert INSTALLED_EXEC in (ROOT / "README.md").read_text()
    assert service["Restart"] == "on-failure"
    assert seconds(service["WatchdogSec"]) >= 10
    assert seconds(service["TimeoutStopSec"]) > Settings().shutdown_timeout
    assert service["EnvironmentFile"] == "-/etc/socialsync/socialsync.env"
    for key in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert service[key] == "socialsync"
    assert service["UMask"] == "0077"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "IPAddressDeny" not in service  # servers on Vast have any public address
    example = (ROOT / "systemd" / "socialsync.env.example").read_text()
    assert re.search(r"^#?\s*VAST_API_KEY=", example, re.M)


def rewritten_unit(directory: Path) -> Path:
    """A copy of the unit whose ExecStart is this venv's ``socialsyncd`` (see .ci/run)."""
    binary = Path(shutil.which("socialsyncd", path=str(Path(sys.executable).parent)) or "")
    if not binary.is_file():
        pytest.skip("no socialsyncd console script next to this Python")
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC}\n" in text
    copy = directory / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_EXEC}\n",
                                 f"ExecStart={str(binary).replace('%', '%%')}\n"))
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_file_verifies_clean_and_scores_at_most_2(tmp_path):
    copy = rewritten_unit(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert level, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0 and security.returncode == 0, security.stdout
