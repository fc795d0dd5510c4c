"""Benchmark of ``GET /api/vast-servers`` with many servers against a bare aiohttp handler.

    .venv/bin/python tests/bench/bench_server_list.py [--servers 500] [--conns 32] [--seconds 5] [--quick]

A real ``socialsyncd`` process on a state directory seeded with ``--servers`` server
rows (no Vast key: no sync loop), and a bare aiohttp handler (its own process) that
returns the same JSON bytes. The same closed-loop client (its own process, ``--conns``
connections) hammers each in turn. Prints p50/p99 and requests/s, and the ratios.
Targets: ≥ 40 % of the bare handler's requests/s, p99 ≤ 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BareServer, hammer, ratio


async def migrate(db_path: Path) -> None:
    from socialsync.daemon.store.db import Database

    db = await Database.open(db_path)
    await db.close()


def seed_servers(db_path: Path, n: int) -> None:
    asyncio.run(migrate(db_path))
    con = sqlite3.connect(db_path)
    now = "2026-01-01T00:00:00.000Z"
    rows = [(i + 1, 90_000_000 + i, f"socialsync-bench-{i}", f"gpu-{i}", 5_000_000 + i, "ghcr.io/ai-dock/comfyui:latest",
             40.0, "RTX 4090", 1, 24564, 16, 64, "0.412", "0.006", "Sweden, SE", "stopped" if i % 3 else "error",
             "pending", "vast: stopped", json.dumps({"team": "bench", "n": i}), now, now)
            for i in range(n)]
    con.executemany(
        "INSERT INTO servers (id, vast_id, label, name, offer_id, image, disk, gpu, gpu_count, gpu_ram_mb, cpu_cores, "
        "ram_gb, price_per_hour, disk_cost_per_hour, location, status, setup_status, status_message, metadata, "
        "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


def run(servers: int, conns: int, seconds: float) -> dict:
    from ops_daemon import NO_LIMITS, DaemonProcess

    with tempfile.TemporaryDirectory(prefix="socialsync-bench-list-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "state").mkdir(mode=0o700)
        seed_servers(tmp_path / "state" / "socialsync.db", servers)
        with DaemonProcess(tmp_path, env={**NO_LIMITS, "SOCIALSYNC_LOG_LEVEL": "WARNING"}) as d:
            d.wait_listening(30)
            headers = {"Authorization": f"Bearer {d.admin_key}"}
            req = urllib.request.Request(d.base_url + "/api/vast-servers", headers=headers)
            body = urllib.request.urlopen(req).read()
            assert len(json.loads(body)) == servers
            ours = hammer(d.base_url + "/api/vast-servers", headers, conns, seconds)
        bare_srv = BareServer(body)
        try:
            bare = hammer(bare_srv.base_url + "/api/vast-servers", {}, conns, seconds)
        finally:
            bare_srv.close()
    return {"ours": ours, "bare": bare, "bytes": len(body)}


def report(res: dict, servers: int, conns: int) -> list[dict]:
    ours, bare = res["ours"], res["bare"]
    return [{
        "benchmark": f"GET /api/vast-servers, {servers} servers, {conns} conns",
        "figure": f"p50 {ours['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} ms, {ours['rps']:.0f} req/s",
        "baseline": f"bare aiohttp: p50 {bare['p50_ms']:.1f} ms, p99 {bare['p99_ms']:.1f} ms, {bare['rps']:.0f} req/s",
        "ratio": f"{ratio(ours['rps'], bare['rps'])} of bare req/s",
        "target": "≥ 0.40 of bare req/s, p99 ≤ 25 ms",
        "ok": ours["rps"] >= 0.4 * bare["rps"] and ours["p99_ms"] <= 25,
    }]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=500)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="2 s per side")
    ap.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    args = ap.parse_args(argv)
    seconds = 2.0 if args.quick else args.seconds
    res = run(args.servers, args.conns, seconds)
    rows = report(res, args.servers, args.conns)
    print(f"response {res['bytes']} bytes; statuses ours {res['ours']['statuses']} bare {res['bare']['statuses']}")
    for row in rows:
        print(f"{row['benchmark']}: {row['figure']} | {row['baseline']} | ratio {row['ratio']} | "
              f"{'OK' if row['ok'] else 'MISSED'} ({row['target']})")
        if args.table:
            print("ROW|" + "|".join([row["benchmark"], row["figure"], row["baseline"], row["ratio"], row["target"],
                                     "yes" if row["ok"] else "no"]))
    return rows


if __name__ == "__main__":
    main()
