"""Per-submission cost of running student code three ways, measured in one run.

    ./dev bench-sandbox [--runs N] [--rounds R] [--assignment ID ...]

For a correct submission of each built-in assignment with all of its trials (the same job
each time, run back to back), prints the median wall-clock milliseconds of:
  in-process   exec the file and call every function in the grader's own process (the
               unsafe floor: no isolation at all)
  sandbox      SandboxRunner, jobs back to back (the zygote forks and confines the
               replacement for each used spare while the next job runs: the worst case)
  paced        SandboxRunner with --gap-ms (default 5) between jobs, as in a worker, where
               comparing results and writing them takes that long (the gap is not counted)
  fresh        SubprocessRunner: a fresh interpreter (python + NumPy import) per submission
and the ratios; then the CPU milliseconds per paced submission of the trusted parent
(its process time) and of the sandbox (bwrap, the zygote and its children, from /proc).
The four are measured in R interleaved rounds (each a 1/R share of every kind), so that a
shared machine speeding up or slowing down during the run moves them all alike, instead
of skewing the ratios of whichever kind happened to run in a slow minute.
Target on a 2-core machine: the sandbox adds at most 10 ms per submission over in-process
and is at least 15x cheaper than a fresh interpreter.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.grading_cost import SOLUTIONS, machine  # noqa: E402
from grader.runner import Call, Job, SubprocessRunner  # noqa: E402
from grader.sandbox import SandboxRunner  # noqa: E402
from grader.spec import load_builtin  # noqa: E402
from grader.trials import make_trials  # noqa: E402


def build_job(assignment_id: str) -> Job:
    assignment = load_builtin(assignment_id)
    source = (ROOT / "tests" / "submissions" / SOLUTIONS[assignment_id]).read_text()
    calls = [
        Call(fn.name, trial.args, 3.0, 2.0)
        for fn in assignment.functions
        for trial in make_trials(assignment, fn, 1)
    ]
    return Job(source, calls)


def in_process(job: Job) -> None:
    namespace: dict = {"__name__": "submission"}
    exec(compile(job.source, "submission.py", "exec"), namespace)
    for call in job.calls:
        namespace[call.function](*copy.deepcopy(call.args))


def timed(fn, runs: int, gap: float = 0.0) -> list[float]:
    samples = []
    for _ in range(runs):
        time.sleep(gap)
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its descendants, incl. the children they have reaped."""
    ticks, stack = 0, [pid]
    while stack:
        proc = stack.pop()
        try:
            stat = Path(f"/proc/{proc}/stat").read_text()
            ticks += sum(int(x) for x in stat[stat.rindex(")") + 2 :].split()[11:15])
            for task in os.listdir(f"/proc/{proc}/task"):
                stack += [int(c) for c in Path(f"/proc/{proc}/task/{task}/children").read_text().split()]
        except (OSError, ValueError):
            continue  # it exited meanwhile: its CPU went to its parent's reaped count
    return ticks / os.sysconf("SC_CLK_TCK")


def share(total: int, rounds: int, index: int) -> int:
    """Round `index`'s part of `total` runs split over `rounds` (the parts add up)."""
    return total * (index + 1) // rounds - total * index // rounds


def paced_cpu(sandbox: SandboxRunner, job: Job, runs: int, gap: float) -> tuple[list[float], float, float]:
    """Wall milliseconds of each paced run, and CPU milliseconds per run of the parent and
    of the sandbox's processes."""
    zygote = sandbox._zygote
    assert zygote is not None
    tree, own = tree_cpu_seconds(zygote.proc.pid), time.process_time()
    samples = timed(lambda: sandbox.run(job), runs, gap)
    time.sleep(0.05)  # the last child's exit
    assert sandbox._zygote is zygote, "the zygote was restarted during the run"
    parent = (time.process_time() - own) * 1000 / runs
    return samples, parent, (tree_cpu_seconds(zygote.proc.pid) - tree) * 1000 / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--assignment", nargs="*", default=sorted(SOLUTIONS), choices=sorted(SOLUTIONS))
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the runs are split into")
    args = parser.parse_args()
    if args.runs < 1 or not 1 <= args.rounds <= args.runs:
        parser.error("--runs must be at least 1 and --rounds between 1 and --runs")
    fresh_runs = max(5, args.runs // 4, args.rounds)
    print(f"machine: {machine()}")
    print(f"median of {args.runs} runs (fresh: {fresh_runs}) in {args.rounds} interleaved rounds; milliseconds per submission\n")
    print(
        f"{'job':<6} {'calls':>5} {'in-process':>11} {'sandbox':>9} {'p90':>7} {'paced':>7} {'fresh':>8} "
        f"{'added':>7} {'fresh/sandbox':>14} {'fresh/paced':>12} {'cpu: parent':>12} {'sandbox':>8}"
    )
    sandbox = SandboxRunner()
    fresh = SubprocessRunner()
    try:
        for assignment_id in args.assignment:
            job = build_job(assignment_id)
            report = sandbox.run(job)  # warm-up (the first also starts the zygote)
            assert all(c.status == "ok" for c in report.calls), [c.status for c in report.calls]
            in_process(job)
            results: dict[str, list[float]] = {"in-process": [], "sandbox": [], "paced": [], "fresh": []}
            parent_cpu = sandbox_cpu = 0.0
            for index in range(args.rounds):
                runs = share(args.runs, args.rounds, index)
                results["in-process"] += timed(lambda: in_process(job), runs)
                results["sandbox"] += timed(lambda: sandbox.run(job), runs)
                samples, parent, inside = paced_cpu(sandbox, job, runs, args.gap_ms / 1000)
                results["paced"] += samples
                parent_cpu += parent * runs / args.runs
                sandbox_cpu += inside * runs / args.runs
                results["fresh"] += timed(lambda: fresh.run(job), share(fresh_runs, args.rounds, index))
            med = {k: statistics.median(v) for k, v in results.items()}
            spread = sorted(results["sandbox"])
            p90 = spread[int(0.9 * (len(spread) - 1))]
            print(
                f"{assignment_id:<6} {len(job.calls):>5} {med['in-process']:>9.2f}   {med['sandbox']:>7.2f}  {p90:>6.2f} "
                f"{med['paced']:>7.2f} {med['fresh']:>8.2f} {med['sandbox'] - med['in-process']:>7.2f} "
                f"{med['fresh'] / med['sandbox']:>13.1f}x {med['fresh'] / med['paced']:>11.1f}x "
                f"{parent_cpu:>12.2f} {sandbox_cpu:>8.2f}"
            )
    finally:
        sandbox.close()
    print("\ntargets: the sandbox adds <= 10 ms per submission; fresh/sandbox >= 15x")


if __name__ == "__main__":
    main()
