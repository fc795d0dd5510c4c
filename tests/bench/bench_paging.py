"""Benchmark of generation paging and ``/api/stats`` on a large generations table.

    .venv/bin/python tests/bench/bench_paging.py [--rows 200000] [--servers 4] [--runs 200] [--keep DIR] [--table]

The daemon's migrations create the schema, then ``--rows`` generations (spread over
``--servers`` servers, most of them completed, some failed/cancelled) are inserted with
plain sqlite3 (``bench_analytics.seed``). A real ``socialsyncd`` process is started on
that database and each request is sent ``--runs`` times, one at a time, over HTTP:

- ``GET /api/comfy/{id}/generations?limit=50&offset=…`` at several offsets, with and
  without ``status=``, and ``GET /api/generations`` (every server) deep into the table;
- the ``beforeId`` keyset cursor (from the middle and the end of the table);
- ``GET /api/stats``.

Baseline: the SQL ``store.generations.page`` runs for that page (``page_sql``, or
``deep_page_sql`` from ``DEEP_OFFSET`` on) run directly with sqlite3 on the same file, in
this process (no HTTP, no JSON); for a deep page the plain OFFSET SQL's p99 is shown
next to it (what a deep page cost before the block counts); for ``/api/stats`` the HTTP floor,
``GET /api/vast-servers/1`` on the same daemon. Prints p50/p99 and the ratio; target
p99 ≤ 10 ms for every request. ``--rows 1000000`` is the full size.

``--keep DIR`` seeds a pristine database once into ``DIR`` (named after the servers and
rows) and gives each run a fresh copy of it, so a 1 M row run does not reseed every time
(the daemon applies any newer migrations to its copy when it starts).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import pct, seeded_daemon  # noqa: E402

from socialsync.daemon.store.generations import DEEP_OFFSET, deep_page_sql, page_sql  # noqa: E402

TARGET_P99_MS = 10.0


@contextmanager
def seeded(prefix: str, servers: int, generations: int, keep: Path | None) -> Iterator[tuple[Any, Path]]:
    """``benchlib.seeded_daemon``, or with ``keep`` a fresh copy of a database seeded
    once into ``keep``; yields (the daemon process, the database path)."""
    if keep is None:
        with seeded_daemon(prefix, servers, generations) as found:
            yield found
        return
    from bench_analytics import create_schema, seed
    from ops_daemon import NO_LIMITS, DaemonProcess

    keep.mkdir(parents=True, exist_ok=True)
    pristine = keep / f"seed-{servers}s-{generations}g.db"
    if not pristine.exists():
        t0 = time.perf_counter()
        partial = pristine.with_suffix(".partial")
        for leftover in keep.glob(partial.name + "*"):
            leftover.unlink()
        asyncio.run(create_schema(partial))
        seed(partial, servers, generations)
        with sqlite3.connect(partial) as con:  # fold the WAL in: one file to copy
            con.execute("PRAGMA journal_mode=DELETE")
        partial.rename(pristine)
        print(f"seed took {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp_path = Path(tmp)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        db_path = state / "socialsync.db"
        shutil.copyfile(pristine, db_path)
        print(f"copied {pristine} ({db_path.stat().st_size / 2**20:.0f} MB)", flush=True)
        with DaemonProcess(tmp_path, env={**NO_LIMITS, "SOCIALSYNC_LOG_LEVEL": "WARNING"}) as d:
            d.wait_listening(180)  # newer migrations may build an index over the copy first
            yield d, db_path


def sql_times(db_path: Path, server_id: int | None, status: str | None, offset: int, before_id: int | None,
              runs: int, deep: bool | None = None) -> list[float]:
    """The page's SQL on its own; ``deep``: None = what ``store.page`` picks."""
    con = sqlite3.connect(db_path)
    try:
        on = {"server_id": server_id is not None, "status": status is not None, "before_id": before_id is not None}
        if deep is None:
            deep = offset >= DEEP_OFFSET
        if deep:
            sql = deep_page_sql(**on)
            named = {"server_id": server_id, "status": status, "before_id": before_id, "limit": 50, "offset": offset}
            params: Any = {k: v for k, v in named.items() if v is not None}
        else:
            sql = page_sql(**on)
            params = (*[p for p in (server_id, status, before_id) if p is not None], 50, offset)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rows = con.execute(sql, params).fetchall()
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
    n_total = con.execute("SELECT count(*) FROM generations").fetchone()[0]
    n_completed = con.execute("SELECT count(*) FROM generations WHERE status = 'completed'").fetchone()[0]
    con.close()
    # (name, path, query, server, status, offset, beforeId)
    cases: list[tuple[str, str, dict, int | None, str | None, int, int | None]] = []
    one = f"/api/comfy/{sid}/generations"
    for offset in (0, 1000, 10_000, n_server // 2, max(0, n_server - 50)):
        cases.append((f"offset={offset}", one, {"offset": offset}, sid, None, offset, None))
    for offset in (0, 1000, max(0, n_failed - 50)):
        cases.append((f"status=failed offset={offset}", one, {"status": "failed", "offset": offset}, sid, "failed",
                      offset, None))
    cases.append(("status=completed offset=0", one, {"status": "completed"}, sid, "completed", 0, None))
    cases.append((f"beforeId={mid_id} (middle)", one, {"beforeId": mid_id}, sid, None, 0, mid_id))
    cases.append((f"beforeId={low_id} (near the end)", one, {"beforeId": low_id}, sid, None, 0, low_id))
    cases.append((f"status=failed beforeId={mid_id}", one, {"status": "failed", "beforeId": mid_id}, sid, "failed", 0,
                  mid_id))
    cases.append((f"beforeId={mid_id} offset=20000", one, {"beforeId": mid_id, "offset": 20_000}, sid, None, 20_000,
                  mid_id))
    every = "/api/generations"
    for offset in (n_total // 2, max(0, n_total - 50)):
        cases.append((f"offset={offset}", every, {"offset": offset}, None, None, offset, None))
    offset = max(0, n_completed - 50)
    cases.append((f"status=completed offset={offset}", every, {"status": "completed", "offset": offset}, None,
                  "completed", offset, None))
    rows = []
    headers = {"Authorization": f"Bearer {d.admin_key}"}
    async with aiohttp.ClientSession(d.base_url, headers=headers) as s:
        for name, path, params, server, status, offset, before in cases:
            ours = await http_times(s, path, {"limit": 50, **params}, runs)
            base = sql_times(db_path, server, status, offset, before, runs)
            label = "sqlite3 page SQL"
            if offset >= DEEP_OFFSET:
                plain = sql_times(db_path, server, status, offset, before, max(5, runs // 10), deep=False)
                label = f"plain OFFSET SQL p99 {pct(plain, 0.99) * 1000:.2f} ms; sqlite3 deep page SQL"
            shown = path.replace(f"/{sid}/", "/{id}/")
            rows.append(row(f"GET {shown}?limit=50&{name}", ours, base, label))
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
    ap.add_argument("--keep", type=Path, default=None, help="seed once into DIR and run on a fresh copy of it")
    ap.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    args = ap.parse_args(argv)
    with seeded("socialsync-bench-paging-", args.servers, args.rows, args.keep) as (d, db_path):
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
