"""Vast soak: a real daemon against a Vast simulator that fails ~30 % of the requests
while a client launches and destroys servers.

    python tests/reliability/vast_soak.py [--minutes M] [--workers N] [--fault-rate P] [--seed N]

Default 1 minute (the issue's full run: ``--minutes 10``). The daemon runs in this
process (``tests/harness.py`` ``running_daemon``, real HTTP on loopback) with fast
settings (no pacing, small retry base and sync intervals, a 6 s boot deadline); the
simulator (``default_catalog(400)``, 0.3 s boots) answers, on every endpoint, 429s in
the three body styles (text, ``detail``, ``rate_limit_exceeded`` JSON; some with
``Retry-After``), 502/503/504 gateway pages and connection resets before the handler
ran, and on create/destroy/manage also 5xx and resets *after* the handler acted (the
rental happened, the answer was lost). ``--workers`` client loops pick an unrented
offer from ``GET /api/vast-offers``, ``POST /api/vast-servers``, wait a little and
``DELETE`` most of them (some stay alive to the end).

At the end the faults stop, a few syncs settle, and it counts (each must be 0):

- duplicate rentals: sim instances (live or destroyed) sharing one label, and instances
  whose label is no server row of the daemon (a rental nobody accounts for);
- leaked instances: alive at the simulator but not a live (non-destroyed) row with that
  ``vast_id``;
- stuck launches: rows still ``launching``/``loading``.

Prints a table; exit status 1 when a must-be-0 count is not 0.
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
from fleet_helpers import VAST_KEY, vast_settings  # noqa: E402
from harness import running_daemon  # noqa: E402

from socialsync.daemon.sim.vast import VastSim, _Fault, default_catalog  # noqa: E402

ALL = ("search_asks", "bundles", "create", "list", "show", "manage", "destroy")
ACTING = ("create", "destroy", "manage")


def inject_faults(sim: VastSim, rate: float) -> None:
    """About ``rate`` of the requests to each endpoint fail, spread over the fault kinds."""
    before = [("429", "text", None), ("429", "detail", 0.2), ("429", "json", None), ("429", "text", 1),
              (502, None, None), (503, None, None), (504, None, None), ("reset", None, None)]
    # Each fault is tried in turn with its own probability: p per kind gives ~rate overall.
    p = 1 - (1 - rate) ** (1 / len(before))
    for endpoint in ALL:
        for kind, style, retry_after in before:
            if kind == "429":
                body, ctype, headers = sim._rate_limit_body(style, retry_after)
                sim._faults.append(_Fault(endpoint, "status", None, p, 429, body, ctype, headers))
            elif kind == "reset":
                sim._faults.append(_Fault(endpoint, "reset", None, p))
            else:
                sim.inject_5xx(endpoint, None, status=kind, probability=p)
    for endpoint in ACTING:  # the handler acted, the answer is lost
        sim.inject_5xx(endpoint, None, status=502, probability=0.08, when="after")
        sim._faults.append(_Fault(endpoint, "reset", None, 0.08, when="after"))


class Client:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.stats = collections.Counter()
        self.launched: list[int] = []
        self.keep: set[int] = set()

    async def worker(self, s: aiohttp.ClientSession, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            try:
                async with s.get("/api/vast-offers") as r:
                    self.stats[f"offers {r.status}"] += 1
                    if r.status != 200:
                        await asyncio.sleep(0.05)
                        continue
                    offers = [o["offerId"] for o in await r.json()]
                if not offers:
                    await asyncio.sleep(0.2)
                    continue
                async with s.post("/api/vast-servers", json={"offerId": self.rng.choice(offers),
                                                             "image": "comfy:soak"}) as r:
                    self.stats[f"launch {r.status}"] += 1
                    if r.status != 201:
                        continue
                    sid = (await r.json())["id"]
                self.launched.append(sid)
                if self.rng.random() < 0.1:
                    self.keep.add(sid)
                    continue
                await asyncio.sleep(self.rng.uniform(0.2, 2.5))
                await self.destroy(s, sid, stop_at + 30)
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.stats[f"client error {type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)

    async def destroy(self, s: aiohttp.ClientSession, sid: int, give_up_at: float) -> None:
        while time.monotonic() < give_up_at:
            async with s.delete(f"/api/vast-servers/{sid}") as r:
                self.stats[f"destroy {r.status}"] += 1
                if r.status in (200, 404):
                    return
            await asyncio.sleep(0.1)


def count(db_path: Path, sim: VastSim) -> dict:
    con = sqlite3.connect(db_path, timeout=30)
    try:
        rows = con.execute("SELECT id, label, vast_id, status FROM servers WHERE kind = 'vast'").fetchall()
    finally:
        con.close()
    labels = {r[1] for r in rows if r[1]}
    live_ids = {str(r[2]) for r in rows if r[3] != "destroyed" and r[2] is not None}
    created = list(sim.instances.values()) + list(sim.destroyed.values())
    by_label = collections.Counter(i.label for i in created)
    alive = [i for i in sim.instances.values() if i.id not in sim.destroyed]
    return {
        "rows": len(rows),
        "rows_by_status": collections.Counter(r[3] for r in rows),
        "instances_created": len(created),
        "instances_alive": len(alive),
        "duplicate_rentals": sum(n - 1 for n in by_label.values() if n > 1),
        "unaccounted_rentals": sum(1 for i in created if i.label not in labels),
        "leaked_instances": sum(1 for i in alive if str(i.id) not in live_ids),
        "stuck_launches": sum(1 for r in rows if r[3] in ("launching", "loading")),
    }


async def soak(minutes: float, workers: int, rate: float, seed: int, settle: float, tmp: Path) -> tuple[dict, dict]:
    rng = random.Random(seed)
    async with VastSim(api_key=VAST_KEY, boot_seconds=0.3, catalog=default_catalog(400), seed=seed) as sim:
        vast = vast_settings(sim, retry_base=0.02, retry_deadline=4.0, request_timeout=3.0, sync_interval=0.3,
                             sync_interval_transitioning=0.1, boot_deadline=6.0)
        comfy = {"probe_interval": 0.2, "probe_interval_max": 0.5, "ready_deadline": 3.0, "request_timeout": 2.0}
        async with running_daemon(tmp / "state", vast=vast, comfy=comfy) as d, d.session() as s:
            inject_faults(sim, rate)
            client = Client(rng)
            stop_at = time.monotonic() + minutes * 60
            t0 = time.monotonic()
            progress = asyncio.create_task(report_progress(client, sim, t0))
            await asyncio.gather(*(client.worker(s, stop_at) for _ in range(workers)))
            progress.cancel()
            faulted = sum(1 for r in sim.requests if (r.status is not None and r.status >= 429) or r.reset)
            requests = len(sim.requests)
            sim.clear_faults()
            # Destroy what the client kept, without faults, then let the syncs settle.
            for sid in sorted(client.keep):
                await client.destroy(s, sid, time.monotonic() + 20)
            deadline = time.monotonic() + settle
            result = count(d.settings.db_path, sim)
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                result = count(d.settings.db_path, sim)
                if not (result["stuck_launches"] or result["leaked_instances"]):
                    await asyncio.sleep(2.0)  # a few more syncs
                    result = count(d.settings.db_path, sim)
                    break
    info = {"launches_acked": len(client.launched), "sim_requests": requests, "sim_faulted": faulted,
            "client": dict(sorted(client.stats.items()))}
    return result, info


async def report_progress(client: Client, sim: VastSim, t0: float) -> None:
    while True:
        await asyncio.sleep(15)
        print(f"  {time.monotonic() - t0:5.0f} s: {len(client.launched)} launches acknowledged, "
              f"{len(sim.instances) + len(sim.destroyed)} instances created, {len(sim.requests)} sim requests",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="length of the load (the issue's full run: 10)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--fault-rate", type=float, default=0.3)
    ap.add_argument("--settle", type=float, default=30.0, help="seconds allowed to settle after the faults stop")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="socialsync-vast-soak-") as tmp:
        result, info = asyncio.run(soak(args.minutes, args.workers, args.fault_rate, args.seed, args.settle,
                                        Path(tmp)))
    print(f"\nVast soak: {args.minutes:g} min, {args.workers} workers, fault rate {args.fault_rate:.0%}")
    print(f"sim requests {info['sim_requests']}, answered with a fault (429/5xx/reset) {info['sim_faulted']} "
          f"({info['sim_faulted'] / max(1, info['sim_requests']):.0%})")
    print(f"client: {info['client']}")
    print(f"server rows by status: {dict(result['rows_by_status'])}")
    table = [("launches acknowledged (201)", info["launches_acked"], None),
             ("server rows", result["rows"], None),
             ("instances created at the sim", result["instances_created"], None),
             ("instances alive at the sim", result["instances_alive"], None),
             ("duplicate rentals (shared label)", result["duplicate_rentals"], 0),
             ("rentals without a server row", result["unaccounted_rentals"], 0),
             ("leaked instances", result["leaked_instances"], 0),
             ("stuck launches (launching/loading)", result["stuck_launches"], 0)]
    print(f"\n| {'count':<38} | {'value':>6} | must be |")
    print(f"|{'-' * 40}|{'-' * 8}|---------|")
    failed = False
    for name, value, must in table:
        bad = must is not None and value != must
        failed |= bad
        print(f"| {name:<38} | {value:>6} | {'' if must is None else must:>7} |{' FAIL' if bad else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
