"""What the benchmark scripts share: the machine description, percentiles, and the
submission mix (right, wrong, crashing and hostile files for the four built-in assignments).

The right and wrong files are the test corpus (`tests/submissions/`); the crashing and
hostile ones are in `benchmarks/corpus/` (whole files) or made here from a right file
(one function changed), so each kind exists for every assignment."""

from __future__ import annotations

import math
import random
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.grading_cost import SOLUTIONS, machine

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "tests" / "submissions"
CORPUS = Path(__file__).resolve().parent / "corpus"
RESULTS = Path(__file__).resolve().parent / "results"
ASSIGNMENTS = tuple(sorted(SOLUTIONS))

# The deadline mix of the issue: mostly right, many wrong, some crashing, a few hostile.
DEFAULT_MIX = {"right": 0.55, "wrong": 0.30, "crashing": 0.10, "hostile": 0.05}
KINDS = tuple(DEFAULT_MIX)

__all__ = ["machine", "percentile", "stop_cleanly_on_sigterm", "Item", "corpus", "plan", "parse_mix", "DEFAULT_MIX", "KINDS", "RESULTS"]


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the stack's `with` block
    still stops its processes and drops its database."""

    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Item:
    """One file to submit: its kind (right, wrong, crashing, hostile), the assignment, a
    name saying what it is, and its bytes."""

    kind: str
    assignment: str
    name: str
    data: bytes


def _first_function(source: str) -> re.Match[str]:
    found = re.search(r"^def ([a-zA-Z]\w*)\(.*\):\n", source, re.M)
    if found is None:
        raise ValueError("no public function in the solution file")
    return found


def _in_first_function(source: str, body: str) -> str:
    """`source` with `body` run at the start of its first public function."""
    found = _first_function(source)
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return source[: found.end()] + indented + source[found.end():]


def corpus(fork_bomb: bool = True) -> dict[tuple[str, str], list[Item]]:
    """Every file of the mix, by (kind, assignment). `fork_bomb=False` leaves the fork
    bomb out: only the sandbox stops it (seccomp); the fresh-interpreter baseline runs as
    this user with no process limit, and must not be given one on a shared machine."""
    items: dict[tuple[str, str], list[Item]] = {}
    for aid in ASSIGNMENTS:
        folder = SUBMISSIONS / aid
        right = [Item("right", aid, p.name, p.read_bytes()) for p in sorted(folder.glob("correct_*.py"))]
        wrong = [Item("wrong", aid, p.name, p.read_bytes()) for p in sorted(folder.glob("wrong_*.py"))]
        plain = (SUBMISSIONS / SOLUTIONS[aid]).read_text()
        crashing = [Item("crashing", aid, p.name, p.read_bytes()) for p in sorted((CORPUS / "crashing").glob("*.py"))]
        crashing.append(
            Item("crashing", aid, "raises_in_function", _in_first_function(plain, "raise ValueError('not done yet')").encode())
        )
        hostile = [
            Item("hostile", aid, p.name, p.read_bytes())
            for p in sorted((CORPUS / "hostile").glob("*.py"))
            if fork_bomb or "fork" not in p.name
        ]
        hostile.append(Item("hostile", aid, "infinite_loop_in_function", _in_first_function(plain, "while True:\n    pass").encode()))
        for kind, files in (("right", right), ("wrong", wrong), ("crashing", crashing), ("hostile", hostile)):
            if not files:
                raise ValueError(f"no {kind} files for {aid}")
            items[(kind, aid)] = files
    return items


def parse_mix(text: Optional[str]) -> dict[str, float]:
    """'right=55,wrong=30,crashing=10,hostile=5' (percentages or fractions) -> fractions."""
    if not text:
        return dict(DEFAULT_MIX)
    mix: dict[str, float] = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        kind = kind.strip()
        if kind not in KINDS:
            raise ValueError(f"--mix: unknown kind {kind!r} (use {', '.join(KINDS)})")
        try:
            mix[kind] = float(value)
        except ValueError:
            raise ValueError(f"--mix: {part!r} needs a number, e.g. right=55") from None
        if mix[kind] < 0:
            raise ValueError(f"--mix: {kind} cannot be negative")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("--mix: give at least one kind a positive share")
    return {kind: mix.get(kind, 0.0) / total for kind in KINDS}


def plan(n: int, mix: dict[str, float], seed: int = 1, fork_bomb: bool = True) -> list[Item]:
    """`n` submissions in the proportions of `mix` (exact counts, rounded); within a kind,
    every (assignment, file) pair in turn, in a shuffled but reproducible order."""
    files = corpus(fork_bomb=fork_bomb)
    counts = {kind: int(n * share) for kind, share in mix.items()}
    # Hand out what rounding down left over to the kinds with the largest remainders.
    for kind in sorted(mix, key=lambda k: n * mix[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[kind] += 1
    rng = random.Random(seed)
    chosen: list[Item] = []
    for kind in KINDS:
        pairs = [item for aid in ASSIGNMENTS for item in files[(kind, aid)]]
        rng.shuffle(pairs)
        chosen += [pairs[i % len(pairs)] for i in range(counts.get(kind, 0))]
    rng.shuffle(chosen)
    return chosen
