"""Benchmark of the scheduler: dispatch throughput across many simulated servers.

    .venv/bin/python tests/bench/bench_scheduler.py [--servers 50] [--count 1000] [--principals 4]

A real daemon (``create_app`` on loopback, in this process) with ``--servers`` ComfyUI
simulators attached (``step_time=0``, 1 sampler step, 64x64 images) served from one
separate process. ``--count`` generations are queued first through
``POST /api/generate`` (round robin over ``--principals`` API keys) while no server is
ready for dispatch (the scheduler is held), then released at once.

Figures:

- **enqueue**: ``POST /api/generate`` requests/s (HTTP, validation, one insert each);
- **first fill**: from the release until every free slot (servers x 2) holds a
  dispatched item — the dispatcher alone, not waiting for completions;
- **dispatch**: from the release to the last item assigned to a server (the
  dispatcher's rounds: principal round robin, model-aware server choice, submit of the
  existing row with its ``POST /prompt``) — dispatches/s;
- **end to end**: from the release to the last ``generation_completed`` (dispatch,
  run, image download and store) — generations/s; and the fairness of the first half of
  the dispatches (largest and smallest principal share).

Not a test: run on purpose, it prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchlib import attach_ready, sims_in_child

TESTS = Path(__file__).resolve().parents[1]


async def bench(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(TESTS))
    from harness import running_daemon

    from socialsync.daemon import keys

    comfy = {"probe_interval": 0.05, "probe_interval_max": 0.2, "health_interval": 5.0}
    async with sims_in_child(args.servers) as urls:
        with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
            async with running_daemon(Path(tmp) / "state", comfy=comfy) as d, d.session() as api:
                sched = d.app[keys.SCHEDULER]
                done = asyncio.Event()
                finished = 0

                def on_event(event) -> None:
                    nonlocal finished
                    if event.type in ("generation_completed", "generation_failed"):
                        finished += 1
                        if finished >= args.count:
                            done.set()
                d.app[keys.BUS].add_listener(on_event)
                await attach_ready(api, urls)
                tokens = []
                for p in range(args.principals):
                    async with api.post("/api/api-keys", json={"name": f"client-{p}", "role": "operator"}) as r:
                        tokens.append((await r.json())["key"])
                sessions = [d.session(t) for t in tokens]
                sched._task.cancel()  # hold dispatching while the queue fills
                started = time.perf_counter()
                sem = asyncio.Semaphore(32)

                async def put(n: int) -> None:
                    body = {"prompt": f"bench {n}", "parameters": {"steps": 1, "width": 64, "height": 64, "seed": n}}
                    async with sem, sessions[n % len(sessions)].post("/api/generate", json=body) as r:
                        assert r.status == 202, await r.text()
                await asyncio.gather(*(put(n) for n in range(args.count)))
                enqueue_s = time.perf_counter() - started
                for s in sessions:
                    await s.close()

                released = time.perf_counter()
                sched._task = asyncio.get_running_loop().create_task(sched._run())
                sched.wake()
                fill = min(args.count, args.servers * 2)
                while sched.dispatched < fill:
                    await asyncio.sleep(0.002)
                fill_s = time.perf_counter() - released
                while sched._items or any(sched._reserved.values()):
                    await asyncio.sleep(0.005)
                dispatch_s = time.perf_counter() - released
                await asyncio.wait_for(done.wait(), 600)
                total_s = time.perf_counter() - released
                rows = await d.app[keys.DB].fetchall(
                    "SELECT principal FROM generations WHERE scheduled = 1 ORDER BY dispatch_seq LIMIT ?",
                    (args.count // 2,))
                ok = await d.app[keys.DB].scalar("SELECT count(*) FROM generations WHERE status = 'completed'")
    shares = Counter(r[0] for r in rows)
    fair = [n / len(rows) for n in shares.values()]
    print(f"servers={args.servers} count={args.count} principals={args.principals} per_server_concurrency=2")
    print(f"  enqueue:    {args.count / enqueue_s:8.1f} requests/s ({enqueue_s:.2f} s)")
    print(f"  first fill: {fill / fill_s:8.1f} dispatches/s ({fill} free slots filled in {fill_s:.2f} s)")
    print(f"  dispatch:   {args.count / dispatch_s:8.1f} dispatches/s ({dispatch_s:.2f} s, all assigned)")
    print(f"  end to end: {args.count / total_s:8.1f} generations/s ({total_s:.2f} s; {ok} completed)")
    print(f"  fairness, first {len(rows)} dispatches: shares {min(fair):.3f}..{max(fair):.3f} "
          f"(equal = {1 / args.principals:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--principals", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
