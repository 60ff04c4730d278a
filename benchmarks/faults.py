"""Fault injection at burst sizes: are submissions lost or scored twice, and how long does
the service take to recover?

    ./dev bench-faults [--submissions N] [--kills K] [--workers W] [--outage S] [--record]

Five runs, each on a private stack of its own (a PostgreSQL cluster and a redis-server in a
temp folder, W `grader worker` processes, the web app; the machine's own servers are not
touched), with N submissions sent through the web API over K+1 seconds while faults are injected:
  baseline  no fault, for comparison
  kill      K SIGKILLs, one a second, of a random worker's main process (restarted at once)
            or of the pool process grading under it (the worker replaces it itself)
  redis     the broker killed, started again empty on the same port after S seconds
  postgres  the database crashed (pg_ctl stop -m immediate), started again after S seconds
  combined  all of the above in one run
The machinery is the tests' (tests/chaos.py; tests/test_faults.py runs it at small sizes).
Prints one row per run: lost (accepted, never graded) and double-scored (graded more than
once, by the database's counter or the workers' logs) must be 0; misgraded counts files
that did not get the marks they deserve; refused counts 503 answers while the database
was down (the client sent those files again); interrupted counts gradings a fault cut off
and that were done again. Recovery is the time from the end of the last fault to the last
grading; longest pause is the longest time, from the first fault on, with no grading
finishing; total is the first submission to the last grading, and extra is the total
less the baseline's (what the faults cost the whole burst). Leases, sweeps and stuck
times are shortened as in the tests (GRADER_LEASE_SECONDS=10, GRADER_SWEEP_SECONDS=1,
GRADER_STUCK_SECONDS=4): production defaults (300 s, 30 s, 120 s) stretch the recovery
of a killed grading accordingly. --record appends the figures to benchmarks/RESULTS.md.
Exit status 1 if anything was lost, double-scored or misgraded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.grading_cost import machine  # noqa: E402
import chaos  # noqa: E402

COLUMNS = [
    "scenario", "submissions", "lost", "double-scored", "misgraded", "refused (503)", "faults",
    "interrupted", "worker restarts", "recovery (s)", "longest pause (s)", "total (s)", "extra (s)",
]


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- |" + " ---: |" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=150, help="per run (default 150)")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs in the kill and combined runs, one a second (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="grader worker processes, one grading process each (default 2)")
    parser.add_argument("--outage", type=float, default=chaos.OUTAGE_SECONDS, help="seconds Redis and PostgreSQL stay down (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="chooses the processes killed")
    parser.add_argument("--only", choices=["baseline", "kill", "redis", "postgres", "combined"], action="append", help="run only these")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last grading of a run")
    parser.add_argument("--record", action="store_true", help="append the figures to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.submissions < 1 or args.kills < 1 or args.workers < 1 or args.outage <= 0:
        parser.error("--submissions, --kills and --workers must be at least 1, --outage above 0")

    runs = {
        "baseline": ([], 0),
        "kill": (["kill"], args.kills),
        "redis": (["redis"], 0),
        "postgres": (["postgres"], 0),
        "combined": (list(chaos.KINDS), args.kills),
    }
    chosen = args.only or list(runs)
    # The web app runs in this process: its line per submission (and per 503) would bury
    # the table; the counts below say what happened. The workers log to their own files.
    logging.disable(logging.ERROR)
    print(f"machine: {machine()}", flush=True)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows, bad = [], []
    baseline = None
    for name in chosen:
        kinds, kills = runs[name]
        began = time.monotonic()
        # Every run submits over the same span (that of the kills), so totals compare.
        outcome = chaos.run(
            kinds, args.submissions, kills=kills, workers=args.workers, seed=args.seed,
            outage=args.outage, timeout=args.timeout, name=name, spread=args.kills + 1.0,
        )
        row = outcome.row()
        if name == "baseline":
            baseline = outcome.total_s
        row["extra (s)"] = "" if baseline is None or name == "baseline" else round(outcome.total_s - baseline, 1)
        rows.append(row)
        print(f"{name}: {row} ({time.monotonic() - began:.0f} s with start-up)", flush=True)
        for fault in outcome.faults:
            print(f"    {fault.kind} at +{fault.at:g} s: {fault.what}; then at most {fault.pause_s:.1f} s without a grading", flush=True)
        for line in outcome.exited:
            print(f"    exited by itself, started again: {line}", flush=True)
        if outcome.problems():
            bad.append(outcome.problems())
    print()
    print(table(rows))
    for problem in bad:
        print("\n" + problem, file=sys.stderr)
    if args.record:
        record(rows, args)
    return 1 if bad else 0


def record(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    command = f"./dev bench-faults --submissions {args.submissions} --kills {args.kills} --workers {args.workers} --outage {args.outage:g}"
    section = (
        f"\n## {dt.date.today().isoformat()}: fault injection (`{command}`)\n\n"
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end.\n"
        "Each run on a private PostgreSQL and redis-server; lease 10 s, sweep every 1 s, "
        "a queued row re-sent after 4 s. Recovery: end of the last fault to the last grading "
        "(it includes draining the backlog the burst left); extra: the run's total less the "
        "baseline's, what the faults cost the whole burst.\n\n"
        + table(rows)
        + "\n"
    )
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
        fh.write(section)
    print("\nappended to benchmarks/RESULTS.md")


if __name__ == "__main__":
    sys.exit(main())
