"""Benchmark: /api/stats, /api/server-analytics and /metrics with 1,000 servers and
1,000,000 generations (plus their images and a status history), over real HTTP.

    .venv/bin/python tests/bench/bench_analytics.py [--generations N] [--servers N] [--keep DIR] [--table]

Not a test: it prints figures. The database is built once with plain sqlite3 (fast
bulk inserts) after the daemon's own migrations created the schema. ``--keep DIR`` seeds
a pristine database once into ``DIR`` and gives each run a fresh copy of it (shared with
``bench_paging.py``/``bench_rss.py --keep DIR`` at the same size).

The floor is ``GET /api/vast-servers/1`` on the same daemon (one row by primary key:
routing, auth, JSON), as in ``bench_paging.py``; ratios are p99 / the floor's p99.
Target: ``/api/stats`` p99 ≤ 10 ms at 1 M generations; the other endpoints are printed.
``--table`` also prints ``ROW|`` lines for ``run_all.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import table_row
from harness import running_daemon

from socialsync.daemon.store.db import Database


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


async def create_schema(db_path: Path) -> None:
    db = await Database.open(db_path)
    await db.close()


def seed(db_path: Path, n_servers: int, n_generations: int, days: int = 30) -> None:
    rnd = random.Random(7)
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    span = (now - start).total_seconds()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    servers, history = [], []
    for sid in range(1, n_servers + 1):
        attached = sid % 10 == 0
        created = start + timedelta(seconds=rnd.uniform(0, span * 0.8))
        t = created
        rows = [(t, "launching")]
        t += timedelta(minutes=rnd.uniform(1, 5))
        rows.append((t, "loading"))
        t += timedelta(minutes=rnd.uniform(1, 5))
        rows.append((t, "running"))
        for _ in range(rnd.randint(1, 4)):  # stop/start cycles
            t += timedelta(hours=rnd.uniform(1, 48))
            rows.append((t, "stopped"))
            t += timedelta(hours=rnd.uniform(0.5, 12))
            rows.append((t, "running"))
        rows = [(at, st) for at, st in rows if at < now]
        status = rows[-1][1]
        destroyed = None
        if rnd.random() < 0.3 and t + timedelta(hours=1) < now:
            destroyed = t + timedelta(hours=rnd.uniform(0.1, 1))
            rows.append((destroyed, "destroyed"))
            status = "destroyed"
        price = f"{rnd.uniform(0.1, 3.0):.4f}"
        disk = f"{rnd.uniform(0.001, 0.02):.4f}"
        servers.append((sid, "attached" if attached else "vast", None if attached else 100000 + sid, f"s{sid}",
                        None if attached else price, None if attached else disk, status,
                        "ready" if status == "running" else "pending", iso(created), iso(created),
                        iso(destroyed) if destroyed else None))
        history += [(sid, iso(at), st, "pending") for at, st in rows]
    conn.executemany(
        "INSERT INTO servers (id, kind, vast_id, name, price_per_hour, disk_cost_per_hour, status, setup_status, "
        "created_at, updated_at, destroyed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", servers)
    conn.executemany("INSERT INTO server_status_history (server_id, at, status, setup_status) VALUES (?, ?, ?, ?)",
                     history)
    conn.commit()

    # One SQL statement for the million (the rollup triggers run for every row, as in production).
    conn.execute(
        "INSERT INTO generations (id, server_id, prompt, status, created_at, completed_at, duration_ms) "
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < :n), "
        "g AS (SELECT i, abs(random()) % :servers + 1 AS sid, "
        "      CASE WHEN i > :n - 100 THEN (CASE i % 2 WHEN 0 THEN 'queued' ELSE 'processing' END) "
        "           WHEN i % 100 < 6 THEN 'failed' WHEN i % 100 < 8 THEN 'cancelled' ELSE 'completed' END AS status, "
        "      :start + (:span * i) / (:n + 1) AS jd, 2000 + abs(random()) % 58000 AS dur FROM c) "
        "SELECT i, sid, 'p', status, strftime('%Y-%m-%dT%H:%M:%fZ', jd), "
        "       CASE WHEN status IN ('queued', 'processing') THEN NULL "
        "            ELSE strftime('%Y-%m-%dT%H:%M:%fZ', jd + dur / 86400000.0) END, "
        "       CASE WHEN status = 'completed' THEN dur END FROM g",
        {"n": n_generations, "servers": n_servers, "span": span / 86400,
         "start": conn.execute("SELECT julianday(?)", (iso(start),)).fetchone()[0]})
    conn.commit()
    conn.execute("INSERT INTO generation_images (generation_id, filename, path, content_type, size, sha256, created_at) "
                 "SELECT id, 'i.png', '/x/i.png', 'image/png', 1, 'x', created_at FROM generations "
                 "WHERE status = 'completed'")
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    print(f"seeded servers={len(servers)} history={len(history)} generations={n_generations}", flush=True)


async def measure(api, path: str, runs: int, **params) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        async with api.get(path, params=params) as r:
            await r.read()
            assert r.status == 200, (path, r.status, await r.text())
        times.append((time.perf_counter() - t0) * 1000)
    return times


TARGET_STATS_P99_MS = 10.0


def report(name: str, times: list[float]) -> dict:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    p50 = statistics.median(times)
    print(f"{name:<58} n={len(times):<3} p50={p50:8.1f} ms  p95={p95:8.1f} ms  "
          f"p99={p99:8.1f} ms  max={times[-1]:8.1f} ms", flush=True)
    return {"name": name, "n": len(times), "p50": p50, "p99": p99}


def table(results: list[dict], floor: dict, servers: int, generations: int) -> list[str]:
    """ROW| lines: /api/stats against its target, the others printed, each next to the floor."""
    lines = []
    base = f"floor GET /api/vast-servers/1: p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms"
    for r in results:
        target, ok = "printed", None
        if r["name"] == "GET /api/stats":
            target, ok = f"p99 ≤ {TARGET_STATS_P99_MS:.0f} ms (at 1 M generations)", r["p99"] <= TARGET_STATS_P99_MS
        lines.append(table_row(
            f"{r['name']}, {servers} servers, {generations:,} generations (n={r['n']})",
            f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms", base,
            f"{r['p99'] / floor['p99']:.1f}x p99" if floor["p99"] else "n/a", target, ok))
    return lines


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--generations", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="seed once into DIR and run on a fresh copy of it")
    ap.add_argument("--stats-runs", type=int, default=50, help="requests of GET /api/stats")
    ap.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="socialsync-bench-")
    state = Path(tmp.name) / "state"
    db_path = state / "socialsync.db"
    state.mkdir(parents=True)
    if args.keep is None:
        t0 = time.perf_counter()
        await create_schema(db_path)
        seed(db_path, args.servers, args.generations)
        print(f"seed took {time.perf_counter() - t0:.1f} s", flush=True)
    else:
        args.keep.mkdir(parents=True, exist_ok=True)
        pristine = args.keep / f"seed-{args.servers}s-{args.generations}g.db"
        if not pristine.exists():
            t0 = time.perf_counter()
            partial = pristine.with_suffix(".partial")
            for leftover in args.keep.glob(partial.name + "*"):
                leftover.unlink()
            await create_schema(partial)
            seed(partial, args.servers, args.generations)
            with sqlite3.connect(partial) as con:  # fold the WAL in: one file to copy
                con.execute("PRAGMA journal_mode=DELETE")
            partial.rename(pristine)
            print(f"seed took {time.perf_counter() - t0:.1f} s", flush=True)
        shutil.copyfile(pristine, db_path)
    try:
        async with running_daemon(state) as d, d.session() as api:
            now = datetime.now(UTC)
            await asyncio.sleep(3)  # let the start-up work (reconciling generations) settle
            await measure(api, "/api/stats", 5)  # warm the page cache
            results = [report("GET /api/stats", await measure(api, "/api/stats", args.stats_runs))]
            await measure(api, "/api/vast-servers/1", 5)
            floor = report("floor: GET /api/vast-servers/1", await measure(api, "/api/vast-servers/1",
                                                                           args.stats_runs))
            results.append(report("GET /metrics", await measure(api, "/metrics", 20)))
            results.append(report("GET /api/server-analytics (last 24 h, hourly)",
                                  await measure(api, "/api/server-analytics", 10,
                                                since=iso(now - timedelta(hours=24)))))
            results.append(report("GET /api/server-analytics (default: 7 days, daily)",
                                  await measure(api, "/api/server-analytics", 10)))
            results.append(report("GET /api/server-analytics (30 days, daily)",
                                  await measure(api, "/api/server-analytics", 5,
                                                since=iso(now - timedelta(days=30)))))
            results.append(report("GET /api/server-analytics?serverId=N (30 days)",
                                  await measure(api, "/api/server-analytics", 20,
                                                since=iso(now - timedelta(days=30)), serverId="500")))
            # The dashboard while 30-day analytics run back to back on their own connection.
            busy = asyncio.create_task(measure(api, "/api/server-analytics", 4, since=iso(now - timedelta(days=30))))
            results.append(report("GET /api/stats during 30-day analytics", await measure(api, "/api/stats", 30)))
            await busy
        if args.table:
            for line in table(results, floor, args.servers, args.generations):
                print(line)
    finally:
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
