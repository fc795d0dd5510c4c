"""Benchmark of the live event transports, next to bare baselines doing the same work.

    .venv/bin/python tests/bench/bench_events.py [--quick] [--table]

In one run, for 10, 100 and 1,000 websocket clients and 1 and 10 ZeroMQ subscribers:

- burst: N events published as fast as the publisher can; **events/s** = N / (time from
  the first publish to the last client receiving the last event), and deliveries/s;
- paced: events published one every ``interval``; **publish→receive p50/p99** (ms).

"ours" is a real daemon (``create_app``: the bus, the /ws hub with its per-client queue
and writer, the XPUB publisher); "bare" is a minimal aiohttp app that keeps a set of
websockets and awaits ``send_frame`` to each in turn (same orjson envelope, encoded
once), and a bare pyzmq PUB socket. The clients are the same code for both, in separate
processes (``time.monotonic_ns`` is system-wide, so latencies span processes). The
ratio columns are ours / bare. Not a test: run on purpose, it prints its figures.

Target (per scenario): within 2× of the bare baseline delivering the same events, i.e.
events/s ≥ 0.5× bare and paced p50/p99 ≤ 2× bare (and no event of ours lost).
``--table`` also prints ``ROW|`` lines for ``run_all.py``. ws x10 and both ZeroMQ
scenarios run three times, ours and bare alternating, and report each figure's median.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import zmq
from aiohttp import web

TESTS = Path(__file__).resolve().parents[1]  # tests/, for the harness
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import table_row  # noqa: E402

# The daemon is imported lazily (in the parent only): the spawned client processes
# import this module and should start in a fraction of a second.
TYPE = "generation_progress"
PER_PROCESS = 500  # websocket clients per client process
BURST_WS = {10: 2000, 100: 300, 1000: 50}
BURST_ZMQ = {1: 25_000, 10: 10_000}
# Paced: (events, interval s), slow enough that neither side is saturated (on 2 CPUs
# the 1,000 websocket clients alone need ~40 ms of client CPU per event).
PACED_WS = {10: (200, 0.002), 100: (100, 0.01), 1000: (40, 0.1)}
# 1,000 paced ZeroMQ events (2 s): with 300, one 3 ms stall of the machine moved p99.
PACED_ZMQ = {1: (1000, 0.002), 10: (1000, 0.002)}
HWM = 1_000_000
# The short scenarios run this many times, ours and bare alternating, and report the
# median of each figure: a sub-millisecond p99 moves with one stall of a shared machine.
REPEAT = {"ws": {10: 3}, "zmq": {1: 3, 10: 3}}
IDLE = 10.0  # a client reports what it has after this long without a message


# -- client processes ---------------------------------------------------------------------


class Phase:
    __slots__ = ("count", "done", "last", "lat")

    def __init__(self):
        self.lat: list[int] = []
        self.count = 0
        self.done = 0
        self.last = 0


def _on_message(raw: bytes | str, phases: dict[int, Phase], now: int) -> int | None:
    """Record one message; the phase number when it is that phase's end marker."""
    data = orjson.loads(raw)["data"]
    t = data.get("t")
    if t is None:
        return None
    st = phases.setdefault(data["p"], Phase())
    if data.get("end"):
        st.done += 1
        return data["p"]
    st.lat.append(now - t)
    st.count += 1
    st.last = now
    return None


def _report(conn, phase: int, st: Phase, partial: bool = False) -> None:
    conn.send({"phase": phase, "lat": st.lat, "count": st.count, "last": st.last, "partial": partial})


def ws_client_process(url: str, headers: dict, n: int, phases: int, conn) -> None:
    asyncio.run(_ws_clients(url, headers, n, phases, conn))


async def _ws_clients(url: str, headers: dict, n: int, phases: int, conn) -> None:
    state: dict[int, Phase] = {}
    reported: set[int] = set()
    finished = asyncio.Event()
    gate = asyncio.Semaphore(50)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def connect():
            async with gate:
                return await session.ws_connect(url, headers=headers, compress=0, max_msg_size=0)

        sockets = await asyncio.gather(*(connect() for _ in range(n)))
        conn.send("ready")

        async def read(ws):
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                phase = _on_message(msg.data, state, time.monotonic_ns())
                if phase is not None and state[phase].done == n and phase not in reported:
                    reported.add(phase)
                    _report(conn, phase, state[phase])
                    if len(reported) == phases:
                        finished.set()

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        last_seen = -1
        while not finished.is_set():  # a watchdog: report partial phases instead of hanging
            try:
                await asyncio.wait_for(finished.wait(), IDLE)
            except TimeoutError:
                counts = sum(p.count for p in state.values())
                if counts == last_seen:
                    for phase in range(phases):
                        if phase not in reported:
                            reported.add(phase)
                            _report(conn, phase, state.setdefault(phase, Phase()), partial=True)
                    break
                last_seen = counts
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def zmq_sub_process(endpoint: str, n: int, phases: int, conn) -> None:
    ctx = zmq.Context()
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, HWM)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    warm: set[int] = set()
    state: dict[int, Phase] = {}
    reported: set[int] = set()
    idle_since = time.monotonic()
    while len(reported) < phases:
        events = dict(poller.poll(200))
        if not events:
            if time.monotonic() - idle_since > IDLE:
                for phase in range(phases):
                    if phase not in reported:
                        reported.add(phase)
                        _report(conn, phase, state.setdefault(phase, Phase()), partial=True)
            continue
        idle_since = time.monotonic()
        for i, s in enumerate(socks):
            if s not in events:
                continue
            while True:
                try:
                    _topic, body = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(warm) < n:
                    if i not in warm:
                        warm.add(i)
                        if len(warm) == n:
                            conn.send("ready")
                phase = _on_message(body, state, time.monotonic_ns())
                if phase is not None and state[phase].done == n and phase not in reported:
                    reported.add(phase)
                    _report(conn, phase, state[phase])
    for s in socks:
        s.close(0)
    ctx.term()


# -- publishers -------------------------------------------------------------------------


class BareWs:
    """The minimal aiohttp broadcast: a set of sockets; each event awaited to each."""

    def __init__(self):
        from socialsync.common.wire import now_iso

        self.now_iso = now_iso
        self.clients: set[web.WebSocketResponse] = set()
        self.seq = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        self.clients.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            self.clients.discard(ws)
        return ws

    async def publish(self, data: dict) -> None:
        self.seq += 1
        body = orjson.dumps({"type": TYPE, "data": data, "seq": self.seq, "ts": self.now_iso()})
        for ws in list(self.clients):
            try:
                await ws.send_frame(body, aiohttp.WSMsgType.TEXT)
            except ConnectionError:
                self.clients.discard(ws)


class BareZmq:
    def __init__(self, endpoint: str):
        from socialsync.common.wire import now_iso

        self.now_iso = now_iso
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.seq = 0

    def publish(self, data: dict) -> None:
        self.seq += 1
        body = orjson.dumps({"type": TYPE, "data": data, "seq": self.seq, "ts": self.now_iso()})
        self.sock.send_multipart((TYPE.encode(), body), flags=zmq.NOBLOCK)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# -- driving a scenario -------------------------------------------------------------------


def payload(phase: int, i: int, end: bool = False) -> dict:
    data = {"generationId": i, "progress": i % 101, "status": "processing", "p": phase,
            "t": time.monotonic_ns()}
    if end:
        data["end"] = True
    return data


async def collect(conns, phase: int, timeout: float = 120.0) -> list[dict]:
    results = []
    for conn in conns:
        result = await asyncio.wait_for(asyncio.to_thread(conn.recv), timeout)
        assert result["phase"] == phase, result
        results.append(result)
    return results


def summarize(results: list[dict], n_events: int, receivers: int, t0: int) -> dict:
    lat = sorted(x for r in results for x in r["lat"])
    got = sum(r["count"] for r in results)
    last = max((r["last"] for r in results), default=t0)
    elapsed = max(last - t0, 1) / 1e9
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6) if lat else (lambda q: math.nan)
    return {
        "events_s": n_events / elapsed if got else 0.0,
        "deliveries_s": got / elapsed,
        "p50": pct(0.50), "p99": pct(0.99),
        "lost": n_events * receivers - got,
        "partial": any(r["partial"] for r in results),
    }


def times(n: int) -> str:
    return f", median of {n} alternating runs" if n > 1 else ""


def median_of(runs: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The median of each figure over repeated (burst, paced) runs; losses add up."""
    def merge(stats: list[dict]) -> dict:
        out = {k: statistics.median(st[k] for st in stats) for k in ("events_s", "deliveries_s", "p50", "p99")}
        out["lost"] = sum(st["lost"] for st in stats)
        out["partial"] = any(st["partial"] for st in stats)
        return out
    return merge([r[0] for r in runs]), merge([r[1] for r in runs])


async def alternate(ours, bare, times: int) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """``ours()`` and ``bare()`` run ``times`` times each, alternating; their medians."""
    a, b = [], []
    for _ in range(times):
        a.append(await ours())
        b.append(await bare())
    return median_of(a), median_of(b)


async def run_phases(publish, conns, receivers: int, burst: int, chunk: int,
                     paced: tuple[int, float]) -> tuple[dict, dict]:
    """Phase 0: a burst of ``burst`` events; phase 1: ``paced`` = (events, interval).
    Both sides start with a collected heap: the garbage of the previous scenario (a
    thousand websockets torn down) must not be collected on the next one's clock."""
    n_paced, interval = paced
    gc.collect()
    t0 = time.monotonic_ns()
    for i in range(burst):
        r = publish(payload(0, i))
        if r is not None:
            await r
        if i % chunk == chunk - 1:
            await asyncio.sleep(0)
    r = publish(payload(0, burst, end=True))
    if r is not None:
        await r
    trace(f"burst published in {(time.monotonic_ns() - t0) / 1e6:.1f} ms")
    burst_stats = summarize(await collect(conns, 0), burst, receivers, t0)
    trace("burst done")
    t0 = time.monotonic_ns()
    for i in range(n_paced):
        r = publish(payload(1, i))
        if r is not None:
            await r
        await asyncio.sleep(interval)
    r = publish(payload(1, n_paced, end=True))
    if r is not None:
        await r
    paced_stats = summarize(await collect(conns, 1), n_paced, receivers, t0)
    trace("paced done")
    return burst_stats, paced_stats


def bus_publisher(bus):
    def publish(data: dict) -> None:
        bus.publish(TYPE, data)

    return publish


def spawn(target, args_for) -> tuple[list, list]:
    trace("spawning clients")
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    for args in args_for:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(*args, child), daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
    return procs, conns


def trace(msg: str) -> None:
    if os.environ.get("BENCH_TRACE"):
        print(f"  [{time.monotonic():.2f}] {msg}", file=sys.stderr, flush=True)


async def wait_ready(conns, nudge=None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for conn in conns:
        while not conn.poll():
            if time.monotonic() > deadline:
                raise TimeoutError("clients never became ready")
            if nudge is not None:
                nudge()
            await asyncio.sleep(0.02)
        assert conn.recv() == "ready"
    trace("clients ready")


def stop(procs) -> None:
    trace("stopping clients")
    for p in procs:
        p.join(timeout=15)
        if p.is_alive():
            p.terminate()
    trace("clients stopped")


def ws_groups(n: int) -> list[int]:
    groups = [PER_PROCESS] * (n // PER_PROCESS)
    if n % PER_PROCESS:
        groups.append(n % PER_PROCESS)
    return groups


async def bench_ws_ours(d, n: int, burst: int) -> tuple[dict, dict]:
    from socialsync.daemon import keys

    url = d.base_url.replace("http", "ws", 1) + "/ws"
    headers = {"Authorization": f"Bearer {d.admin_key}"}
    hub = d.app[keys.HUB]
    procs, conns = spawn(ws_client_process, [(url, headers, g, 2) for g in ws_groups(n)])
    try:
        await wait_ready(conns)
        while hub.clients < n:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        bus = d.app[keys.BUS]
        too_slow = hub.stats["too_slow"]
        result = await run_phases(bus_publisher(bus), conns, n, burst, 50, PACED_WS[n])
        assert hub.stats["too_slow"] == too_slow, "a bench client was dropped as too slow"
        return result
    finally:
        stop(procs)


async def bench_ws_bare(n: int, burst: int) -> tuple[dict, dict]:
    bare = BareWs()
    app = web.Application()
    app.router.add_get("/ws", bare.handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    procs, conns = spawn(ws_client_process, [(f"ws://127.0.0.1:{port}/ws", {}, g, 2) for g in ws_groups(n)])
    try:
        await wait_ready(conns)
        while len(bare.clients) < n:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        return await run_phases(bare.publish, conns, n, burst, 50, PACED_WS[n])
    finally:
        stop(procs)
        await runner.cleanup()


async def bench_zmq_ours(d, n: int, burst: int) -> tuple[dict, dict]:
    from socialsync.daemon import keys

    pub = d.app[keys.ZMQ_PUB]
    bus = d.app[keys.BUS]
    procs, conns = spawn(zmq_sub_process, [(pub.endpoint, n, 2)])
    try:
        await wait_ready(conns, nudge=pub._heartbeat)
        return await run_phases(bus_publisher(bus), conns, n, burst, 1000, PACED_ZMQ[n])
    finally:
        stop(procs)


async def bench_zmq_bare(endpoint: str, n: int, burst: int) -> tuple[dict, dict]:
    bare = BareZmq(endpoint)
    procs, conns = spawn(zmq_sub_process, [(endpoint, n, 2)])
    try:
        await wait_ready(conns, nudge=lambda: bare.publish({"warmup": True}))
        return await run_phases(bare.publish, conns, n, burst, 1000, PACED_ZMQ[n])
    finally:
        stop(procs)
        bare.close()


# -- report ---------------------------------------------------------------------------------


def fmt_row(label: str, ours: tuple[dict, dict], bare: tuple[dict, dict]) -> str:
    (ob, op), (bb, bp) = ours, bare

    def ratio(a: float, b: float) -> str:
        return f"{a / b:5.2f}" if b and not math.isnan(a) and not math.isnan(b) else "  n/a"

    flags = ""
    if ob["lost"] or op["lost"] or bb["lost"] or bp["lost"]:
        flags = f"  lost ours={ob['lost'] + op['lost']} bare={bb['lost'] + bp['lost']}"
    return (
        f"{label:<22} {ob['events_s']:>9.0f} {bb['events_s']:>9.0f} {ratio(ob['events_s'], bb['events_s'])}  "
        f"{ob['deliveries_s']:>10.0f}  "
        f"{op['p50']:>6.2f} {bp['p50']:>6.2f} {ratio(op['p50'], bp['p50'])}  "
        f"{op['p99']:>6.2f} {bp['p99']:>6.2f} {ratio(op['p99'], bp['p99'])}  "
        f"{ob['p50']:>7.1f} {ob['p99']:>7.1f}{flags}"
    )


def table_line(label: str, kind: str, ours: tuple[dict, dict], bare: tuple[dict, dict]) -> str:
    """The ROW| line of one scenario: met when events/s ≥ 0.5× bare, paced p50 and p99
    ≤ 2× bare, and none of ours lost."""
    (ob, op), (bb, bp) = ours, bare

    def div(a: float, b: float) -> float:
        return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

    r_eps, r50, r99 = div(ob["events_s"], bb["events_s"]), div(op["p50"], bp["p50"]), div(op["p99"], bp["p99"])
    lost = ob["lost"] + op["lost"]
    ok = r_eps >= 0.5 and r50 <= 2 and r99 <= 2 and not lost  # NaN compares False: not met

    def side(b: dict, p: dict, n_lost: int) -> str:
        return (f"{b['events_s']:.0f} events/s burst, paced p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms"
                + (f", {n_lost} lost" if n_lost else ""))

    return table_row(f"events fan-out, {label}", side(ob, op, lost),
                     f"bare {kind}: " + side(bb, bp, bb["lost"] + bp["lost"]),
                     f"events/s {r_eps:.2f}, p50 {r50:.2f}, p99 {r99:.2f}",
                     "events/s ≥ 0.5× bare, paced p50/p99 ≤ 2× bare, none lost", ok)


HEADER = (
    f"{'':<22} {'events/s (burst)':^26}  {'deliv/s':>10}  {'p50 ms (paced)':^20}  {'p99 ms (paced)':^20}  "
    f"{'burst ms':^15}\n"
    f"{'scenario':<22} {'ours':>9} {'bare':>9} {'ratio':>5}  {'ours':>10}  "
    f"{'ours':>6} {'bare':>6} {'ratio':>5}  {'ours':>6} {'bare':>6} {'ratio':>5}  {'p50':>7} {'p99':>7}"
)


async def main(quick: bool, table: bool = False) -> None:
    sys.path.insert(0, str(TESTS))
    from harness import running_daemon

    scale = 0.2 if quick else 1.0
    rows, lines = [], []
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="ssb-", dir="/tmp"))
    try:
        events = {"ws_queue": HWM, "zmq_hwm": HWM, "ring_size": 10_000}
        async with running_daemon(tmp / "state", runtime_dir=tmp / "run", events=events) as d:
            logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
            for n, burst in BURST_WS.items():
                burst = max(50, int(burst * scale))
                ours, bare = await alternate(lambda n=n, burst=burst: bench_ws_ours(d, n, burst),
                                             lambda n=n, burst=burst: bench_ws_bare(n, burst),
                                             REPEAT["ws"].get(n, 1))
                rows.append(fmt_row(f"ws x{n} ({burst} ev)", ours, bare))
                lines.append(table_line(f"ws x{n} ({burst} ev burst{times(REPEAT['ws'].get(n, 1))})", "aiohttp", ours, bare))
                print(rows[-1], flush=True)
            for n, burst in BURST_ZMQ.items():
                burst = max(100, int(burst * scale))
                ours, bare = await alternate(lambda n=n, burst=burst: bench_zmq_ours(d, n, burst),
                                             lambda n=n, burst=burst: bench_zmq_bare(f"ipc://{tmp / 'bare.sock'}",
                                                                                     n, burst),
                                             REPEAT["zmq"].get(n, 1))
                rows.append(fmt_row(f"zmq x{n} ({burst} ev)", ours, bare))
                lines.append(table_line(f"zmq x{n} ({burst} ev burst{times(REPEAT['zmq'].get(n, 1))})", "pyzmq", ours, bare))
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"SocialSync events benchmark — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"aiohttp {aiohttp.__version__}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}")
    paced = ", ".join(f"ws x{n}: {c} @ {i * 1000:g} ms" for n, (c, i) in PACED_WS.items())
    print(f"paced (events @ interval): {paced}; zmq: {PACED_ZMQ[1][0]} @ {PACED_ZMQ[1][1] * 1000:g} ms")
    print("ratio = ours / bare (events/s: higher is better; latency: lower is better); "
          "'burst ms' = publish→receive under the burst (queueing included)")
    print(HEADER)
    for row in rows:
        print(row)
    print(f"total {time.monotonic() - started:.1f} s")
    if table:
        for line in lines:
            print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the events (a smoke run)")
    parser.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    cli = parser.parse_args()
    asyncio.run(main(cli.quick, cli.table))
