"""Benchmark of generations end to end, against instant simulated ComfyUI servers.

    .venv/bin/python tests/bench/bench_generations.py [--servers 4] [--count 600] [--concurrency 32] [--quick]
        [--profile FILE]

A real daemon (``create_app`` on loopback, in this process) with ``--servers`` ComfyUI
simulators attached (``step_time=0``, 1 sampler step, 64x64 images), all in one
separate process so their work does not share this event loop. Each generation is a
real ``POST /api/comfy/:id/generate`` over HTTP; the daemon follows it with its
per-server watcher, downloads the PNG through ``/view``, checks and stores it, and
publishes ``generation_completed``.

Figures:

- **generations/s**: ``count`` generations with ``concurrency`` in flight (a new one is
  submitted when one completes), from the first submit to the last
  ``generation_completed``; with the CPU time this process spent per generation meanwhile
  (steadier than the rate on a shared machine);
- **daemon-added latency** p50/p99/max: from ComfyUI's ``execution_success`` (its
  history timestamp, ms) to the daemon publishing ``generation_completed``, both on this
  machine's clock. It covers the websocket message, the ``Finished`` dispatch, the
  ``/view`` download, the Pillow check (in a thread), the content-addressed store and the
  one-transaction row update. Measured one at a time (idle) and under the burst.

Not a test: run on purpose, it prints its figures. Stays well under two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from benchlib import attach_ready, pct, sims_in_child

TESTS = Path(__file__).resolve().parents[1]



async def bench(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(TESTS))
    from harness import running_daemon

    from socialsync.daemon import keys

    completed: dict[int, float] = {}
    waiters: dict[int, asyncio.Future] = {}
    comfy = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 5.0}
    async with sims_in_child(args.servers) as urls:
        with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
            async with running_daemon(Path(tmp) / "state", comfy=comfy) as d, d.session() as api, \
                    aiohttp.ClientSession() as raw:
                def on_event(event) -> None:
                    if event.type in ("generation_completed", "generation_failed"):
                        gid = event.data["generationId"]
                        completed[gid] = time.time()
                        fut = waiters.pop(gid, None)
                        if fut is not None and not fut.done():
                            fut.set_result(event.data)
                d.app[keys.BUS].add_listener(on_event)

                sids = await attach_ready(api, urls)
                base = dict(zip(sids, urls, strict=True))

                async def one(n: int) -> tuple[int, str, int]:
                    sid = sids[n % len(sids)]
                    body = {"prompt": f"bench {n}", "parameters": {"steps": 1, "width": 64, "height": 64,
                                                                   "seed": n}}
                    fut = asyncio.get_running_loop().create_future()
                    async with api.post(f"/api/comfy/{sid}/generate", json=body) as r:
                        data = await r.json()
                        assert r.status == 202, data
                    gid = data["generationId"]
                    if gid in completed:
                        fut.set_result(None)
                    else:
                        waiters[gid] = fut
                    result = await asyncio.wait_for(fut, 30)
                    assert result is None or result["status"] == "completed", result
                    return gid, data["queueId"], sid

                async def latencies(items: list[tuple[int, str, int]]) -> list[float]:
                    out = []
                    for gid, qid, sid in items:
                        async with raw.get(f"{base[sid]}/history/{qid}") as r:
                            entry = (await r.json())[qid]
                        stamps = dict((m[0], m[1]["timestamp"]) for m in entry["status"]["messages"])
                        out.append(completed[gid] * 1000 - stamps["execution_success"])
                    return out

                for n in range(10):  # warm up: caches, connections, the watchers
                    await one(10_000_000 + n)

                idle = [await one(20_000_000 + n) for n in range(args.idle)]
                idle_lat = await latencies(idle)

                sem = asyncio.Semaphore(args.concurrency)

                async def limited(n: int):
                    async with sem:
                        return await one(n)

                profiler = cProfile.Profile() if args.profile else None
                if profiler is not None:
                    profiler.enable()
                started, cpu_started = time.perf_counter(), time.process_time()
                burst = await asyncio.gather(*(limited(n) for n in range(args.count)))
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                    stats = pstats.Stats(args.profile, stream=sys.stderr)
                    stats.sort_stats("tottime").print_stats(40)
                burst_lat = await latencies(burst)
                ok = await d.app[keys.DB].scalar("SELECT count(*) FROM generations WHERE status = 'completed'")
                images = sum(1 for _ in (d.settings.images_dir).rglob("*.png"))

    print(f"servers={args.servers} concurrency={args.concurrency} count={args.count} (1 step, 64x64 PNG each)")
    print(f"  end to end: {args.count / elapsed:8.1f} generations/s  ({elapsed:.2f} s; "
          f"{ok} completed rows, {images} stored images)")
    print(f"  CPU of this process (daemon and load generator, all threads) during the burst: "
          f"{cpu * 1000 / args.count:5.2f} ms per generation")
    for name, lat in (("idle (one at a time)", idle_lat), (f"under load ({args.concurrency} in flight)", burst_lat)):
        print(f"  daemon-added latency, ComfyUI finished → generation_completed, {name}: "
              f"p50 {pct(lat, 0.5):6.1f} ms  p99 {pct(lat, 0.99):6.1f} ms  max {max(lat):6.1f} ms  "
              f"mean {statistics.fmean(lat):6.1f} ms  (n={len(lat)}, ±1 ms: ComfyUI stamps whole ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle", type=int, default=100, help="generations measured one at a time")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the burst (this process: daemon and "
                        "load alike), write the stats to FILE and print the top of them to stderr")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke check)")
    args = parser.parse_args()
    if args.quick:
        args.count, args.idle, args.servers = 100, 20, 2
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
