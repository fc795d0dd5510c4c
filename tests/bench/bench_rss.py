"""Resident memory of a real ``socialsyncd`` process on a large database.

    .venv/bin/python tests/bench/bench_rss.py [--servers 1000] [--generations 200000] [--keep DIR] [--table]

The daemon's migrations create the schema, then ``--servers`` servers and
``--generations`` generations are inserted with plain sqlite3 (``bench_analytics.seed``).
A real daemon process (no Vast key: no sync loop) is started on it and the API is
exercised a little: the server list, ``/api/stats``, ``/api/server-analytics``, pages of
generations (global and per server), ``/metrics``. Its ``VmRSS`` (now) and ``VmHWM``
(peak) from ``/proc/<pid>/status`` are printed next to a bare
``python -c "import aiohttp, aiosqlite, pydantic, zmq"`` process. Target: ≤ 150 MB.
``--generations 1000000`` is the full size; ``--keep DIR`` seeds once into ``DIR`` and
runs on a fresh copy (``bench_paging.seeded``).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_paging import seeded  # noqa: E402

TARGET_MB = 150.0
BARE = ("import aiohttp, aiosqlite, pydantic, zmq, sys, time; "
        "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)")


def vm(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def bare_baseline() -> dict[str, float]:
    p = subprocess.Popen([sys.executable, "-c", BARE], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        return vm(p.pid)
    finally:
        p.kill()
        p.wait(10)


async def exercise(base: str, key: str, rounds: int) -> int:
    n = 0
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {key}"}) as s:
        for i in range(rounds):
            for path, params in (("/api/vast-servers", {}), ("/api/stats", {}), ("/api/server-analytics", {}),
                                 ("/api/generations", {"limit": 50}), ("/api/generations", {"limit": 50,
                                                                                             "offset": 5000}),
                                 (f"/api/comfy/{i % 50 + 1}/generations", {"limit": 50}),
                                 ("/api/generations", {"limit": 50, "status": "failed"}), ("/metrics", {})):
                async with s.get(path, params=params) as r:
                    await r.read()
                    assert r.status == 200, (path, r.status)
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--generations", type=int, default=200_000, help="1000000 = the full size")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the API calls")
    ap.add_argument("--keep", type=Path, default=None, help="seed once into DIR and run on a fresh copy of it")
    ap.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    args = ap.parse_args(argv)
    bare = bare_baseline()
    with seeded("socialsync-bench-rss-", args.servers, args.generations, args.keep) as (d, _db_path):
        time.sleep(2.0)  # start-up reconciliation
        idle = vm(d.pid)
        calls = asyncio.run(exercise(d.base_url, d.admin_key, args.rounds))
        time.sleep(0.5)
        loaded = vm(d.pid)
    print(f"bare python+imports: VmRSS {bare['VmRSS']:.1f} MB, VmHWM {bare['VmHWM']:.1f} MB")
    print(f"daemon after start: VmRSS {idle['VmRSS']:.1f} MB, VmHWM {idle['VmHWM']:.1f} MB")
    print(f"daemon after {calls} API calls: VmRSS {loaded['VmRSS']:.1f} MB, VmHWM {loaded['VmHWM']:.1f} MB")
    ok = loaded["VmHWM"] <= TARGET_MB
    row = [f"daemon RSS, {args.servers} servers, {args.generations} generations, {calls} API calls",
           f"VmRSS {loaded['VmRSS']:.0f} MB, VmHWM {loaded['VmHWM']:.0f} MB",
           f"bare imports: VmRSS {bare['VmRSS']:.0f} MB", f"{loaded['VmRSS'] / bare['VmRSS']:.2f}x",
           f"VmHWM ≤ {TARGET_MB:.0f} MB", "yes" if ok else "no"]
    print(f"{'OK' if ok else 'MISSED'} (target VmHWM ≤ {TARGET_MB:.0f} MB)")
    if args.table:
        print("ROW|" + "|".join(row))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
