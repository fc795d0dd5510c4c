"""Crash durability (issue 12): a real ``socialsyncd`` under a load of launches (Vast
simulator), generations (two ComfyUI simulators) and reads is ``kill -9``-ed at a
random moment, again and again, restarted each time. After each kill:

- ``PRAGMA integrity_check`` of the database (and ``foreign_key_check``);
- every request the client saw acknowledged (201 launch, 202 generate, 201 API key)
  is in the database;
- after the restart, no generation stays ``processing``/``queued`` without a live
  owner: within ``--settle`` seconds each one is final, or its prompt is still in its
  ComfyUI's queue (running or pending), or it is waiting in the scheduler's queue
  (``queued``, no prompt yet) and gets dispatched by the end.

    python tests/reliability/crash_durability.py [--quick | --long] [--rounds N] [--seed N]

Default 20 rounds (``--quick`` 5, ``--long`` 50). Prints the counts; exit status 1 when
any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sqlite3
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rig import DaemonProcess, attach, daemon_env, simulators, wait_ready, wait_until

PROMPT = {"prompt": "a lighthouse at dusk", "parameters": {"width": 64, "height": 64, "steps": 8}}


class Load:
    """Launches, generations and reads until cancelled; remembers what was acknowledged."""

    def __init__(self, base: str, key: str, server_ids: list[int], offers: list[int], rng: random.Random):
        self.base, self.key, self.server_ids, self.offers, self.rng = base, key, server_ids, offers, rng
        self.acked_launches: list[int] = []
        self.acked_generations: list[int] = []
        self.acked_keys: list[int] = []
        self.requests = 0
        self.errors = 0  # connection errors at the kill: expected

    async def run(self) -> None:
        async with aiohttp.ClientSession(self.base, headers={"Authorization": f"Bearer {self.key}"},
                                         timeout=aiohttp.ClientTimeout(total=10)) as s:
            await asyncio.gather(*(self._worker(s, i) for i in range(6)))

    async def _worker(self, s: aiohttp.ClientSession, i: int) -> None:
        while True:
            kind = ("generate", "generate", "read", "read", "launch", "key")[i % 6]
            try:
                self.requests += 1
                if kind == "generate":
                    sid = self.rng.choice(self.server_ids)
                    async with s.post(f"/api/comfy/{sid}/generate", json=PROMPT) as r:
                        if r.status == 202:
                            self.acked_generations.append((await r.json())["generationId"])
                elif kind == "launch":
                    body = {"offerId": self.rng.choice(self.offers), "image": "comfy:1"}
                    async with s.post("/api/vast-servers", json=body) as r:
                        if r.status == 201:
                            self.acked_launches.append((await r.json())["id"])
                    await asyncio.sleep(0.3)
                elif kind == "key":
                    async with s.post("/api/api-keys", json={"name": f"k{self.requests}", "role": "viewer"}) as r:
                        if r.status == 201:
                            self.acked_keys.append((await r.json())["id"])
                    await asyncio.sleep(0.2)
                else:
                    path = self.rng.choice(["/api/vast-servers", "/api/generations?limit=50", "/api/stats",
                                            "/api/audit-logs?limit=20"])
                    async with s.get(path) as r:
                        await r.read()
            except (TimeoutError, aiohttp.ClientError):
                self.errors += 1
                await asyncio.sleep(0.05)


def check_db(db_path: Path, load: Load) -> dict:
    con = sqlite3.connect(db_path, timeout=30)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        fk = con.execute("PRAGMA foreign_key_check").fetchall()
        servers = {r[0] for r in con.execute("SELECT id FROM servers")}
        gens = {r[0] for r in con.execute("SELECT id FROM generations")}
        api_keys = {r[0] for r in con.execute("SELECT id FROM api_keys")}
    finally:
        con.close()
    return {
        "integrity": integrity,
        "fk_violations": len(fk),
        "missing_launches": [i for i in load.acked_launches if i not in servers],
        "missing_generations": [i for i in load.acked_generations if i not in gens],
        "missing_keys": [i for i in load.acked_keys if i not in api_keys],
    }


def active_generations(db_path: Path) -> list[tuple[int, str, str | None, int | None]]:
    con = sqlite3.connect(db_path, timeout=30)
    try:
        return con.execute("SELECT id, status, queue_id, server_id FROM generations "
                           "WHERE status IN ('queued', 'processing')").fetchall()
    finally:
        con.close()


def orphans(db_path: Path, sims) -> list[tuple]:
    """Active generations nobody works on: processing with a prompt no ComfyUI has."""
    live = set()
    for sim in sims:
        live.update(sim.pending_prompt_ids)
        live.update(sim.history)  # finished by ComfyUI, being collected by the daemon
        if sim.running_prompt_id:
            live.add(sim.running_prompt_id)
    return [g for g in active_generations(db_path) if g[1] == "processing" and g[2] not in live]


def no_orphans(db_path: Path, sims) -> bool:
    return not orphans(db_path, sims)


async def crash_run(rounds: int, seed: int, settle: float, tmp: Path) -> dict:
    rng = random.Random(seed)
    totals = {"rounds": 0, "integrity_failures": 0, "fk_violations": 0, "acked_launches": 0, "acked_generations": 0,
              "acked_keys": 0, "missing_acked": 0, "stuck_generations": 0, "max_settle_s": 0.0, "requests": 0,
              "processing_at_kill": 0}
    problems: list[str] = []
    async with simulators(tmp, comfy=2, step_time=0.05, boot_seconds=0.5) as (vsim, sims):
        env = daemon_env(vsim.base_url)
        d = DaemonProcess(tmp, env=env).start()
        await asyncio.to_thread(d.wait_listening, 30)
        key = d.admin_key
        async with aiohttp.ClientSession(d.base_url, headers={"Authorization": f"Bearer {key}"}) as s:
            sids = [await attach(s, sim, f"gpu-{i}") for i, sim in enumerate(sims)]
            for sid in sids:
                await wait_ready(s, sid)
            async with s.get("/api/vast-offers") as r:
                offers = [o["offerId"] for o in await r.json()]
        for n in range(rounds):
            load = Load(d.base_url, key, sids, offers, rng)
            task = asyncio.create_task(load.run())
            await asyncio.sleep(rng.uniform(0.3, 3.0))
            d.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(d.proc.wait, 10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            result = check_db(d.db_path, load)
            totals["processing_at_kill"] += sum(1 for g in active_generations(d.db_path) if g[1] == "processing")
            totals["rounds"] += 1
            totals["requests"] += load.requests
            totals["acked_launches"] += len(load.acked_launches)
            totals["acked_generations"] += len(load.acked_generations)
            totals["acked_keys"] += len(load.acked_keys)
            missing = result["missing_launches"] + result["missing_generations"] + result["missing_keys"]
            totals["missing_acked"] += len(missing)
            totals["fk_violations"] += result["fk_violations"]
            if result["integrity"] != "ok":
                totals["integrity_failures"] += 1
                problems.append(f"round {n}: integrity_check {result['integrity']}")
            if missing:
                problems.append(f"round {n}: acknowledged but missing {result}")
            # Restart; within ``settle`` seconds nothing may be active without an owner.
            d = DaemonProcess(tmp, env=env)
            d.start()
            await asyncio.to_thread(d.wait_listening, 30)
            t0 = time.monotonic()
            try:
                await wait_until(partial(no_orphans, d.db_path, sims), timeout=settle, interval=0.2)
            except TimeoutError:
                stuck = orphans(d.db_path, sims)
                totals["stuck_generations"] += len(stuck)
                problems.append(f"round {n}: {len(stuck)} generations processing without a live owner: {stuck[:5]}")
            totals["max_settle_s"] = max(totals["max_settle_s"], time.monotonic() - t0)
            print(f"round {n + 1}/{rounds}: {load.requests} requests, acked {len(load.acked_launches)} launches "
                  f"{len(load.acked_generations)} generations {len(load.acked_keys)} keys; "
                  f"integrity {result['integrity']}, missing {len(missing)}", flush=True)
        # At the end everything drains: no active generation at all. The backlog the load
        # left behind may take a while; it must keep shrinking (a stall of 15 s fails) and
        # nothing may be processing without a live owner meanwhile.
        for sim in sims:
            sim.step_time = 0.0  # drain the backlog through ComfyUI, quickly
        totals["backlog_at_end"] = len(active_generations(d.db_path))
        last, stalled_since, t_end = totals["backlog_at_end"], time.monotonic(), time.monotonic()
        while True:
            left = active_generations(d.db_path)
            lost = orphans(d.db_path, sims)
            if lost:
                totals["stuck_generations"] += len(lost)
                problems.append(f"end: {len(lost)} generations processing without a live owner: {lost[:5]}")
                break
            if not left:
                break
            if len(left) < last:
                last, stalled_since = len(left), time.monotonic()
            elif time.monotonic() - stalled_since > 15 or time.monotonic() - t_end > 600:
                totals["stuck_generations"] += len(left)
                problems.append(f"end: {len(left)} generations still active and not draining: {left[:5]}")
                break
            await asyncio.sleep(0.5)
        totals["drain_s"] = round(time.monotonic() - t_end, 1)
        d.signal(signal.SIGTERM)
        await asyncio.to_thread(d.wait, 30)
        totals["daemon_tracebacks"] = d.stderr().count("Traceback")
    totals["problems"] = problems
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds")
    ap.add_argument("--long", action="store_true", help="50 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--settle", type=float, default=20.0, help="seconds a restarted daemon has to settle")
    args = ap.parse_args()
    rounds = args.rounds or (5 if args.quick else 50 if args.long else 20)
    with tempfile.TemporaryDirectory(prefix="socialsync-crash-") as tmp:
        totals = asyncio.run(crash_run(rounds, args.seed, args.settle, Path(tmp)))
    problems = totals.pop("problems")
    print("\ncrash durability:")
    for k, v in totals.items():
        print(f"  {k:22} {v:.1f}" if isinstance(v, float) else f"  {k:22} {v}")
    for p in problems:
        print("  PROBLEM", p)
    bad = totals["integrity_failures"] or totals["missing_acked"] or totals["stuck_generations"] or totals["fk_violations"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
