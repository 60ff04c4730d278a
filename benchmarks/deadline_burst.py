"""A deadline burst against the real service: N submissions at once through the JSON API.

    ./dev bench-burst [--n 2000] [--workers 2] [--clients 32] [--students 200] [--compare]

Starts the stack of benchmarks/stack.py (a fresh PostgreSQL database on 127.0.0.1:5432,
a Redis queue of its own, gunicorn as in docker-compose.yml, one `grader worker` with
--workers grading processes), seeds a course with the four built-in assignments (no
submission limit) and --students students with API tokens, then POSTs N submissions to
/api/v1/submissions from --clients threads as fast as they go, each under its student's
token. The mix (--mix, default right=55,wrong=30,crashing=10,hostile=5) takes right and
wrong files from tests/submissions/, crashing and hostile ones from benchmarks/corpus/
(syntax error, exception at import or in a function; memory bomb, fork bomb, infinite loop).
The web app's per-user submission rate limit is raised for the run (GRADER_SUBMIT_RATE).

Prints the machine, then: accepted/s, graded/s (first accepted to last graded),
submit-to-graded latency p50/p95/p99 (client send time to the row's graded_at), counts by
final status, lost (accepted but never final) and double-scored (grade_count > 1) counts,
worker processes, wall time, and where the time goes (medians of HTTP accept, queue wait,
grading phases and worker overhead per submission).

--compare runs the same burst twice, each on a fresh stack: with the sandbox, then with the
fresh-interpreter baseline (GRADER_SANDBOX=insecure-subprocess, the project's loudly logged
development mode), and prints the ratios. The fork bomb is left out of both runs there: only
the sandbox stops it, and the baseline must not run one on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import DEFAULT_MIX, stop_cleanly_on_sigterm, machine, parse_mix, plan  # noqa: E402
from benchmarks.cpu import Snapshot, cpu_by_component  # noqa: E402
from benchmarks.load import Figures, burst, measure, report_lines, wait_final  # noqa: E402
from benchmarks.stack import BENCH_SUBMIT_RATE, Stack, StackError  # noqa: E402


def run_burst(
    n: int = 2000,
    workers: int = 2,
    clients: int = 32,
    students: int = 200,
    mix: Optional[dict[str, float]] = None,
    runner: str = "sandbox",
    web: str = "gunicorn",
    seed: int = 1,
    fork_bomb: bool = True,
    stall_timeout: float = 120.0,
    out: Any = print,
) -> Figures:
    """One burst on a fresh stack; the stack is gone when this returns."""
    items = plan(n, mix or DEFAULT_MIX, seed=seed, fork_bomb=fork_bomb)
    started = time.monotonic()
    with Stack(students=min(students, n), workers=workers, web=web, runner=runner) as stack:
        out(f"stack up in {time.monotonic() - started:.1f} s: {stack.url}, database {stack.db_name}, queue {stack.queue}, "
            f"{workers} worker process(es) (pool pids {stack.worker_pool_pids()}), runner {runner}, web {web}")
        before = Snapshot.take()
        sent = burst(stack, items, clients)
        accepted = sum(1 for s in sent if s.ticket.id is not None)
        done = wait_final(stack, accepted, stall_timeout)
        cpu = cpu_by_component(before, Snapshot.take())
        if not done:
            out(f"no submission became final for {stall_timeout:g} s: stopped waiting")
        figures = measure(stack, sent)
    figures.data["cpu_seconds"] = {k: round(v, 2) for k, v in cpu.items()}
    figures.data.update(workers=workers, clients=clients, students=min(students, n), runner=runner, web=web,
                        submit_rate=BENCH_SUBMIT_RATE, n=n, fork_bomb=fork_bomb)
    return figures


def compare_lines(sandbox: Figures, fresh: Figures) -> list[str]:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    s, f = sandbox.data, fresh.data
    lines = ["== side by side (same burst; sandbox vs fresh interpreter per submission)"]
    lines.append(f"graded/s: sandbox {s['graded_per_s']:.1f}, fresh {f['graded_per_s']:.1f}: sandbox is {ratio(s['graded_per_s'], f['graded_per_s'])} the throughput")
    for q in ("p50", "p95", "p99"):
        lines.append(f"latency {q}: sandbox {s['latency_s'][q]:.3f} s, fresh {f['latency_s'][q]:.3f} s: fresh/sandbox {ratio(f['latency_s'][q], s['latency_s'][q])}")
    gs, gf = s["profile_median_ms"]["grading (grade_bytes total)"], f["profile_median_ms"]["grading (grade_bytes total)"]
    lines.append(f"median grading per submission: sandbox {gs:.1f} ms, fresh {gf:.1f} ms: fresh/sandbox {ratio(gf, gs)}")
    lines.append(f"wall time: sandbox {s['wall_seconds']:.1f} s, fresh {f['wall_seconds']:.1f} s")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="submissions (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="grading processes (default 2)")
    parser.add_argument("--clients", type=int, default=32, help="client threads (default 32)")
    parser.add_argument("--students", type=int, default=200, help="student accounts, one token each (default 200)")
    parser.add_argument("--mix", help="e.g. right=55,wrong=30,crashing=10,hostile=5")
    parser.add_argument("--web", choices=["gunicorn", "waitress"], default="gunicorn")
    parser.add_argument("--runner", choices=["sandbox", "subprocess"], default="sandbox",
                        help="subprocess: the fresh-interpreter baseline (no fork bomb)")
    parser.add_argument("--compare", action="store_true", help="run with the sandbox and the baseline, and compare")
    parser.add_argument("--seed", type=int, default=1, help="the mix's shuffle")
    parser.add_argument("--stall-timeout", type=float, default=120.0,
                        help="stop waiting when no submission became final for this long (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.clients < 1 or args.students < 1:
        parser.error("--n, --workers, --clients and --students must be at least 1")
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))

    stop_cleanly_on_sigterm()
    print(f"machine: {machine()}")
    print(f"burst of {args.n}, mix {', '.join(f'{k} {v:.0%}' for k, v in mix.items())}, {args.clients} clients, "
          f"{min(args.students, args.n)} students, {args.workers} worker process(es); "
          f"per-user submit rate limit raised to {BENCH_SUBMIT_RATE} for the run")
    common = dict(n=args.n, workers=args.workers, clients=args.clients, students=args.students, mix=mix,
                  web=args.web, seed=args.seed, stall_timeout=args.stall_timeout)
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    ok = True
    if args.compare:
        runs = {}
        for runner in ("sandbox", "subprocess"):
            fig = run_burst(runner=runner, fork_bomb=False, **common)  # type: ignore[arg-type]
            print("\n".join(report_lines(fig, f"burst, runner {runner} (fork bomb left out)")), "\n")
            runs[runner] = fig
            ok = ok and fig["lost"] == 0 and fig["double_scored"] == 0
        print("\n".join(compare_lines(runs["sandbox"], runs["subprocess"])))
        results.update({k: v.data for k, v in runs.items()})
    else:
        fig = run_burst(runner=args.runner, fork_bomb=args.runner == "sandbox", **common)  # type: ignore[arg-type]
        print("\n".join(report_lines(fig, f"burst, runner {args.runner}")))
        results.update(fig.data)
        ok = fig["lost"] == 0 and fig["double_scored"] == 0
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StackError as exc:
        sys.exit(f"the service stack did not start: {exc}")
