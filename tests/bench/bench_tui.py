"""Benchmark of the console: its CPU while a 1,000-server fleet changes status 100 times a
second, and its time to first screen.

    .venv/bin/python tests/bench/bench_tui.py [--seconds 10] [--rate 100] [--quick] [--table]

The console runs in its own process on a real pseudo-terminal (the Linux driver, real
escape sequences, which the parent reads and throws away as a terminal would), so the
figures include rendering. The parent reads the child's CPU time from /proc.

- **CPU**: the child's user + system time over a window of ``--seconds`` while it
  applies ``--rate`` ``server_status`` events a second to a 1,000-row fleet table, as
  a % of one core (target ≤ 30 %). The events come from a fake stream in the child
  (it builds each ``Envelope`` with pydantic, as the real stream does after parsing).
  Measured at 80×24 and 200×50, with the table sorted by id (no re-sort) and by status
  (every flush re-sorts), and with no events at all (the idle floor).
- **Time to first screen**: from spawning the process to the first row of servers
  drawn on the terminal (target ≤ 1.5 s): against the fake 1,000-server daemon, and
  against a real demo daemon on loopback (HTTP + ZeroMQ/websocket, a handful of
  servers). The CPU the child used in that time is shown too: wall time on a busy
  machine is mostly waiting for a core.

Not a test: run on purpose, it prints its figures. ``--table`` also prints ``ROW|``
lines for ``run_all.py``: each CPU case next to the idle floor at 200×50 (measured in
the same run, ``--quick`` too), and the first screens (met when the slowest run is
≤ 1.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ratio, table_row  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_CPU_PCT = 30.0
TARGET_FIRST_S = 1.5
STATES = (("running", "ready"), ("running", "installing"), ("loading", "pending"), ("stopped", "ready"),
          ("error", "failed"))


# -- the child: the console on a fake fleet --------------------------------------------


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(TESTS))
    from tui_helpers import FakeDaemon, server_json

    from socialsync.tui.app import SocialSyncApp
    from socialsync.tui.widgets.fleet_table import FleetTable

    if args.breakdown:
        _instrument(stats_ref := {})
    servers = [server_json(i) for i in range(1, args.servers + 1)]
    daemon = FakeDaemon(servers, generations=[])
    stats: dict[str, float] = {"events": 0}

    class BenchApp(SocialSyncApp):
        def on_mount(self) -> None:  # Textual runs SocialSyncApp.on_mount after this one
            self.run_worker(self.produce(), name="producer")
            if args.duration:
                self.set_timer(args.duration, self.finish)

        async def produce(self) -> None:
            while not self.live.synced:
                await asyncio.sleep(0.01)
            table = self.screen.query_one(FleetTable)
            if args.sort != "id":
                table.sort_by(args.sort, False)
            if not args.rate:
                return
            rng = random.Random(7)
            interval = 1.0 / args.rate
            step = time.monotonic()
            while True:
                sid = rng.randrange(1, args.servers + 1)
                status, setup = STATES[rng.randrange(len(STATES))]
                daemon.push("server_status", {"serverId": sid, "status": status, "setupStatus": setup})
                stats["events"] += 1
                step += interval
                await asyncio.sleep(max(0.0, step - time.monotonic()))

        def finish(self) -> None:
            table = self.screen.query_one(FleetTable)
            stats.update(cell_updates=table.cell_updates, rows=table.row_count, applied=self.live.events_applied)
            if args.breakdown:
                stats.update(stats_ref)
            Path(args.out).write_text(json.dumps(stats))
            self.exit()

    if args.profile:
        import cProfile

        cProfile.runctx("BenchApp(daemon).run()", globals(), {"BenchApp": BenchApp, "daemon": daemon},
                        args.profile)
    else:
        BenchApp(daemon, **({"flush_interval": args.flush} if args.flush else {})).run()  # type: ignore[arg-type]


def _instrument(acc: dict) -> None:
    """CPU time (this thread) spent in the table's sync and in the table's rendering."""
    from textual.widgets import DataTable

    from socialsync.tui.widgets.fleet_table import FleetTable

    def wrap(cls: type, name: str, key: str) -> None:
        original = getattr(cls, name)

        def timed(self, *a, **kw):
            t = time.thread_time()
            try:
                return original(self, *a, **kw)
            finally:
                acc[key] = acc.get(key, 0.0) + time.thread_time() - t
                acc[key + "_calls"] = acc.get(key + "_calls", 0) + 1

        setattr(cls, name, timed)

    wrap(FleetTable, "sync", "sync")
    wrap(DataTable, "render_lines", "render")


def child_real(args: argparse.Namespace) -> None:
    from socialsync.tui.app import run_tui

    run_tui(args.url, args.key, transport="auto")


# -- the parent: a terminal, and /proc -------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


class Terminal:
    """The child on a pty of ``cols``×``rows``; ``pump`` reads what it draws."""

    def __init__(self, argv: list[str], cols: int, rows: int, env: dict[str, str] | None = None):
        self.master, slave = pty.openpty()
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env={**os.environ, "TERM": "xterm-256color", **(env or {})},
                                     start_new_session=True)
        os.close(slave)
        self.output = bytearray()

    def pump(self, timeout: float) -> bool:
        """Read for up to ``timeout`` s; False once the child has closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 1 << 16)
        except OSError:
            return False
        if not data:
            return False
        self.output += data
        if len(self.output) > 1 << 20:
            del self.output[: len(self.output) - 4096]
        return True

    def wait_for(self, needle: bytes, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output:
                return time.monotonic() - self.started
            if not self.pump(0.01) and self.proc.poll() is not None:
                return None
        return None

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.pump(min(0.05, end - time.monotonic())):
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.close(self.master)


def measure_cpu(cols: int, rows: int, rate: int, sort: str, seconds: float, warmup: float) -> dict:
    out = tempfile.mktemp(prefix="bench-tui-", suffix=".json")
    argv = [sys.executable, __file__, "--child", "--rate", str(rate), "--sort", sort, "--out", out,
            "--duration", str(warmup + seconds + 30)]
    term = Terminal(argv, cols, rows)
    try:
        first = term.wait_for(b"gpu-0001", 60)
        if first is None:
            raise SystemExit(f"the console did not draw its first screen: {term.output[-2000:]!r}")
        term.run_for(warmup)
        cpu0, t0 = cpu_seconds(term.proc.pid), time.monotonic()
        term.run_for(seconds)
        cpu1, t1 = cpu_seconds(term.proc.pid), time.monotonic()
    finally:
        term.close()
    return {"cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "first_screen": first}


def measure_first_screen(argv: list[str], needle: bytes, cols: int = 120, rows: int = 40,
                         env: dict[str, str] | None = None) -> tuple[float, float]:
    term = Terminal(argv, cols, rows, env)
    try:
        first = term.wait_for(needle, 60)
        cpu = cpu_seconds(term.proc.pid)
    finally:
        term.close()
    if first is None:
        raise SystemExit(f"no first screen: {term.output[-2000:]!r}")
    return first, cpu


def real_daemon_first_screen(runs: int) -> list[tuple[float, float]]:
    sys.path.insert(0, str(TESTS))
    from tui_helpers import DaemonProcess

    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        daemon = DaemonProcess(Path(tmp) / "state")
        try:
            daemon.start()
            asyncio.run(daemon.wait_ready())
            asyncio.run(_launch(daemon, 3))
            results = []
            for _ in range(runs):
                argv = [sys.executable, __file__, "--child-real", "--url", daemon.base_url, "--key",
                        daemon.admin_key]
                results.append(measure_first_screen(argv, b"server-"))
            return results
        finally:
            daemon.stop()


async def _launch(daemon, n: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession(daemon.base_url, headers={"Authorization": f"Bearer {daemon.admin_key}"}) as s:
        offers = await (await s.get("/api/vast-offers", params={"order": "price"})).json()
        for offer in offers[:n]:
            async with s.post("/api/vast-servers", json={"offerId": offer["offerId"]}) as r:
                assert r.status == 201, await r.text()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--child-real", action="store_true")
    p.add_argument("--url")
    p.add_argument("--key")
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--sort", default="id")
    p.add_argument("--out", default=os.devnull)
    p.add_argument("--duration", type=float, default=0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="one size (and the idle floor), shorter windows")
    p.add_argument("--table", action="store_true", help="also print ROW| lines for run_all.py")
    p.add_argument("--profile", help="(child) write a cProfile of the run to this file")
    p.add_argument("--breakdown", action="store_true", help="(child) time the table's sync and rendering")
    p.add_argument("--flush", type=float, default=None, help="(child) the state's flush interval")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.child_real:
        child_real(args)
        return

    seconds = 5.0 if args.quick else args.seconds
    load = os.getloadavg()[0]
    print(f"console benchmark — {os.cpu_count()} CPUs, load average {load:.1f} at start")
    print(f"\nCPU, {args.servers} servers, {args.rate} status changes/s, {seconds:.0f} s window "
          "(% of one core; target ≤ 30 %):")
    cases = [((80, 24), args.rate, "id"), ((200, 50), args.rate, "id"), ((200, 50), args.rate, "status"),
             ((200, 50), 0, "id")]
    if args.quick:
        cases = [cases[1], cases[3]]
    cpu: dict[str, float] = {}
    for (cols, rows), rate, sort in cases:
        r = measure_cpu(cols, rows, rate, sort, seconds, 2.0 if args.quick else args.warmup)
        label = f"{cols}×{rows}, sorted by {sort}, {rate} events/s"
        cpu[label] = r["cpu_pct"]
        print(f"  {label:<42} {r['cpu_pct']:5.1f} %   (first screen {r['first_screen']:.2f} s)")

    print("\nTime to first screen (spawn → first server row drawn; target ≤ 1.5 s):")
    runs = 1 if args.quick else 3
    fake = [measure_first_screen([sys.executable, __file__, "--child", "--rate", "0"], b"gpu-0001")
            for _ in range(runs)]
    print("  fake daemon, 1,000 servers:   " + ", ".join(f"{w:.2f} s (CPU {c:.2f} s)" for w, c in fake))
    real = real_daemon_first_screen(runs)
    print("  real demo daemon, loopback:   " + ", ".join(f"{w:.2f} s (CPU {c:.2f} s)" for w, c in real))
    if args.table:
        lines = []
        idle_label, idle = next((k, v) for k, v in cpu.items() if k.endswith(" 0 events/s"))
        for label, pct_ in cpu.items():
            if label != idle_label:
                lines.append(table_row(
                    f"console CPU, {args.servers} servers, {label}, {seconds:.0f} s window",
                    f"{pct_:.1f} % of one core", f"idle floor ({idle_label}): {idle:.1f} %",
                    f"{ratio(pct_, idle)}x idle", f"≤ {TARGET_CPU_PCT:.0f} % of one core at 100 changes/s",
                    pct_ <= TARGET_CPU_PCT))
        for what, got in ((f"fake daemon, {args.servers} servers", fake), ("real demo daemon, loopback", real)):
            lines.append(table_row(
                f"console first screen, {what} ({len(got)} run{'s' if len(got) > 1 else ''})",
                ", ".join(f"{w:.2f} s (CPU {c:.2f} s)" for w, c in got), "—", "—",
                f"≤ {TARGET_FIRST_S} s (slowest run)", max(w for w, _ in got) <= TARGET_FIRST_S))
        for line in lines:
            print(line)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
