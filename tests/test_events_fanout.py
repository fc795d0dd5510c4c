"""The /ws fan-out under load, with the real hub on a real aiohttp server: a burst larger
than a transport's buffer arrives whole and in order (frames written straight to the
transport, then queued and batched once it is full); control messages keep their place
in the stream; a client that negotiated compression gets the same stream; the bus's ring
replays exactly what was published."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from socialsync.common.wire import now_iso
from socialsync.daemon.events.bus import EventBus
from socialsync.daemon.events.hub import WebSocketHub, text_frame

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@asynccontextmanager
async def hub_server(**knobs) -> AsyncIterator[tuple[EventBus, WebSocketHub, str]]:
    bus = EventBus()

    async def snapshot() -> dict:
        return {"servers": [], "generations": []}

    hub = WebSocketHub(bus, snapshot, heartbeat=None, **knobs)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await hub.serve(request)

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield bus, hub, f"ws://127.0.0.1:{port}/ws"
    finally:
        await hub.close()
        await runner.cleanup()


async def read_until(ws, last_seq: int) -> list[dict]:
    got = []
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        m = msg.json()
        got.append(m)
        if m["type"] == "log" and m["seq"] == last_seq:
            return got


def publish(bus: EventBus, n: int, size: int = 10) -> list[int]:
    return [bus.publish("log", {"level": "info", "message": f"{i}:" + "x" * size}).seq for i in range(n)]


async def test_a_burst_beyond_the_transport_buffer_arrives_whole_and_in_order():
    async with hub_server(queue_size=10_000) as (bus, hub, url), aiohttp.ClientSession() as s:
        async with s.ws_connect(url) as ws, s.ws_connect(url) as other:
            for w in (ws, other):
                assert (await w.receive_json(timeout=5))["type"] == "hello"
            # ~4 MB published without yielding: far more than a transport buffers.
            seqs = publish(bus, 4000, size=1000)
            for w in (ws, other):
                got = await read_until(w, seqs[-1])
                assert [m["seq"] for m in got] == seqs
                assert all(m["data"]["message"].startswith(f"{i}:") for i, m in enumerate(got))
            assert hub.stats["too_slow"] == 0


async def test_control_messages_keep_their_place_between_events():
    async with hub_server(queue_size=10_000) as (bus, _hub, url), aiohttp.ClientSession() as s, \
            s.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=5)
        position = hello["seq"]
        seen: list[int] = []
        controls: list[dict] = []

        async def read_until(done) -> None:
            nonlocal position
            while not done():
                m = await ws.receive_json(timeout=10)
                if m["type"] in ("pong", "subscribed"):
                    assert m["seq"] == position  # the stream position it was sent at
                    controls.append(m)
                    continue
                assert m["seq"] > position
                position = m["seq"]
                seen.append(m["seq"])

        published: list[int] = []
        for round_ in range(20):
            published += publish(bus, 50)
            await ws.send_json({"type": "ping", "id": round_})
            published += publish(bus, 50)
        await read_until(lambda: len(controls) == 20 and seen[-1:] == published[-1:])
        assert seen == published
        assert [c["data"]["id"] for c in controls] == list(range(20))

        await ws.send_json({"type": "subscribe", "types": ["generation_progress"]})
        await read_until(lambda: len(controls) == 21)
        assert controls[-1]["data"] == {"types": ["generation_progress"], "serverIds": None}
        publish(bus, 5)
        progress = bus.publish("generation_progress", {"generationId": 1, "progress": 5}).seq
        await read_until(lambda: seen[-1] == progress)
        assert seen == [*published, progress]


async def test_a_compressed_client_gets_the_same_stream():
    async with hub_server(compress=True, queue_size=10_000) as (bus, _hub, url), aiohttp.ClientSession() as s:
        async with s.ws_connect(url, compress=15) as deflated, s.ws_connect(url, compress=0) as plain:
            assert deflated.compress and not plain.compress
            for w in (deflated, plain):
                assert (await w.receive_json(timeout=5))["type"] == "hello"
            seqs = publish(bus, 500, size=2000)
            for w in (deflated, plain):
                assert [m["seq"] for m in await read_until(w, seqs[-1])] == seqs


async def test_the_ring_replays_exactly_what_was_published():
    bus = EventBus(ring_size=100)
    events = [bus.publish("log", {"level": "info", "message": str(i)}) for i in range(150)]
    replay = bus.since(120)
    assert replay is not None
    assert [(e.type, e.data, e.seq, e.ts, e.json) for e in replay] == \
        [(e.type, e.data, e.seq, e.ts, e.json) for e in events[120:]]
    assert bus.since(49) is None and bus.since(50) is not None and bus.since(150) == []
    before, after = now_iso(), None
    ts = bus.publish("log", {}).ts
    after = now_iso()
    assert ISO_MS.match(ts) and before <= ts <= after


def test_a_frame_is_a_complete_unmasked_text_frame():
    for n, header in ((0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"),
                      (65535, b"\x81\x7e\xff\xff"), (65536, b"\x81\x7f" + (65536).to_bytes(8, "big"))):
        payload = b"a" * n
        assert text_frame(payload) == header + payload
