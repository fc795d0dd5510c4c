"""/ws over real websockets: the hello and its snapshot, the seed's event shapes, auth
before the upgrade, filters, resume from the ring, re-snapshot, a stalled client dropped
while the others keep receiving, revocation, shutdown with 1001."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
from pathlib import Path

import aiohttp
import pytest
from harness import free_port, running_daemon

from socialsync.common.auth import Role
from socialsync.daemon import keys

SEED_SERVER_STATUS = {"serverId": 1, "status": "running", "setupStatus": "ready"}
SEED_PROGRESS = {"generationId": 123, "progress": 75, "status": "processing"}
ENVELOPE_KEYS = {"type", "data", "seq", "ts"}
NOW = "2025-06-19T10:00:00.000Z"


@pytest.fixture
def run_dir():
    # ipc paths must fit in a unix socket address: keep the runtime dir short.
    path = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def daemon(tmp_path, run_dir):
    async with running_daemon(tmp_path / "state", runtime_dir=run_dir) as d:
        yield d


async def make_key(admin, role: str) -> tuple[int, str]:
    async with admin.post("/api/api-keys", json={"name": f"{role}-key", "role": role}) as r:
        assert r.status == 201, await r.text()
        body = await r.json()
        return body["id"], body["key"]


async def receive(ws, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return msg.json()


async def receive_events(ws, n: int, timeout: float = 5.0) -> list[dict]:
    """The next ``n`` events (control messages skipped)."""
    got = []
    while len(got) < n:
        m = await receive(ws, timeout)
        if m["type"] not in ("pong", "subscribed"):
            got.append(m)
    return got


def publish(daemon, n: int, type: str = "log", **data) -> list[int]:
    bus = daemon.app[keys.BUS]
    return [bus.publish(type, {"level": "info", "message": f"m{i}", **data}).seq for i in range(n)]


async def add_fleet_rows(db) -> None:
    for sid, status in ((1, "running"), (2, "destroyed"), (3, "launching")):
        await db.execute(
            "INSERT INTO servers (id, vast_id, name, gpu, gpu_count, cpu_cores, ram_gb, disk, price_per_hour,"
            " location, status, setup_status, comfy_url, ssh_host, ssh_port, metadata, created_at, updated_at)"
            " VALUES (?, ?, ?, 'RTX 4090', 1, 16, 32, 100.0, '0.50', 'US-East', ?, 'ready',"
            " 'http://10.0.0.1:8188', 'ssh.vast.ai', 22, '{\"a\": 1}', ?, ?)",
            (sid, 12340 + sid, f"GPU Server {sid}", status, NOW, NOW))
    for gid, status in ((10, "queued"), (11, "processing"), (12, "completed")):
        await db.execute(
            "INSERT INTO generations (id, server_id, prompt, status, progress, created_at)"
            " VALUES (?, 1, 'beautiful landscape', ?, ?, ?)", (gid, status, 40 if gid == 11 else 0, NOW))


async def test_hello_snapshot_then_seed_shapes(daemon, admin):
    await add_fleet_rows(daemon.app[keys.DB])
    async with admin.ws_connect("/ws") as ws:
        hello = await receive(ws)
        assert hello.keys() == ENVELOPE_KEYS and hello["type"] == "hello"
        assert hello["seq"] == hello["data"]["seq"] == daemon.app[keys.BUS].seq
        assert hello["data"]["resumed"] is False and hello["data"]["epoch"]
        snap = hello["data"]["snapshot"]
        assert [s["id"] for s in snap["servers"]] == [1, 3]  # not the destroyed one
        server = snap["servers"][0]
        assert server["vastId"] == "12341" and server["status"] == "running" and server["setupStatus"] == "ready"
        assert server["pricePerHour"] == "0.50" and server["gpuCount"] == 1 and server["ram"] == 32
        assert server["sshConnection"] == "ssh root@ssh.vast.ai -p 22" and server["metadata"] == {"a": 1}
        assert snap["generations"] == [
            {"id": 10, "serverId": 1, "status": "queued", "progress": 0, "prompt": "beautiful landscape",
             "createdAt": NOW},
            {"id": 11, "serverId": 1, "status": "processing", "progress": 40, "prompt": "beautiful landscape",
             "createdAt": NOW},
        ]
        # the same snapshot over HTTP, for ZeroMQ subscribers
        async with admin.get("/api/events/snapshot") as r:
            body = await r.json()
        assert body == {"seq": hello["seq"], "epoch": hello["data"]["epoch"], "snapshot": snap}

        bus = daemon.app[keys.BUS]
        e1 = bus.publish("server_status", dict(SEED_SERVER_STATUS))
        e2 = bus.publish("generation_progress", dict(SEED_PROGRESS))
        m1, m2 = await receive_events(ws, 2)
        assert m1 == {"type": "server_status", "data": SEED_SERVER_STATUS, "seq": e1.seq, "ts": e1.ts}
        assert m2 == {"type": "generation_progress", "data": SEED_PROGRESS, "seq": e2.seq, "ts": e2.ts}
        assert m2["seq"] == m1["seq"] + 1

        async with admin.get("/api/events/info") as r:
            info = await r.json()
        assert info["seq"] == e2.seq and info["epoch"] == hello["data"]["epoch"] and info["wsClients"] == 1
        assert info["zmqEndpoint"].startswith("ipc://") and "server_status" in info["types"]


async def test_a_real_producer_reaches_the_socket(daemon, admin):
    async with admin.ws_connect("/ws") as ws:
        await receive(ws)
        key_id, _ = await make_key(admin, "viewer")
        (event,) = await receive_events(ws, 1)
        assert event["type"] == "audit" and event["data"]["action"] == "api_key.create"
        assert event["data"]["targetId"] == str(key_id) and event["data"]["outcome"] == "success"


async def test_auth_is_checked_before_the_upgrade(daemon, admin):
    _, viewer = await make_key(admin, "viewer")
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with aiohttp.ClientSession(daemon.base_url) as raw:
        for headers, code in (({}, "UNAUTHORIZED"), ({"X-API-Key": "ssk_nope"}, "INVALID_API_KEY"),
                              ({"Authorization": "Bearer ssk_nope"}, "INVALID_API_KEY")):
            async with raw.get("/ws", headers={**upgrade, **headers}) as r:
                assert r.status == 401, r.status
                assert r.headers["Content-Type"].startswith("application/json")
                body = await r.json()
                assert body["code"] == code and body["error"] and "details" in body
        async with raw.get("/ws?token=ssk_nope", headers=upgrade) as r:
            assert r.status == 401 and (await r.json())["code"] == "INVALID_API_KEY"
        # invalid parameters are refused before the upgrade too
        async with raw.get("/ws?since=-1", headers={**upgrade, "X-API-Key": viewer}) as r:
            assert r.status == 400 and (await r.json())["code"] == "VALIDATION_ERROR"
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await raw.ws_connect("/ws")
        assert exc.value.status == 401
        # a viewer key, each way a client can send it
        for kw in ({"headers": {"X-API-Key": viewer}}, {"headers": {"Authorization": f"Bearer {viewer}"}},
                   {"params": {"token": viewer}}):
            async with raw.ws_connect("/ws", **kw) as ws:
                assert (await receive(ws))["type"] == "hello"
    # a session cookie, as a browser would send it
    await daemon.app[keys.AUTH].add_user("ops", "correct horse battery", Role.VIEWER)
    async with daemon.session(None) as browser:
        async with browser.post("/api/auth/login", json={"username": "ops", "password": "correct horse battery"}) as r:
            assert r.status == 200
        async with browser.ws_connect("/ws") as ws:
            assert (await receive(ws))["type"] == "hello"
    # ?token= is for /ws only
    async with aiohttp.ClientSession(daemon.base_url) as raw, raw.get(f"/api/events/info?token={viewer}") as r:
        assert r.status == 401


async def test_filters_by_subscribe_message_and_query(daemon, admin):
    async with admin.ws_connect("/ws") as ws, \
            admin.ws_connect("/ws", params={"types": "generation_progress"}) as by_query:
        await receive(ws)
        await receive(by_query)
        await ws.send_json({"type": "subscribe", "types": ["server_status", "audit"], "serverIds": [1]})
        ack = await receive(ws)
        assert ack["type"] == "subscribed" and ack["data"] == {"types": ["audit", "server_status"], "serverIds": [1]}
        bus = daemon.app[keys.BUS]
        wanted = [
            bus.publish("server_status", {"serverId": 1, "status": "running", "setupStatus": "ready"}).seq,
            bus.publish("audit", {"action": "server.update", "targetType": "server", "targetId": "1"}).seq,
            bus.publish("audit", {"action": "api_key.create", "targetType": "api_key", "targetId": "7"}).seq,
        ]
        bus.publish("server_status", {"serverId": 2, "status": "running", "setupStatus": "ready"})
        bus.publish("audit", {"action": "server.update", "targetType": "server", "targetId": "2"})
        bus.publish("generation_progress", dict(SEED_PROGRESS))
        last = bus.publish("server_status", {"serverId": 1, "status": "stopped", "setupStatus": "ready"}).seq
        got = await receive_events(ws, 4)
        assert [m["seq"] for m in got] == [*wanted, last]
        (progress,) = await receive_events(by_query, 1)
        assert progress["data"] == SEED_PROGRESS
        # back to everything
        await ws.send_json({"type": "subscribe", "types": None, "serverIds": None})
        assert (await receive(ws))["data"] == {"types": None, "serverIds": None}
        seq = bus.publish("log", {"level": "info", "message": "x"}).seq
        assert (await receive(ws))["seq"] == seq


async def test_bad_messages_get_errors_not_a_crash(daemon, admin):
    async with admin.ws_connect("/ws") as ws:
        await receive(ws)
        for bad, what in (("{nope", "Invalid JSON"), ("[1, 2]", "Unknown message type"),
                          ('{"type": "dance"}', "Unknown message type"),
                          ('{"type": "subscribe", "types": "server_status"}', "Invalid subscribe"),
                          ('{"type": "subscribe", "serverIds": ["1"]}', "Invalid subscribe"),
                          ('{"type": "resume", "since": -4}', "Invalid resume")):
            await ws.send_str(bad)
            err = await receive(ws)
            assert err["type"] == "error" and err["data"]["error"] == what, (bad, err)
            assert err.keys() == ENVELOPE_KEYS
        await ws.send_bytes(b"\x00\x01")
        assert (await receive(ws))["type"] == "error"
        await ws.send_json({"type": "ping", "id": 9})
        pong = await receive(ws)
        assert pong["type"] == "pong" and pong["data"] == {"id": 9}
        (seq,) = publish(daemon, 1)
        assert (await receive(ws))["seq"] == seq


async def test_resume_after_a_dropped_connection_loses_and_repeats_nothing(daemon, admin):
    epoch = None
    seen: list[int] = []
    async with admin.ws_connect("/ws") as ws:
        hello = await receive(ws)
        epoch, start = hello["data"]["epoch"], hello["seq"]
        publish(daemon, 5)
        seen += [m["seq"] for m in await receive_events(ws, 5)]
    # published while the client was away
    publish(daemon, 7)
    async with admin.ws_connect("/ws", params={"since": str(seen[-1]), "epoch": epoch}) as ws:
        hello = await receive(ws)
        assert hello["type"] == "hello" and hello["data"]["resumed"] is True
        assert hello["data"]["snapshot"] is None and hello["seq"] == seen[-1]
        publish(daemon, 3)  # live ones after the replay
        seen += [m["seq"] for m in await receive_events(ws, 10)]
        # a resume message on an open connection replays from the ring again
        await ws.send_json({"type": "resume", "since": seen[-4], "epoch": epoch})
        again = await receive(ws)
        assert again["type"] == "hello" and again["data"]["resumed"] and again["seq"] == seen[-4]
        assert [m["seq"] for m in await receive_events(ws, 3)] == seen[-3:]
        (live,) = publish(daemon, 1)
        assert (await receive(ws))["seq"] == live
    assert seen == list(range(start + 1, start + 16))


async def test_resnapshot_when_the_ring_no_longer_has_it(tmp_path, run_dir):
    async with running_daemon(tmp_path / "s", runtime_dir=run_dir, events={"ring_size": 5}) as d, \
            d.session() as admin:
        async with admin.ws_connect("/ws") as ws:
            hello = await receive(ws)
        epoch = hello["data"]["epoch"]
        publish(d, 20)
        cases = (
            ({"since": "3", "epoch": epoch}, "no longer buffered"),
            ({"since": "18", "epoch": "another-run"}, "restarted"),
            ({"since": "999"}, "restarted"),
        )
        for params, why in cases:
            async with admin.ws_connect("/ws", params=params) as ws:
                resnap = await receive(ws)
                assert resnap["type"] == "resnapshot" and why in resnap["data"]["reason"], resnap
                hello = await receive(ws)
                assert hello["type"] == "hello" and hello["data"]["snapshot"] is not None
                assert hello["seq"] == d.app[keys.BUS].seq and hello["data"]["resumed"] is False
                (seq,) = publish(d, 1)
                assert (await receive(ws))["seq"] == seq
        # within the ring: replayed
        async with admin.ws_connect("/ws", params={"since": "19", "epoch": epoch}) as ws:
            assert (await receive(ws))["data"]["resumed"] is True
            assert [m["seq"] for m in await receive_events(ws, 4)] == [20, 21, 22, 23]
            assert d.app[keys.BUS].seq == 23


async def test_a_stalled_client_is_dropped_while_others_keep_receiving(tmp_path, run_dir):
    queue = 50
    # log_level off: the events here are the test's own; the daemon's warning about the
    # dropped client would be one more ``log`` event in the good client's stream.
    async with running_daemon(tmp_path / "s", runtime_dir=run_dir, events={"ws_queue": queue, "log_level": "off"}) \
            as d, \
            d.session() as admin:
        hub = d.app[keys.HUB]

        def small_window(addr_info):
            s = socket.socket(addr_info[0], addr_info[1], addr_info[2])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            return s

        stalled_session = d.session(connector=aiohttp.TCPConnector(socket_factory=small_window))
        async with stalled_session, admin.ws_connect("/ws") as good, stalled_session.ws_connect("/ws") as stalled:
            await receive(good)
            await receive(stalled)  # then it stops reading
            received: list[int] = []

            async def consume():
                while True:
                    received.append((await receive(good))["seq"])

            consumer = asyncio.create_task(consume())
            bus = d.app[keys.BUS]
            blob = "x" * 16_000
            published = []
            for _ in range(400):
                for _ in range(4):
                    published.append(bus.publish("log", {"level": "info", "message": blob}).seq)
                await asyncio.sleep(0.001)
                if hub.stats["too_slow"]:
                    break
            assert hub.stats["too_slow"] == 1, "the stalled client was never dropped"
            published += publish(d, 5)
            # the stalled client now reads: what was buffered, then the close with its reason
            while True:
                msg = await stalled.receive(timeout=5)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == 1013 and msg.extra.startswith("client too slow:"), msg
            assert f"(limit {queue})" in msg.extra
            for _ in range(200):
                if received and received[-1] == published[-1]:
                    break
                await asyncio.sleep(0.02)
            consumer.cancel()
            assert received == published  # every event, in order, none lost
            assert hub.clients == 1


async def test_a_revoked_key_ends_its_streams(daemon, admin):
    key_id, key = await make_key(admin, "viewer")
    _, other = await make_key(admin, "viewer")
    async with daemon.session(key) as s, daemon.session(other) as o, s.ws_connect("/ws") as ws, \
            o.ws_connect("/ws") as ws2:
        await receive(ws)
        await receive(ws2)
        async with admin.delete(f"/api/api-keys/{key_id}") as r:
            assert r.status == 200
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "credentials revoked"
        (seq,) = publish(daemon, 1)
        assert (await receive_events(ws2, 2))[-1]["seq"] == seq  # the audit event, then this one


async def test_shutdown_closes_with_1001_and_removes_the_ipc_file(tmp_path, run_dir):
    cm = running_daemon(tmp_path / "s", runtime_dir=run_dir)
    d = await cm.__aenter__()
    sock_file = run_dir / "events.sock"
    try:
        session = d.session()
        clients = [await session.ws_connect("/ws") for _ in range(3)]
        for ws in clients:
            await receive(ws)
        assert sock_file.exists()
        pending = [asyncio.create_task(ws.receive(timeout=10)) for ws in clients]
    finally:
        await cm.__aexit__(None, None, None)
    try:
        for task in pending:
            msg = await task
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            assert msg.extra == "daemon shutting down"
        assert not sock_file.exists()
    finally:
        await session.close()


async def test_daemon_warnings_reach_subscribers_as_log_events(tmp_path, run_dir):
    comfy = {"probe_interval": 0.05, "probe_interval_max": 0.1, "ready_deadline": 0.5}
    async with running_daemon(tmp_path / "state", runtime_dir=run_dir, comfy=comfy) as d, d.session() as admin, \
            admin.ws_connect("/ws", params={"types": "log"}) as ws:
        await receive(ws)
        # A real warning: an attached server whose ComfyUI never answers fails its setup.
        async with admin.post("/api/vast-servers/attach",
                              json={"name": "nobody home", "comfyUrl": f"http://127.0.0.1:{free_port()}"}) as r:
            assert r.status == 201, await r.text()
            sid = (await r.json())["id"]
        (event,) = await receive_events(ws, 1)
        assert event["data"]["level"] == "warning" and event["data"]["serverId"] == sid
        assert event["data"]["message"].startswith(f"socialsync.daemon.services.readiness: server setup failed "
                                                   f"server_id={sid} ")


async def test_log_events_are_scrubbed_rate_limited_and_thread_safe(daemon, admin):
    log = logging.getLogger("socialsync.test")
    async with admin.ws_connect("/ws", params={"types": "log"}) as ws:
        await receive(ws)
        log.info("below the level: not published")
        await asyncio.to_thread(log.error, "from a thread with token=%s", "abcdef123456")
        (event,) = await receive_events(ws, 1)
        assert event["data"] == {"level": "error", "message": "socialsync.test: from a thread with token=[redacted]",
                                 "serverId": None}
        await asyncio.sleep(1.05)  # a fresh second of the rate limit
        for i in range(30):
            log.warning("burst %d", i)
        got = await receive_events(ws, 20)
        assert [m["data"]["message"] for m in got] == [f"socialsync.test: burst {i}" for i in range(20)]
        await asyncio.sleep(1.05)
        log.warning("after the burst")
        summary, after = await receive_events(ws, 2)
        assert summary["data"]["message"].endswith("10 log line(s) not published (more than 20 a second; "
                                                   "stderr has them all)")
        assert after["data"]["message"] == "socialsync.test: after the burst"
