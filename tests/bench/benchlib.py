"""What the benchmarks share: a closed-loop HTTP load generator in a child process (so
it never shares the measured process's loop), percentiles, a real daemon process on a
seeded state directory, and a bare aiohttp server for the baselines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _hammer(url: str, headers: dict, conns: int, seconds: float, warmup: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as s:
        async with s.get(url) as r:  # warm the connection and the caches
            await r.read()
        stop_at = time.perf_counter() + warmup + seconds
        measure_from = time.perf_counter() + warmup

        async def worker() -> None:
            while (now := time.perf_counter()) < stop_at:
                async with s.get(url) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                if now >= measure_from:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(worker() for _ in range(conns)))
    return {"latencies": latencies, "seconds": seconds, "statuses": statuses}


def _hammer_child(url, headers, conns, seconds, warmup, out) -> None:
    out.put(asyncio.run(_hammer(url, headers, conns, seconds, warmup)))


def hammer(url: str, headers: dict | None = None, conns: int = 32, seconds: float = 5.0,
           warmup: float = 1.0) -> dict:
    """``conns`` connections each sending the next GET when the last one answered, for
    ``seconds`` after ``warmup``; from a child process. p50/p99 in ms and requests/s."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_hammer_child, args=(url, headers or {}, conns, seconds, warmup, out), daemon=True)
    p.start()
    res = out.get(timeout=seconds + warmup + 120)
    p.join(10)
    lat = res["latencies"]
    return {"p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000, "rps": len(lat) / res["seconds"],
            "n": len(lat), "statuses": res["statuses"]}


def _bare_child(body: bytes, port_q) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_q.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(run())


class BareServer:
    """A bare aiohttp handler returning ``body`` (the daemon's own answer) for any GET,
    in a child process: the baseline."""

    def __init__(self, body: bytes):
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        self.proc = ctx.Process(target=_bare_child, args=(body, q), daemon=True)
        self.proc.start()
        self.base_url = f"http://127.0.0.1:{q.get(timeout=60)}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.join(5)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (all its threads; 10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_sims(count: int, ports, stop, also: tuple | None = None) -> None:
    """Child process: ``count`` ComfySims on loopback until ``stop`` is set. ``also``:
    ``(coroutine function, args)`` to run on the same loop meanwhile (e.g. a load
    generator); it is cancelled when ``stop`` is set."""
    from socialsync.daemon.sim.comfyui import ComfySim

    logging.basicConfig(level=logging.WARNING)

    async def run() -> None:
        sims = [ComfySim(step_time=0.0, seed_models=True) for _ in range(count)]
        for sim in sims:
            await sim.start("127.0.0.1", 0)
        ports.put([sim.base_url for sim in sims])
        task = asyncio.create_task(also[0](*also[1])) if also is not None else None
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sim in sims:
            await sim.stop()

    asyncio.run(run())


@asynccontextmanager
async def sims_in_child(count: int, timeout: float = 120, also: tuple | None = None) -> AsyncIterator[list[str]]:
    """``count`` instant ComfyUI simulators in their own process (so they never share
    the measured loop); yields their base URLs and stops them on exit. ``also``: see
    ``serve_sims`` (it must be picklable: a module-level function and its args)."""
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=serve_sims, args=(count, ports, stop, also), daemon=True)
    child.start()
    try:
        yield await asyncio.to_thread(ports.get, True, timeout)
    finally:
        stop.set()
        await asyncio.to_thread(child.join, 10)


async def attach_ready(api, urls: list[str]) -> list[int]:
    """Attach each ComfyUI to the daemon and wait until every one is ready."""
    sids = []
    for i, url in enumerate(urls):
        async with api.post("/api/vast-servers/attach", json={"name": f"sim-{i}", "comfyUrl": url}) as r:
            sids.append((await r.json())["id"])
    for sid in sids:
        while (await (await api.get(f"/api/vast-servers/{sid}")).json())["setupStatus"] != "ready":
            await asyncio.sleep(0.05)
    return sids


@contextmanager
def seeded_daemon(prefix: str, servers: int, generations: int) -> Iterator[tuple[Any, Path]]:
    """A real daemon process on a state directory seeded with ``servers`` servers and
    ``generations`` generations; yields (the process handle, the database path)."""
    from bench_analytics import create_schema, seed
    from ops_daemon import NO_LIMITS, DaemonProcess

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp_path = Path(tmp)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        db_path = state / "socialsync.db"
        t0 = time.perf_counter()
        asyncio.run(create_schema(db_path))
        seed(db_path, servers, generations)
        print(f"seed took {time.perf_counter() - t0:.1f} s; db {db_path.stat().st_size / 2**20:.0f} MB", flush=True)
        with DaemonProcess(tmp_path, env={**NO_LIMITS, "SOCIALSYNC_LOG_LEVEL": "WARNING"}) as d:
            d.wait_listening(60)
            yield d, db_path


def table_row(benchmark: str, figure: str, baseline: str, ratio_: str, target: str, ok: bool | None) -> str:
    """One ``ROW|`` line for ``run_all.py``'s table; ``ok`` None: no target to meet ("—")."""
    met = "—" if ok is None else "yes" if ok else "no"
    return "ROW|" + "|".join(c.replace("|", "/") for c in (benchmark, figure, baseline, ratio_, target, met))
