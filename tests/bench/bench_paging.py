"""Benchmark of generation paging and ``/api/stats`` on a large generations table.

    .venv/bin/python tests/bench/bench_paging.py [--rows 200000] [--servers 4] [--runs 200] [--table]

The daemon's migrations create the schema, then ``--rows`` generations (spread over
``--servers`` servers, most of them completed, some failed/cancelled) are inserted with
plain sqlite3 (``bench_analytics.seed``). A real ``socialsyncd`` process is started on
that database and each request is sent ``--runs`` times, one at a time, over HTTP:

- ``GET /api/comfy/{id}/generations?limit=50&offset=…`` at several offsets, with and
  without ``status=``;
- the ``beforeId`` keyset cursor (from the middle and the end of the table);
- ``GET /api/stats``.

Baseline: the same page SQL (``store.generations.page_sql``) run directly with sqlite3
on the same file, in this process (no HTTP, no JSON); for ``/api/stats`` the HTTP floor,
``GET /api/vast-servers/1`` on the same daemon. Prints p50/p99 and the ratio; target
p99 ≤ 10 ms for every request. ``--rows 1000000`` is the full size.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import pct, seeded_daemon  # noqa: E402

from socialsync.daemon.store.generations import page_sql  # noqa: E402

TARGET_P99_MS = 10.0


def sql_times(db_path: Path, server_id: int, status: str | None, offset: int, before_id: int | None,
              runs: int) -> list[float]:
    con = sqlite3.connect(db_path)
    try:
        sql = page_sql(server_id=True, status=status is not None, before_id=before_id is not None)
        params = [p for p in (server_id, status, before_id) if p is not None]
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rows = con.execute(sql, (*params, 50, offset)).fetchall()
            times.append(time.perf_counter() - t0)
        assert rows or offset > 0
        return times
    finally:
        con.close()


async def http_times(s: aiohttp.ClientSession, path: str, params: dict, runs: int) -> list[float]:
    async with s.get(path, params=params) as r:  # warm-up
        assert r.status == 200, (path, params, r.status, await r.text())
        await r.read()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        async with s.get(path, params=params) as r:
            await r.read()
        times.append(time.perf_counter() - t0)
    return times


async def measure(d, db_path: Path, runs: int) -> list[dict]:
    con = sqlite3.connect(db_path)
    sid, n_server = con.execute(
        "SELECT server_id, count(*) FROM generations GROUP BY server_id ORDER BY 2 DESC LIMIT 1").fetchone()
    n_failed = con.execute("SELECT count(*) FROM generations WHERE server_id = ? AND status = 'failed'",
                           (sid,)).fetchone()[0]
    mid_id = con.execute("SELECT id FROM generations WHERE server_id = ? ORDER BY id LIMIT 1 OFFSET ?",
                         (sid, n_server // 2)).fetchone()[0]
    low_id = con.execute("SELECT id FROM generations WHERE server_id = ? ORDER BY id LIMIT 1 OFFSET 100",
                         (sid,)).fetchone()[0]
    con.close()
    cases: list[tuple[str, dict, str | None, int, int | None]] = []
    for offset in (0, 1000, 10_000, n_server // 2, max(0, n_server - 50)):
        cases.append((f"offset={offset}", {"offset": offset}, None, offset, None))
    for offset in (0, 1000, max(0, n_failed - 50)):
        cases.append((f"status=failed offset={offset}", {"status": "failed", "offset": offset}, "failed", offset, None))
    cases.append(("status=completed offset=0", {"status": "completed"}, "completed", 0, None))
    cases.append((f"beforeId={mid_id} (middle)", {"beforeId": mid_id}, None, 0, mid_id))
    cases.append((f"beforeId={low_id} (near the end)", {"beforeId": low_id}, None, 0, low_id))
    cases.append((f"status=failed beforeId={mid_id}", {"status": "failed", "beforeId": mid_id}, "failed", 0, mid_id))
    rows = []
    headers = {"Authorization": f"Bearer {d.admin_key}"}
    async with aiohttp.ClientSession(d.base_url, headers=headers) as s:
        for name, params, status, offset, before in cases:
            ours = await http_times(s, f"/api/comfy/{sid}/generations", {"limit": 50, **params}, runs)
            base = sql_times(db_path, sid, status, offset, before, runs)
            rows.append(row(f"GET /api/comfy/{{id}}/generations?limit=50&{name}", ours, base, "sqlite3 page SQL"))
        ours = await http_times(s, "/api/stats", {}, runs)
        base = await http_times(s, "/api/vast-servers/1", {}, runs)
        rows.append(row("GET /api/stats", ours, base, "GET /api/vast-servers/1"))
    print(f"server {sid}: {n_server} generations ({n_failed} failed)")
    return rows


def row(name: str, ours: list[float], base: list[float], base_name: str) -> dict:
    p50, p99 = pct(ours, 0.5) * 1000, pct(ours, 0.99) * 1000
    b50, b99 = pct(base, 0.5) * 1000, pct(base, 0.99) * 1000
    return {"benchmark": name, "figure": f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            "baseline": f"{base_name}: p50 {b50:.2f} ms, p99 {b99:.2f} ms",
            "ratio": f"{p99 / b99:.1f}x p99" if b99 else "n/a", "target": f"p99 ≤ {TARGET_P99_MS:.0f} ms",
            "ok": p99 <= TARGET_P99_MS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="generations (1000000 = the full size)")
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=200, help="requests per measured case")
    ap.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    args = ap.parse_args(argv)
    with seeded_daemon("socialsync-bench-paging-", args.servers, args.rows) as (d, db_path):
        time.sleep(1.0)  # start-up reconciliation
        rows = asyncio.run(measure(d, db_path, args.runs))
    for r in rows:
        print(f"{r['benchmark']}: {r['figure']} | {r['baseline']} | {r['ratio']} | "
              f"{'OK' if r['ok'] else 'MISSED'} ({r['target']})")
        if args.table:
            print("ROW|" + "|".join([r["benchmark"], r["figure"], r["baseline"], r["ratio"], r["target"],
                                     "yes" if r["ok"] else "no"]))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
