"""Vast calls per sync, and the time one sync takes, at 10 / 100 / 1,000 servers.

    .venv/bin/python tests/bench/bench_vast_sync.py [--sizes 10,100,1000] [--repeat 5] [--table]

A real daemon (in-process, on loopback) syncs against the Vast simulator holding N
instances that carry our label. The first sync adopts them all; the steady-state syncs
after it must each be exactly ceil(N/25) list calls and nothing else. The baseline is
the bare client paging through the same list (no daemon work), so the ratio is what the
daemon adds to a sync: mapping, diffing and writing only what changed. ``--table``
also prints ``ROW|`` lines for ``run_all.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ratio, table_row
from fleet_helpers import fleet

from socialsync.daemon import keys
from socialsync.daemon.vast import VastClient

QUIET = {"sync_interval": 3600, "sync_interval_transitioning": 3600}
# The instances have no ComfyUI behind them: without this, 1,000 readiness probes (one
# failing connect each, every few seconds) share the loop with the sync being timed.
QUIET_COMFY = {"probe_interval": 3600, "probe_interval_max": 3600, "ready_deadline": 7200}


async def measure(n: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="socialsync-bench-sync-") as tmp:
        async with fleet(Path(tmp), vast=QUIET, comfy=QUIET_COMFY) as (sim, d):
            svc = d.app[keys.FLEET]
            for i in range(n):
                sim.add_instance(label=f"{svc.label_prefix}{100_000 + i}", status="running")
            t0 = time.perf_counter()
            first = await svc.sync_once()
            adopt_s = time.perf_counter() - t0
            # Let the readiness gate take in the adopted servers (each: installing, one
            # failed probe) before timing steady syncs: that burst is not the sync's work.
            db = d.app[keys.DB]
            settle = time.monotonic() + 60
            while time.monotonic() < settle and await db.scalar(
                    "SELECT count(*) FROM servers WHERE setup_status = 'pending' AND status = 'running'"):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            steady, calls, others = [], [], []
            for _ in range(repeat):
                sim.clear_requests()
                t0 = time.perf_counter()
                report = await svc.sync_once()
                steady.append(time.perf_counter() - t0)
                lists = [r for r in sim.requests if r.endpoint == "list"]
                calls.append(len(lists))
                # SSH key attachment runs once per new server beside the sync; not a sync call.
                others.append(sum(1 for r in sim.requests if r.endpoint not in ("list", "ssh")))
                if others[-1]:
                    print("other calls:", sorted({(r.endpoint, r.method, r.path) for r in sim.requests
                                                  if r.endpoint not in ("list", "ssh")})[:5], file=sys.stderr)
                assert report.listed == n
            bare = []
            async with VastClient(d.settings.vast.api_key.get_secret_value(), base_url=sim.base_url,
                                  pacing={}) as client:
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    await client.list_instances()
                    bare.append(time.perf_counter() - t0)
    return {
        "n": n, "expected": math.ceil(n / 25), "calls": sorted(set(calls)), "other_calls": max(others),
        "adopted": len(first.adopted), "adopt_ms": adopt_s * 1000, "sync_ms": statistics.median(steady) * 1000,
        "bare_ms": statistics.median(bare) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    args = parser.parse_args()
    rows = [asyncio.run(measure(int(n), args.repeat)) for n in args.sizes.split(",")]
    print("| servers | list calls per sync | expected ⌈N/25⌉ | other Vast calls | first sync (adopts) | "
          "steady sync | bare paging | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        exact = r["calls"] == [r["expected"]] and r["other_calls"] == 0
        ok &= exact
        print(f"| {r['n']} | {','.join(map(str, r['calls']))} | {r['expected']} | {r['other_calls']} | "
              f"{r['adopt_ms']:.0f} ms ({r['adopted']} adopted) | {r['sync_ms']:.1f} ms | {r['bare_ms']:.1f} ms | "
              f"{r['sync_ms'] / r['bare_ms']:.2f}× |")
    print("calls per sync:", "exactly ⌈N/25⌉ list calls, nothing else" if ok else "NOT as expected")
    if args.table:
        for r in rows:
            calls = ",".join(map(str, r["calls"]))
            print(table_row(
                f"Vast sync, {r['n']} servers (steady, median of {args.repeat})",
                f"{calls} list call{'' if set(r['calls']) == {1} else 's'} + {r['other_calls']} other per sync; sync {r['sync_ms']:.1f} ms",
                f"bare client paging the list: {r['bare_ms']:.1f} ms",
                f"{ratio(r['sync_ms'], r['bare_ms'])}x sync time",
                f"exactly ⌈N/25⌉ = {r['expected']} list call{'s' if r['expected'] != 1 else ''}, no other call",
                r["calls"] == [r["expected"]] and r["other_calls"] == 0))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
