"""The ZeroMQ stream with real pyzmq subscribers: two frames (topic, the /ws envelope),
prefix filtering, the Clone pattern against /api/events/info and the HTTP snapshot,
heartbeats, tcp endpoints, the socket's options, a publisher that never blocks, and the
ipc file's life (stale one replaced, live one refused, removed on shutdown)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio
from aiohttp import web
from harness import make_settings, running_daemon

from socialsync.daemon import keys
from socialsync.daemon.app import create_app
from socialsync.daemon.events.zmq_pub import EndpointError

SEED_PROGRESS = {"generationId": 123, "progress": 75, "status": "processing"}


@pytest.fixture
def run_dir():
    path = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def daemon(tmp_path, run_dir):
    async with running_daemon(tmp_path / "state", runtime_dir=run_dir) as d:
        yield d


class Subscribers:
    """Real SUB sockets, all closed at the end of the test."""

    def __init__(self):
        self.ctx = zmq.asyncio.Context()
        self.sockets: list[zmq.asyncio.Socket] = []

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def zctx():
    subs = Subscribers()
    yield subs
    subs.close()


def subscriber(subs: Subscribers, endpoint: str, *topics: bytes) -> zmq.asyncio.Socket:
    sock = subs.ctx.socket(zmq.SUB)
    subs.sockets.append(sock)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    return sock


async def recv(sock, timeout: float = 5.0) -> tuple[bytes, dict, bytes]:
    topic, body = await asyncio.wait_for(sock.recv_multipart(), timeout)
    return topic, orjson.loads(body), body


async def recv_events(sock, n: int) -> list[tuple[bytes, dict, bytes]]:
    got = []
    while len(got) < n:
        item = await recv(sock)
        if item[0] != b"heartbeat":
            got.append(item)
    return got


async def refused_start(settings, match: str) -> None:
    runner = web.AppRunner(create_app(settings), handle_signals=False)
    try:
        with pytest.raises(EndpointError, match=match):
            await runner.setup()
    finally:
        await runner.cleanup()


def listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


async def endpoint_of(admin) -> str:
    async with admin.get("/api/events/info") as r:
        return (await r.json())["zmqEndpoint"]


async def test_two_frames_the_ws_envelope_and_prefix_topics(daemon, admin, zctx):
    endpoint = await endpoint_of(admin)
    assert endpoint == f"ipc://{daemon.settings.run_dir / 'events.sock'}"
    everything = subscriber(zctx, endpoint, b"")
    generations = subscriber(zctx, endpoint, b"generation_", b"heartbeat")
    # the daemon greets each subscription with a heartbeat: after it nothing is missed
    for sock in (everything, generations):
        topic, hb, _ = await recv(sock)
        assert topic == b"heartbeat" and hb["type"] == "heartbeat"
    async with admin.ws_connect("/ws") as ws:
        await ws.receive_json()
        bus = daemon.app[keys.BUS]
        bus.publish("server_status", {"serverId": 1, "status": "running", "setupStatus": "ready"})
        bus.publish("generation_progress", dict(SEED_PROGRESS))
        bus.publish("generation_completed", {"generationId": 123, "serverId": 1, "imageUrls": []})
        ws_texts = [(await ws.receive()).data for _ in range(3)]
    frames = await recv_events(everything, 3)
    assert [t for t, _, _ in frames] == [b"server_status", b"generation_progress", b"generation_completed"]
    assert [raw.decode() for _, _, raw in frames] == ws_texts  # the very same envelope bytes
    assert frames[1][1]["data"] == SEED_PROGRESS and set(frames[1][1]) == {"type", "data", "seq", "ts"}
    only = await recv_events(generations, 2)
    assert [t for t, _, _ in only] == [b"generation_progress", b"generation_completed"]
    assert [e["seq"] for _, e, _ in only] == [e["seq"] for _, e, _ in frames[1:]]


async def test_clone_pattern_subscribe_then_snapshot_then_newer_events(daemon, admin, zctx):
    bus = daemon.app[keys.BUS]
    for i in range(3):
        bus.publish("log", {"level": "info", "message": f"before subscribe {i}"})
    async with admin.get("/api/events/info") as r:
        info = await r.json()
    sub = subscriber(zctx, info["zmqEndpoint"], b"")
    topic, greeting, _ = await recv(sub)
    assert topic == b"heartbeat" and greeting["data"]["epoch"] == info["epoch"] and greeting["seq"] == 3
    between = [bus.publish("log", {"level": "info", "message": f"between {i}"}).seq for i in range(3)]
    async with admin.get("/api/events/snapshot") as r:
        snapshot = await r.json()
    assert snapshot["seq"] == between[-1] and snapshot["epoch"] == info["epoch"]
    after = [bus.publish("log", {"level": "info", "message": f"after {i}"}).seq for i in range(3)]
    received = [e["seq"] for _, e, _ in await recv_events(sub, 6)]
    assert received == between + after  # nothing missed since the greeting
    applied = [s for s in received if s > snapshot["seq"]]
    assert applied == after


async def test_heartbeats_carry_epoch_and_seq(daemon, admin, zctx):
    pub = daemon.app[keys.ZMQ_PUB]
    pub.heartbeat = 0.05
    sub = subscriber(zctx, await endpoint_of(admin), b"heartbeat")
    await recv(sub)  # greeting
    seq = daemon.app[keys.BUS].publish("log", {"level": "info", "message": "x"}).seq
    t0 = time.monotonic()
    topic, hb, _ = await recv(sub, timeout=2)
    while hb["seq"] != seq:
        topic, hb, _ = await recv(sub, timeout=2)
    assert topic == b"heartbeat" and hb["data"]["epoch"] == daemon.app[keys.HUB].epoch
    assert time.monotonic() - t0 < 1.0


async def test_socket_options_and_a_publisher_that_never_blocks(tmp_path, run_dir, zctx):
    async with running_daemon(tmp_path / "s", runtime_dir=run_dir, events={"zmq_hwm": 100}) as d:
        pub = d.app[keys.ZMQ_PUB]
        assert pub.socket.getsockopt(zmq.SNDHWM) == 100
        assert pub.socket.getsockopt(zmq.LINGER) == pub.linger_ms > 0
        # a subscriber that never reads: publishing stays fast; the excess is dropped
        stalled = subscriber(zctx, pub.endpoint, b"")
        stalled.setsockopt(zmq.RCVHWM, 10)
        await recv(stalled)
        bus = d.app[keys.BUS]
        t0 = time.perf_counter()
        for i in range(20_000):
            bus.publish("log", {"level": "info", "message": "x" * 200, "i": i})
        assert time.perf_counter() - t0 < 5
        # the daemon's loop answers at once
        async with d.session() as admin, admin.get("/api/health") as r:
            assert r.status == 200


async def test_tcp_endpoint(tmp_path, run_dir, zctx):
    async with running_daemon(tmp_path / "s", runtime_dir=run_dir,
                              events={"zmq_endpoint": "tcp://127.0.0.1:*"}) as d, d.session() as admin:
        endpoint = await endpoint_of(admin)
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith("*")
        sub = subscriber(zctx, endpoint, b"")
        await recv(sub)
        seq = d.app[keys.BUS].publish("log", {"level": "info", "message": "over tcp"}).seq
        (_, event, _), = await recv_events(sub, 1)
        assert event["seq"] == seq
        assert not any(run_dir.iterdir())  # no ipc file


async def test_ipc_file_stale_replaced_live_refused_removed_on_shutdown(tmp_path, run_dir, zctx):
    path = run_dir / "events.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # as a crashed daemon leaves it: a socket file nobody listens on
    assert not listening(path)
    async with running_daemon(tmp_path / "a", runtime_dir=run_dir) as d:
        assert listening(path)  # replaced by the daemon's own
        sub = subscriber(zctx, f"ipc://{path}", b"")
        await recv(sub)
        # a second daemon on the same runtime dir must not steal the live socket
        await refused_start(make_settings(tmp_path / "b", runtime_dir=run_dir), "in use")
        assert path.exists()
        seq = d.app[keys.BUS].publish("log", {"level": "info", "message": "still ours"}).seq
        (_, event, _), = await recv_events(sub, 1)
        assert event["seq"] == seq
    assert not path.exists()
    path.write_text("not a socket")
    await refused_start(make_settings(tmp_path / "c", runtime_dir=run_dir), "not a socket")
    assert path.read_text() == "not a socket"
