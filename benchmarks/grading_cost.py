"""Grading cost of one submission per assignment, split into its phases.

    ./dev bench [--repeats N]

For each built-in assignment, grades a correct solution from the test corpus N times with
the configured runner (the sandbox by default) and prints the median milliseconds of:
reference computation (trial generation + engine), student run (the runner), comparison,
and the total. Prints the
machine it ran on first, so figures from different machines are not mixed up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grader.grade import default_runner, grade_bytes  # noqa: E402
from grader.spec import load_builtin  # noqa: E402

SOLUTIONS = {
    "gates": "gates/correct_plain.py",
    "vjp": "vjp/correct_plain.py",
    "mlp": "mlp/correct_plain.py",
    "bp4": "bp4/correct_vectorised.py",
}
PHASES = ("reference_ms", "run_ms", "compare_ms", "total_ms")


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()} | {cpu} | {os.cpu_count()} cores | {platform.system()} {platform.release()} | "
        f"Python {platform.python_version()} | NumPy {np.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    runner = default_runner()
    print(f"runner: {type(runner).__name__}; median of {args.repeats} gradings (after one warm-up)\n")
    print(f"{'assignment':<10} {'trials':>6} {'reference':>10} {'student run':>12} {'comparison':>11} {'total':>8}")
    for aid, rel in SOLUTIONS.items():
        assignment = load_builtin(aid)
        data = (ROOT / "tests" / "submissions" / rel).read_bytes()
        samples: dict[str, list[float]] = {p: [] for p in PHASES}
        trials = 0
        grade_bytes(assignment, data, seed=999)  # warm-up: the first grading starts the sandbox
        for i in range(args.repeats):
            result = grade_bytes(assignment, data, seed=1000 + i)
            assert result["score"] == result["max_score"], (aid, result["score"])
            trials = sum(len(p["trials"]) for p in result["parts"])
            for phase in PHASES:
                samples[phase].append(result["timing"][phase])
        med = {p: statistics.median(v) for p, v in samples.items()}
        print(
            f"{aid:<10} {trials:>6} {med['reference_ms']:>8.1f}ms {med['run_ms']:>10.1f}ms "
            f"{med['compare_ms']:>9.1f}ms {med['total_ms']:>6.1f}ms"
        )


if __name__ == "__main__":
    main()
