"""Run every benchmark and write one markdown table.

    .venv/bin/python tests/bench/run_all.py [--full] [--only NAME[,NAME...]] [--timeout S]

Each benchmark runs in its own process (``--quick`` unless ``--full``); the table goes
to stdout and to ``tests/bench/RESULTS.md`` with each script's own printed figures
below it. Benchmarks that print ``ROW|benchmark|figure|baseline|ratio|target|ok`` lines
fill the table; the others are quoted as they printed. With ``--full``, bench_analytics,
bench_paging and bench_rss share one ``--keep DIR`` (under the system temp directory,
removed at the end), so each 1 M-row database is seeded once per size.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = {"bench_server_list", "bench_generations", "bench_events", "bench_analytics", "bench_tui", "bench_paging", "bench_rss",
         "bench_vast_sync"}  # print ROW| lines with --table
BENCHES = ["bench_server_list", "bench_generations", "bench_events", "bench_analytics", "bench_tui", "bench_paging",
           "bench_rss", "bench_vast_sync", "bench_scheduler"]
QUICK_ARGS = {
    "bench_server_list": ["--quick"],
    "bench_generations": ["--quick"],
    "bench_events": ["--quick"],
    "bench_analytics": ["--generations", "100000"],  # its queries need its default 1,000 servers
    "bench_tui": ["--quick"],
    "bench_paging": [],  # 200,000 generations; --full: --rows 1000000
    "bench_rss": [],  # 1,000 servers, 200,000 generations; --full: --generations 1000000
    "bench_vast_sync": ["--repeat", "3"],  # 10, 100 and 1,000 servers
    "bench_scheduler": ["--count", "600"],  # 50 simulated servers
}
FULL_ARGS = {"bench_paging": ["--rows", "1000000"], "bench_rss": ["--generations", "1000000"]}
KEEP = {"bench_analytics", "bench_paging", "bench_rss"}  # accept --keep DIR: seed once, run on a copy


def run_one(name: str, full: bool, timeout: float, keep: Path | None = None) -> tuple[str, float, int]:
    args = (FULL_ARGS.get(name, []) if full else QUICK_ARGS.get(name, [])) + (["--table"] if name in TABLE else [])
    if keep is not None and name in KEEP:
        args += ["--keep", str(keep)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out, rc = proc.stdout + ("\n" + proc.stderr[-3000:] if proc.returncode else ""), proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = f"{(exc.stdout or b'').decode(errors='replace') if isinstance(exc.stdout, bytes) else exc.stdout or ''}\n"\
                  f"TIMED OUT after {timeout:.0f} s", -1
    return out, time.monotonic() - t0, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the full sizes (long on a 2-core machine)")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or BENCHES
    rows: list[list[str]] = []
    raw: list[str] = []
    keep = Path(tempfile.mkdtemp(prefix="socialsync-bench-keep-")) if args.full else None
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            out, took, rc = run_one(name, args.full, args.timeout, keep)
            got = [line.split("|")[1:] for line in out.splitlines() if line.startswith("ROW|")]
            for cells in got:
                rows.append([name, *cells])
            if not got:
                rows.append([name, "see its output below", "", "", "", "failed" if rc else "printed"])
            raw.append(f"### {name} ({took:.0f} s, exit {rc})\n\n```\n{out.strip()[-6000:]}\n```\n")
    finally:
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
    command = "python tests/bench/run_all.py" + (" --full" if args.full else "") + \
              (f" --only {args.only}" if args.only else "")
    head = (f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at the end.\n\n")
    table = ["| bench | benchmark | figure | baseline | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    text = head + "\n".join(table) + "\n"
    print(text)
    (HERE / "RESULTS.md").write_text("# Benchmark results\n\n" + text + "\n## Raw output\n\n" + "\n".join(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
