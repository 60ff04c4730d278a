"""Per-submission cost of running student code three ways, measured in one run.

    ./dev bench-sandbox [--runs N] [--assignment ID ...]

For a correct submission of each built-in assignment with all of its trials (the same job
each time, run back to back), prints the median wall-clock milliseconds of:
  in-process   exec the file and call every function in the grader's own process (the
               unsafe floor: no isolation at all)
  sandbox      SandboxRunner, jobs back to back (the zygote forks and confines the
               replacement for each used spare while the next job runs: the worst case)
  paced        SandboxRunner with --gap-ms (default 5) between jobs, as in a worker, where
               comparing results and writing them takes that long (the gap is not counted)
  fresh        SubprocessRunner: a fresh interpreter (python + NumPy import) per submission
and the ratios. Target on a 2-core machine: the sandbox adds at most 10 ms per submission
over in-process and is at least 15x cheaper than a fresh interpreter.
"""

from __future__ import annotations

import argparse
import copy
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--assignment", nargs="*", default=sorted(SOLUTIONS), choices=sorted(SOLUTIONS))
    parser.add_argument("--gap-ms", type=float, default=5.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"median of {args.runs} runs (fresh: {max(5, args.runs // 4)}); milliseconds per submission\n")
    print(
        f"{'job':<6} {'calls':>5} {'in-process':>11} {'sandbox':>9} {'p90':>7} {'paced':>7} {'fresh':>8} "
        f"{'added':>7} {'fresh/sandbox':>14} {'fresh/paced':>12}"
    )
    sandbox = SandboxRunner()
    fresh = SubprocessRunner()
    try:
        for assignment_id in args.assignment:
            job = build_job(assignment_id)
            report = sandbox.run(job)  # warm-up (the first also starts the zygote)
            assert all(c.status == "ok" for c in report.calls), [c.status for c in report.calls]
            in_process(job)
            results = {
                "in-process": timed(lambda: in_process(job), args.runs),
                "sandbox": timed(lambda: sandbox.run(job), args.runs),
                "paced": timed(lambda: sandbox.run(job), args.runs, args.gap_ms / 1000),
                "fresh": timed(lambda: fresh.run(job), max(5, args.runs // 4)),
            }
            med = {k: statistics.median(v) for k, v in results.items()}
            spread = sorted(results["sandbox"])
            p90 = spread[int(0.9 * (len(spread) - 1))]
            print(
                f"{assignment_id:<6} {len(job.calls):>5} {med['in-process']:>9.2f}   {med['sandbox']:>7.2f}  {p90:>6.2f} "
                f"{med['paced']:>7.2f} {med['fresh']:>8.2f} {med['sandbox'] - med['in-process']:>7.2f} "
                f"{med['fresh'] / med['sandbox']:>13.1f}x {med['fresh'] / med['paced']:>11.1f}x"
            )
    finally:
        sandbox.close()
    print("\ntargets: the sandbox adds <= 10 ms per submission; fresh/sandbox >= 15x")


if __name__ == "__main__":
    main()
