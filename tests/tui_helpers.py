"""Helpers of the console's tests: a fake daemon that answers with fixed wire JSON (for
snapshots and the benchmark), deterministic fleet data, a daemon in its own process
(for the restart test), and a poll-until for Pilot tests."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from socialsync.common.client import Disconnected, Hello
from socialsync.common.errors import ApiError
from socialsync.common.events import Envelope, Snapshot

# -- a fixed clock ------------------------------------------------------------------------

NOW = datetime(2026, 6, 19, 12, 0, 0, tzinfo=UTC)
NOW_TS = NOW.timestamp()


def fixed_clock() -> float:
    return NOW_TS


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def ago(**kw: float) -> str:
    return iso(NOW - timedelta(**kw))


# -- deterministic fleet data -----------------------------------------------------------

GPUS = (("RTX 4090", 1, "0.3492"), ("RTX 3090", 2, "0.4508"), ("A100 SXM4", 1, "1.1008"),
        ("H100 SXM", 8, "20.0600"), ("RTX A5000", 4, "0.9800"))
PLACES = ("Oregon, US", "Seoul, KR", "Frankfurt, DE", "Sydney, AU", "Texas, US")
STATES = (("running", "ready"), ("running", "installing"), ("loading", "pending"), ("stopped", "ready"),
          ("error", "failed"), ("running", "ready"), ("launching", "pending"), ("offline", "failed"))


def server_json(i: int, *, status: str | None = None, setup: str | None = None, name: str | None = None) -> dict:
    gpu, count, price = GPUS[(i - 1) % len(GPUS)]
    st, su = STATES[(i - 1) % len(STATES)]
    created = NOW - timedelta(hours=3 + i % 7, minutes=i % 60)
    return {
        "id": i, "vastId": str(20000000 + i), "name": name or f"gpu-{i:04d}", "gpu": gpu, "gpuCount": count,
        "cpuCores": 16, "ram": 64, "disk": 100, "pricePerHour": price, "location": PLACES[i % len(PLACES)],
        "status": status or st, "setupStatus": setup or su,
        "statusMessage": "ComfyUI answers" if (status or st) == "running" else None,
        "serverUrl": f"http://10.0.0.{i % 250}:8188", "sshConnection": f"ssh root@ssh{i % 9}.vast.ai -p {20000 + i}",
        "metadata": {"comfyuiVersion": "0.3.64", "vramTotalGb": 24.0},
        "createdAt": iso(created), "updatedAt": iso(created + timedelta(minutes=2)),
    }


def fleet(n: int = 6) -> list[dict]:
    return [server_json(i) for i in range(1, n + 1)]


ACTIVE_GENERATIONS = [
    {"id": 41, "serverId": 1, "status": "processing", "progress": 45, "prompt": "a lighthouse at dusk, oil painting",
     "createdAt": ago(seconds=30)},
    {"id": 42, "serverId": 6, "status": "processing", "progress": 10, "prompt": "a red fox in the snow, 35mm photo",
     "createdAt": ago(seconds=12)},
    {"id": 43, "serverId": 1, "status": "queued", "progress": 0, "prompt": "isometric city at night, neon",
     "createdAt": ago(seconds=5)},
]


def finished_generation(gid: int, server_id: int = 1, status: str = "completed") -> dict:
    done = NOW - timedelta(minutes=60 - gid)
    g = {
        "id": gid, "serverId": server_id, "workflowId": None, "prompt": f"study #{gid}: mountains at sunrise",
        "negativePrompt": "blurry, low quality", "status": status, "progress": 100 if status == "completed" else 40,
        "step": 19, "steps": 20, "seed": 1000 + gid, "checkpoint": "sd_xl_base_1.0.safetensors",
        "parameters": {"width": 512, "height": 512, "steps": 20, "cfg_scale": 7.0, "sampler": "euler",
                       "seed": 1000 + gid},
        "queueId": f"prompt-{gid:04d}", "error": None if status == "completed" else "CUDA out of memory",
        "imageUrls": [], "images": [], "principal": "local-admin",
        "createdAt": iso(done - timedelta(seconds=20)), "startedAt": iso(done - timedelta(seconds=18)),
        "completedAt": iso(done), "durationMs": 18_000 + gid * 10,
    }
    if status == "completed":
        sha = f"{gid:064x}"
        g["imageUrls"] = [f"/api/images/{sha}.png"]
        g["images"] = [{"index": 0, "url": f"/api/images/{sha}.png", "sha256": sha, "size": 180_059,
                        "contentType": "image/png", "width": 512, "height": 512,
                        "filename": f"gen-{gid}_00001_.png", "nodeId": "9"}]
    return g


RECENT = [finished_generation(g, 1 + g % 3, "failed" if g == 37 else "completed") for g in range(40, 30, -1)]

STATS = {
    "asOf": iso(NOW),
    "servers": {"total": 6, "ready": 2, "byStatus": {"running": 3, "loading": 1, "stopped": 1, "error": 1},
                "bySetupStatus": {"ready": 3, "installing": 1, "pending": 1, "failed": 1}},
    "generations": {"queued": 1, "processing": 2, "completedToday": 57, "failedLastHour": 1},
    "spend": {"today": "14.27", "thisMonth": "812.40", "burnRate": "22.32", "projectedMonth": "1420.00",
              "dailyCap": None, "monthlyCap": None},
    "vastCredit": "487.65",
}

OFFERS = [
    {"offerId": str(5101000 + i), "gpu": gpu, "gpuCount": count, "gpuRam": ram, "cpuCores": 16.0, "ram": 64.0,
     "disk": disk, "pricePerHour": price, "pricePerDay": f"{float(price) * 24:.4f}", "location": place,
     "country": place[-2:], "reliability": rel, "verified": True, "directPorts": 500, "internetDown": 900.0 + i,
     "internetUp": 500.0, "dlperf": dl, "cuda": 12.4}
    for i, (gpu, count, ram, disk, price, place, rel, dl) in enumerate([
        ("RTX 3090", 1, 24.6, 64.0, "0.2159", "Sydney, AU", 0.978, 14.6),
        ("RTX 4090", 1, 24.6, 128.0, "0.3492", "Seoul, KR", 0.9857, 26.1),
        ("RTX 4090", 1, 24.6, 64.0, "0.3742", "Oregon, US", 0.9848, 26.1),
        ("A100 SXM4", 1, 81.9, 128.0, "1.1008", "Seoul, KR", 0.995, 33.5),
        ("RTX A5000", 8, 24.6, 1024.0, "2.2530", "Oregon, US", 0.98, 105.6),
        ("H100 SXM", 8, 81.9, 512.0, "20.0600", "Sydney, AU", 0.968, 488.0),
    ])
]


def analytics(servers: list[dict]) -> dict:
    figures = []
    for s in servers:
        hours = 2 + s["id"] % 5
        figures.append({
            "serverId": s["id"], "name": s["name"], "kind": "vast", "status": s["status"],
            "runningSeconds": hours * 3600.0 + s["id"] * 61, "runningHours": hours, "lifetimeSeconds": hours * 4000.0,
            "uptimePercent": 90.0, "cost": f"{float(s['pricePerHour']) * hours:.4f}", "runningCost": "0",
            "storageCost": "0", "costPerGeneration": None, "pricePerHour": s["pricePerHour"],
            "diskCostPerHour": "0.0083",
        })
    return {"since": iso(NOW - timedelta(days=1)), "until": iso(NOW), "bucket": "day", "fleet": {},
            "servers": figures, "series": []}


HISTORY = [
    {"at": ago(hours=2, minutes=58), "status": "running", "setupStatus": "ready", "reason": "ComfyUI answers"},
    {"at": ago(hours=2, minutes=59), "status": "running", "setupStatus": "installing",
     "reason": "waiting for ComfyUI to answer"},
    {"at": ago(hours=3), "status": "loading", "setupStatus": "pending", "reason": "vast: loading"},
    {"at": ago(hours=3, minutes=1), "status": "launching", "setupStatus": "pending", "reason": "launch requested"},
]
MODELS = {"serverId": 1, "count": 3, "refreshedAt": ago(minutes=1), "stale": False,
          "folders": {"checkpoints": [{"name": "sd_xl_base_1.0.safetensors", "size": 6938078334}],
                      "loras": [{"name": "detail_tweaker_xl.safetensors", "size": 228_460_000}],
                      "vae": [{"name": "sdxl_vae.safetensors", "size": 334_641_164}]}}
DOWNLOADS = [{"id": 2, "serverId": 1, "name": "SDXL Turbo, fp16", "url": "https://huggingface.co/x/sdxl_turbo.safetensors",
              "folder": "checkpoints", "filename": "sd_xl_turbo_1.0_fp16.safetensors", "status": "running",
              "bytesDone": 3_400_000_000, "bytesTotal": 6_900_000_000, "rate": 52_000_000, "error": None,
              "createdAt": ago(minutes=2), "updatedAt": ago(seconds=1), "description": "", "method": "ssh",
              "sha256": None}]
AUDIT = [
    {"id": 3, "at": ago(minutes=20), "actor": "local-admin", "action": "generation.create",
     "targetType": "generation", "targetId": "40", "outcome": "success", "details": {"serverId": 1}},
    {"id": 2, "at": ago(hours=3, minutes=1), "actor": "local-admin", "action": "server.launch",
     "targetType": "server", "targetId": "1", "outcome": "success", "details": {"offerId": "5101001"}},
]


def routes(servers: list[dict] | None = None, *, role: str = "admin") -> dict[tuple[str, str], Any]:
    servers = fleet() if servers is None else servers
    r: dict[tuple[str, str], Any] = {
        ("GET", "/api/auth/me"): {"success": True, "principal": {"kind": "key", "name": "local-admin", "role": role}},
        ("GET", "/api/stats"): STATS,
        ("GET", "/api/server-analytics"): analytics(servers),
        ("GET", "/api/generations"): RECENT,
        ("GET", "/api/audit-logs"): AUDIT,
        ("GET", "/api/vast-offers"): OFFERS,
        ("GET", "/api/workflows"): [],
    }
    for s in servers:
        sid = s["id"]
        r[("GET", f"/api/vast-servers/{sid}")] = s
        r[("GET", f"/api/vast-servers/{sid}/history")] = HISTORY
        r[("GET", f"/api/comfy/{sid}/models")] = {**MODELS, "serverId": sid}
        r[("GET", f"/api/comfy/{sid}/models/downloads")] = [dict(d, serverId=sid) for d in DOWNLOADS]
    for g in RECENT:
        r[("GET", f"/api/generations/{g['id']}")] = g
    return r


# -- the fake daemon ----------------------------------------------------------------------


class FakeStream:
    """What ``DaemonClient.events()`` yields: a hello with the snapshot, then what the
    test (or benchmark) pushes."""

    def __init__(self, daemon: FakeDaemon):
        self.daemon = daemon
        self.last_seq: int | None = None

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Any:
        d = self.daemon
        if not d.greeted:
            d.greeted = True
            self.last_seq = d.seq
            return Hello(d.seq, d.epoch, Snapshot.model_validate(d.snapshot), False, "zmq")
        item = await d.queue.get()
        if isinstance(item, Envelope):
            self.last_seq = item.seq
        return item

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def aclose(self) -> None:
        return None


class FakeDaemon:
    """Stands where ``DaemonClient`` stands, answering with a daemon's wire JSON."""

    def __init__(self, servers: list[dict] | None = None, generations: list[dict] | None = None, *,
                 role: str = "admin", extra: dict | None = None):
        servers = fleet() if servers is None else servers
        self.base_url = "http://127.0.0.1:8420"
        self.routes = {**routes(servers, role=role), **(extra or {})}
        self.snapshot = {"servers": servers,
                         "generations": ACTIVE_GENERATIONS if generations is None else generations}
        self.seq = 100
        self.epoch = "epoch-1"
        self.greeted = False
        self.requests: list[tuple[str, str, Any, Any]] = []
        self._queue: asyncio.Queue | None = None

    @property
    def queue(self) -> asyncio.Queue:
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._queue

    async def request(self, method: str, path: str, json: Any = None, params: dict | None = None) -> Any:
        self.requests.append((method, path, json, params))
        answer = self.routes.get((method, path))
        if callable(answer):
            answer = answer(json, params)
        if isinstance(answer, ApiError):
            raise answer
        if answer is None:
            raise ApiError(404, "NOT_FOUND", "Not found", f"{method} {path}")
        return copy.deepcopy(answer)

    async def fetch_bytes(self, path: str) -> bytes:
        return b"\x89PNG fake"

    def events(self, types: Any = None, server_ids: Any = None, transport: str = "auto", since: Any = None, *,
               epoch: Any = None, backoff: Any = None) -> FakeStream:
        return FakeStream(self)

    def push(self, type: str, data: dict[str, Any], ts: str | None = None) -> None:
        self.seq += 1
        self.queue.put_nowait(Envelope(type=type, data=data, seq=self.seq, ts=ts or iso(NOW)))

    def disconnect(self, reason: str = "connection refused") -> None:
        self.queue.put_nowait(Disconnected(reason, None, 2.0, 1))

    async def close(self) -> None:
        return None


# -- polling a Pilot-driven app ------------------------------------------------------------


async def until(pilot: Any, check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Let the app run until ``check()`` is truthy (it is read on the app's loop)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await pilot.pause(0.05)


def text_of(widget: Any, width: int = 200) -> str:
    """What a widget shows, as plain text (its content rendered by Rich)."""
    import io

    from rich.console import Console

    content = getattr(widget, "content", None)
    if content is None:
        return str(widget.render())
    if isinstance(content, str):
        from rich.text import Text

        try:
            return Text.from_markup(content).plain
        except Exception:
            return content
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(content)
    return console.export_text()


def screen_lines(app: Any) -> list[str]:
    """The terminal as the user sees it now, one string a line (what a snapshot draws)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def cell_text(table: Any, row_key: str, column: str) -> str:
    value = table.get_cell(row_key, column)
    return getattr(value, "plain", str(value))


# -- a daemon in its own process ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """``python -m socialsync.daemon --demo`` on a fixed port and state dir, so it can be
    killed and started again as the same daemon. Always ``stop()`` it (in a finally)."""

    def __init__(self, state_dir: Path, port: int | None = None, *, boot_seconds: float = 0.4,
                 step_time: float = 0.02):
        self.state_dir = state_dir
        self.port = port or free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="ss-tui-", dir="/tmp"))  # short: an ipc path has a limit
        self.env = {**os.environ, "SOCIALSYNC_SIM__BOOT_SECONDS": str(boot_seconds),
                    "SOCIALSYNC_SIM__STEP_TIME": str(step_time), "SOCIALSYNC_RUNTIME_DIR": str(self.run_dir),
                    "SOCIALSYNC_LIMITS__SERVER_MANAGEMENT": "1000", "SOCIALSYNC_LIMITS__GENERATION": "1000",
                    "SOCIALSYNC_LIMITS__DEFAULT": "10000"}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.run_dir / "daemon.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.state_dir / "admin.key").read_text().strip()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:  # a file, not a pipe nobody reads (it would fill and block)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "socialsync.daemon", "--demo", "--state-dir", str(self.state_dir),
                 "--port", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=log, env=self.env, start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0 and (self.state_dir / "admin.key").exists():
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("the daemon did not listen")

    def kill(self) -> None:
        """Gone at once, as a crash or a power cut (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.run_dir, ignore_errors=True)
