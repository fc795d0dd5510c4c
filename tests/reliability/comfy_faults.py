"""ComfyUI faults: a real daemon with several ComfyUI simulators attached, under a load
of generations, while servers are killed mid-generation and websockets dropped.

    python tests/reliability/comfy_faults.py [--seconds S] [--servers N] [--workers N] [--seed N]

Default 60 s, 3 servers. The daemon runs in this process (``tests/gen_helpers.py``
``rig``: real HTTP on loopback, fast probe/health settings). ``--workers`` client loops
``POST /api/comfy/{id}/generate`` to random servers; every 1.5-4 s a random fault: a
server ``kill()``-ed like a crashed process (restarted, empty, on the same port 1-3 s
later) or all its websockets dropped at the TCP level (no close frame). After the load
every server is up again and the generations are given ``--settle`` seconds.

Counts (must be 0): generations accepted (202) that never reached a final state
(completed/failed/cancelled). Also reported: the longest time a generation active on a
killed server stayed ``queued``/``processing`` after its server died, and how the
accepted generations ended. Exit status 1 when any was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from gen_helpers import FINAL, rig  # noqa: E402

PROMPT = {"prompt": "a lighthouse at dusk", "parameters": {"width": 64, "height": 64, "steps": 8}}


class Monitor:
    """Polls the database: when each generation became final; what was active at a kill."""

    def __init__(self, db_path: Path):
        self.con = sqlite3.connect(db_path, timeout=30)
        self.final_at: dict[int, float] = {}
        self.status: dict[int, str] = {}

    def poll(self) -> None:
        now = time.monotonic()
        for gid, status in self.con.execute("SELECT id, status FROM generations"):
            self.status[gid] = status
            if status in FINAL and gid not in self.final_at:
                self.final_at[gid] = now

    def active_on(self, server_id: int) -> list[int]:
        return [r[0] for r in self.con.execute(
            "SELECT id FROM generations WHERE server_id = ? AND status IN ('queued', 'processing')", (server_id,))]

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.1)


async def load(api: aiohttp.ClientSession, sids: list[int], rng: random.Random, stop_at: float,
               accepted: list[int], stats: collections.Counter) -> None:
    while time.monotonic() < stop_at:
        sid = rng.choice(sids)
        try:
            async with api.post(f"/api/comfy/{sid}/generate", json=PROMPT) as r:
                stats[f"generate {r.status}"] += 1
                if r.status == 202:
                    accepted.append((await r.json())["generationId"])
        except (TimeoutError, aiohttp.ClientError) as exc:
            stats[f"client error {type(exc).__name__}"] += 1
        await asyncio.sleep(rng.uniform(0.05, 0.3))


async def run(seconds: float, servers: int, workers: int, seed: int, settle: float, tmp: Path) -> dict:
    rng = random.Random(seed)
    # A killed server comes back within 3 s: the ready deadline must outlast that.
    async with rig(tmp, servers=servers, step_time=0.05, comfy={"ready_deadline": 10.0}) as r:
        mon = Monitor(r.daemon.settings.db_path)
        mon_task = asyncio.create_task(mon.run())
        accepted: list[int] = []
        stats: collections.Counter = collections.Counter()
        kills: list[tuple[int, float, list[int]]] = []  # (server id, died at, generations active then)
        dead: set[int] = set()
        restarts: set[asyncio.Task] = set()
        stop_at = time.monotonic() + seconds
        loaders = [asyncio.create_task(load(r.api, r.server_ids, rng, stop_at, accepted, stats))
                   for _ in range(workers)]

        async def revive(i: int, after: float) -> None:
            await asyncio.sleep(after)
            await r.sims[i].restart()
            dead.discard(i)

        while time.monotonic() < stop_at - 2:
            await asyncio.sleep(rng.uniform(1.5, 4.0))
            i = rng.randrange(servers)
            if i in dead:
                continue
            if rng.random() < 0.6:
                mon.poll()
                active = mon.active_on(r.server_ids[i])
                await r.sims[i].kill()
                dead.add(i)
                kills.append((r.server_ids[i], time.monotonic(), active))
                stats["fault kill"] += 1
                task = asyncio.create_task(revive(i, rng.uniform(1.0, 3.0)))
                restarts.add(task)
                task.add_done_callback(restarts.discard)
            else:
                stats["fault drop websockets"] += 1
                stats["websockets dropped"] += await r.sims[i].drop_websockets()
        await asyncio.gather(*loaders)
        await asyncio.gather(*restarts)
        end_load = time.monotonic()
        deadline = end_load + settle
        while time.monotonic() < deadline:
            mon.poll()
            if all(mon.status.get(g) in FINAL for g in accepted):
                break
            await asyncio.sleep(0.2)
        mon.poll()
        mon_task.cancel()
        now = time.monotonic()
        lost = [g for g in accepted if mon.status.get(g) not in FINAL]
        worst = 0.0
        at_kill = 0
        for _sid, died, active in kills:
            at_kill += len(active)
            for g in active:
                worst = max(worst, mon.final_at.get(g, now) - died)
        endings = collections.Counter(mon.status.get(g, "missing") for g in accepted)
        mon.con.close()
    return {"accepted": len(accepted), "lost": len(lost), "lost_ids": lost[:10], "kills": len(kills),
            "active_at_kills": at_kill, "worst_after_death_s": worst, "endings": dict(endings),
            "stats": dict(sorted(stats.items())), "drain_s": time.monotonic() - end_load}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--settle", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="socialsync-comfy-faults-") as tmp:
        res = asyncio.run(run(args.seconds, args.servers, args.workers, args.seed, args.settle, Path(tmp)))
    print(f"\nComfyUI faults: {args.seconds:g} s, {args.servers} servers, {args.workers} workers")
    print(f"requests/faults: {res['stats']} (409: the server is not ready, e.g. dead)")
    print(f"accepted generations ended: {res['endings']} (drained {res['drain_s']:.1f} s after the load)")
    print(f"\n| {'count':<52} | {'value':>7} |")
    print(f"|{'-' * 54}|{'-' * 9}|")
    for name, value in (("generations accepted (202)", res["accepted"]),
                        ("server kills", res["kills"]),
                        ("generations active on a server when it died", res["active_at_kills"]),
                        ("longest active after its server died (s)", f"{res['worst_after_death_s']:.1f}"),
                        ("generations lost (never final; must be 0)", res["lost"])):
        print(f"| {name:<52} | {value:>7} |")
    if res["lost"]:
        print(f"FAIL: lost generations {res['lost_ids']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
