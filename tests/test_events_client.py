"""The daemon's async client (``socialsync.common.client``) and the ZeroMQ transport
(``socialsync.tui.zmq_transport``) against real daemons: errors, the typed stream,
resume through a cut connection with nothing lost or repeated, re-snapshots (ring gone,
daemon restarted, a ZeroMQ gap), ``auto`` transport choice."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest
from harness import free_port, running_daemon

from socialsync.common.client import (
    Backoff,
    DaemonClient,
    DaemonUnavailable,
    Disconnected,
    Hello,
    Reconnected,
    Resnapshot,
)
from socialsync.common.errors import ApiError
from socialsync.common.events import Envelope, Snapshot
from socialsync.daemon import keys
from socialsync.tui.zmq_transport import ZmqTransport, daemon_client

FAST = Backoff(initial=0.02, maximum=0.2)


@pytest.fixture
def run_dir():
    path = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def daemon(tmp_path, run_dir):
    async with running_daemon(tmp_path / "state", runtime_dir=run_dir) as d:
        yield d


class Proxy:
    """A loopback TCP proxy whose connections the test cuts, as a flaky network would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        self.cut()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.pairs.append((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(src, dst) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    def cut(self) -> None:
        for a, b in self.pairs:
            a.transport.abort()
            b.transport.abort()
        self.pairs.clear()


def publish(d, n: int) -> list[int]:
    bus = d.app[keys.BUS]
    return [bus.publish("log", {"level": "info", "message": f"m{i}"}).seq for i in range(n)]


async def next_item(it, timeout: float = 5.0):
    return await asyncio.wait_for(it.__anext__(), timeout)


async def until(it, kind, timeout: float = 5.0, seen: list | None = None):
    """The next item of type ``kind``; the ones before it go to ``seen``."""
    while True:
        item = await next_item(it, timeout)
        if isinstance(item, kind):
            return item
        if seen is not None:
            seen.append(item)


async def test_requests_and_their_errors(daemon):
    async with DaemonClient(daemon.base_url, daemon.admin_key) as client:
        info = await client.events_info()
        assert info.seq == daemon.app[keys.BUS].seq and info.zmq_endpoint
        health = await client.request("GET", "/api/health")
        assert health["status"] == "ok" and health["seq"] == info.seq
        with pytest.raises(ApiError) as exc:
            await client.request("GET", "/api/no-such-thing")
        assert exc.value.status == 404 and exc.value.code == "NOT_FOUND"
        with pytest.raises(ApiError) as exc:
            await client.request("POST", "/api/api-keys", json={"name": "", "role": "king"})
        assert exc.value.status == 400 and exc.value.code == "VALIDATION_ERROR" and exc.value.body["fields"]
    async with DaemonClient(daemon.base_url, "ssk_wrong") as client:
        with pytest.raises(ApiError) as exc:
            await client.events_info()
        assert exc.value.status == 401 and exc.value.code == "INVALID_API_KEY" and exc.value.details
        with pytest.raises(ApiError) as exc:  # the stream refuses the same way, before any upgrade
            async for _ in client.events(transport="ws"):
                pass
        assert exc.value.status == 401 and exc.value.code == "INVALID_API_KEY"
    async with DaemonClient(f"http://127.0.0.1:{free_port()}", "k") as client:
        with pytest.raises(DaemonUnavailable):
            await client.request("GET", "/api/health")


async def test_ws_stream_is_typed_and_filtered(daemon):
    async with DaemonClient(daemon.base_url, daemon.admin_key) as client:
        async with client.events(transport="ws") as everything, \
                client.events(types=["server_status"], server_ids=[1], transport="ws") as filtered:
            it, fit = aiter(everything), aiter(filtered)
            hello = await next_item(it)
            assert isinstance(hello, Hello) and isinstance(hello.snapshot, Snapshot) and hello.transport == "ws"
            assert isinstance(await next_item(fit), Hello)
            bus = daemon.app[keys.BUS]
            bus.publish("server_status", {"serverId": 2, "status": "running", "setupStatus": "ready"})
            bus.publish("generation_progress", {"generationId": 123, "progress": 75, "status": "processing"})
            mine = bus.publish("server_status", {"serverId": 1, "status": "running", "setupStatus": "ready"})
            events = [await next_item(it) for _ in range(3)]
            assert all(isinstance(e, Envelope) for e in events)
            assert [e.seq for e in events] == [hello.seq + 1, hello.seq + 2, hello.seq + 3]
            assert events[1].data == {"generationId": 123, "progress": 75, "status": "processing"}
            only = await next_item(fit)
            assert isinstance(only, Envelope) and only.seq == mine.seq
            assert everything.last_seq == mine.seq and everything.gaps == 0


async def test_resume_through_a_cut_connection_loses_and_repeats_nothing(daemon):
    async with Proxy(daemon.settings.port) as proxy, \
            DaemonClient(f"http://127.0.0.1:{proxy.port}", daemon.admin_key) as client, \
            client.events(transport="ws", backoff=FAST) as stream:
        it = aiter(stream)
        hello = await next_item(it)
        start = hello.seq
        got = []
        publish(daemon, 5)
        got += [(await next_item(it)).seq for _ in range(5)]
        proxy.cut()
        publish(daemon, 6)  # while the client is away
        other: list = []
        resumed = await until(it, Hello, seen=other)
        assert any(isinstance(o, Disconnected) for o in other) and isinstance(other[-1], Reconnected)
        assert resumed.resumed and resumed.snapshot is None and resumed.seq == got[-1]
        publish(daemon, 2)
        got += [(await next_item(it)).seq for _ in range(8)]
        assert got == list(range(start + 1, start + 14))  # in order, none lost, none twice
        assert stream.reconnects == 1 and stream.gaps == 0


async def test_resnapshot_when_the_ring_lost_the_missed_events(tmp_path, run_dir):
    async with running_daemon(tmp_path / "s", runtime_dir=run_dir, events={"ring_size": 5}) as d, \
            Proxy(d.settings.port) as proxy, \
            DaemonClient(f"http://127.0.0.1:{proxy.port}", d.admin_key) as client, \
            client.events(transport="ws", backoff=FAST) as stream:
        it = aiter(stream)
        await next_item(it)
        publish(d, 2)
        await next_item(it)
        await next_item(it)
        proxy.cut()
        publish(d, 20)
        resnap = await until(it, Resnapshot)
        assert "no longer buffered" in resnap.reason and resnap.since == 2
        hello = await next_item(it)
        assert isinstance(hello, Hello) and hello.snapshot is not None and hello.seq == 22
        (seq,) = publish(d, 1)
        assert (await next_item(it)).seq == seq == 23


async def test_a_restarted_daemon_is_detected_over_ws(tmp_path, run_dir):
    port = free_port()
    state = tmp_path / "s"
    first_run = running_daemon(state, runtime_dir=run_dir, port=port)
    d = await first_run.__aenter__()
    async with DaemonClient(d.base_url, d.admin_key) as client, \
            client.events(transport="ws", backoff=FAST) as stream:
        it = aiter(stream)
        first = await next_item(it)
        publish(d, 3)
        for _ in range(3):
            await next_item(it)
        await first_run.__aexit__(None, None, None)  # the daemon stops (its seq goes with it) ...
        async with running_daemon(state, runtime_dir=run_dir, port=port) as again:  # ... and comes back
            resnap = await until(it, Resnapshot, timeout=10)
            assert "restarted" in resnap.reason
            hello = await next_item(it)
            assert isinstance(hello, Hello) and hello.snapshot is not None
            assert hello.epoch != first.epoch and hello.seq == again.app[keys.BUS].seq
            (seq,) = publish(again, 1)
            assert (await next_item(it)).seq == seq


async def test_zmq_transport_follows_the_clone_pattern(daemon):
    async with daemon_client(daemon.base_url, daemon.admin_key) as client:
        before = publish(daemon, 3)
        async with client.events(types=["log"], transport="zmq") as stream:
            it = aiter(stream)
            hello = await next_item(it)
            assert isinstance(hello, Hello) and hello.transport == "zmq" and hello.snapshot is not None
            assert hello.seq == before[-1] and hello.epoch == daemon.app[keys.HUB].epoch
            daemon.app[keys.BUS].publish("server_status", {"serverId": 1, "status": "running",
                                                           "setupStatus": "ready"})
            after = publish(daemon, 3)
            events = [await next_item(it) for _ in range(3)]
            assert [e.seq for e in events] == after  # the server_status is filtered locally
            assert all(e.type == "log" for e in events) and stream.gaps == 0


async def test_zmq_resumes_from_the_ring_after_a_drop(daemon):
    # The subscriber hears nothing for longer than it waits for a heartbeat (0.3 s here,
    # the daemon beats every second): it counts the connection as dropped and reconnects,
    # while the daemon keeps publishing. Back, the stream resumes from its last seq with
    # what it missed from the daemon's ring: none lost, none twice, no new snapshot.
    transports = {"zmq": lambda c, f: ZmqTransport(c, f, heartbeat_timeout=0.3)}
    async with DaemonClient(daemon.base_url, daemon.admin_key, transports=transports) as client, \
            client.events(transport="zmq", backoff=FAST) as stream:
        it = aiter(stream)
        hello = await next_item(it)
        assert hello.transport == "zmq" and hello.snapshot is not None
        start = hello.seq
        publish(daemon, 3)
        got = [(await next_item(it)).seq for _ in range(3)]
        other: list = []
        dropped = await until(it, Disconnected, seen=other)
        assert "no heartbeat" in dropped.reason
        publish(daemon, 4)  # while it is away
        resumed = await until(it, Hello, seen=other)
        assert isinstance(other[-1], Reconnected)
        assert resumed.resumed and resumed.snapshot is None and resumed.seq == got[-1]
        got += [(await next_item(it)).seq for _ in range(4)]
        assert got == list(range(start + 1, start + 8))  # in order, none lost, none twice
        assert stream.gaps == 0


async def test_missed_events_over_http(daemon, run_dir):
    async with DaemonClient(daemon.base_url, daemon.admin_key) as client:
        info = await client.events_info()
        seqs = publish(daemon, 3)
        missed = await client.missed_events(seqs[0], info.epoch)
        assert missed["epoch"] == info.epoch and missed["seq"] == seqs[-1]
        assert [(e["seq"], e["type"]) for e in missed["events"]] == [(seqs[1], "log"), (seqs[2], "log")]
        assert await client.missed_events(seqs[-1], info.epoch) == {"seq": seqs[-1], "epoch": info.epoch,
                                                                       "events": []}
        assert await client.missed_events(seqs[0], "another-epoch") is None  # restarted: a snapshot then
        with pytest.raises(ApiError) as refused:
            await client.request("GET", "/api/events", params={"since": -1})
        assert refused.value.status == 400


async def test_zmq_gap_is_detected_and_resnapshotted(tmp_path, run_dir):
    async with running_daemon(tmp_path / "s", runtime_dir=run_dir, events={"zmq_hwm": 10}) as d:
        transports = {"zmq": lambda c, f: ZmqTransport(c, f, rcvhwm=10)}
        async with DaemonClient(d.base_url, d.admin_key, transports=transports) as client, \
                client.events(transport="zmq", backoff=FAST) as stream:
            it = aiter(stream)
            hello = await next_item(it)
            # the consumer is busy while a burst overruns both high-water marks
            bus = d.app[keys.BUS]
            for i in range(20_000):
                bus.publish("log", {"level": "info", "message": "burst", "i": i})
            seen: list = []
            resnap = await until(it, Resnapshot, seen=seen)
            assert "gap" in resnap.reason and stream.gaps >= 1
            assert all(isinstance(e, Envelope) for e in seen)
            assert [e.seq for e in seen] == list(range(hello.seq + 1, hello.seq + 1 + len(seen)))
            again = await next_item(it)
            assert isinstance(again, Hello) and again.snapshot is not None and again.seq == bus.seq
            # While the backlog drains a new event may be dropped too: the heartbeat's seq
            # shows that trailing gap and the stream re-snapshots again. Then it flows.
            for _ in range(50):
                (seq,) = publish(d, 1)
                item = await until(it, (Envelope, Hello))
                if isinstance(item, Envelope):
                    assert item.seq == seq
                    break
                assert item.seq == seq  # the re-snapshot covers the dropped event
            else:
                pytest.fail("the stream never recovered")
            assert stream.last_seq == bus.seq


async def test_zmq_notices_a_restart_through_the_heartbeat(tmp_path, run_dir):
    port = free_port()
    state = tmp_path / "s"
    first_run = running_daemon(state, runtime_dir=run_dir, port=port)
    d = await first_run.__aenter__()
    async with daemon_client(d.base_url, d.admin_key) as client, \
            client.events(transport="zmq", backoff=FAST) as stream:
        it = aiter(stream)
        first = await next_item(it)
        publish(d, 2)
        await next_item(it)
        await next_item(it)
        await first_run.__aexit__(None, None, None)
        async with running_daemon(state, runtime_dir=run_dir, port=port) as again:
            resnap = await until(it, Resnapshot, timeout=10)
            assert "restarted" in resnap.reason
            hello = await next_item(it)
            assert isinstance(hello, Hello) and hello.epoch == again.app[keys.HUB].epoch != first.epoch
            (seq,) = publish(again, 1)
            assert (await until(it, Envelope)).seq == seq


async def test_auto_prefers_zmq_on_this_machine_and_falls_back_to_ws(tmp_path, run_dir):
    async with running_daemon(tmp_path / "a", runtime_dir=run_dir) as d, \
            daemon_client(d.base_url, d.admin_key) as client, client.events() as stream:
        assert (await next_item(aiter(stream))).transport == "zmq"
    async with running_daemon(tmp_path / "b", runtime_dir=run_dir, events={"zmq_endpoint": "off"}) as d, \
            daemon_client(d.base_url, d.admin_key) as client, client.events() as stream:
        assert (await client.events_info()).zmq_endpoint is None
        assert (await next_item(aiter(stream))).transport == "ws"
    # a client without a ZeroMQ transport (common alone) always uses the websocket
    async with running_daemon(tmp_path / "c", runtime_dir=run_dir) as d, \
            DaemonClient(d.base_url, d.admin_key) as client, client.events() as stream:
        assert (await next_item(aiter(stream))).transport == "ws"
