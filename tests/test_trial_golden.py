"""Golden digests of the built-in assignments' trials.

A repro download rebuilds a trial from its stored seed years later, so every generated
value, and every answer the engine derives from it, must stay bit-identical across changes
to the engine, the trial generator or the program interpreter. The digests were computed
with the code as it stood before any speed work; a mismatch means a generated value moved.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from grader.mistakes import mutant_outputs
from grader.spec import Assignment
from grader.spec.model import Range
from grader.trials import Trial, _Distinct, _rng, derive, make_trials, objective_value

SEEDS = (0, 2**63 + 977, 6_004_799_503_160_661, -1)  # seeds of one and of two 32-bit words

TRIALS = {
    "gates": "ce8bf12f47f26b2c0d05a12d7a949cc7e6fa1814cd4e1df7763452f831f4f490",
    "vjp": "97f8ce8af6ecffabc96403c6daacb888f42243c90f91db7e7066938271c01a84",
    "mlp": "4d93342bcd9e97ad74e5d6f02bd81745e91324aa40f840e5f2686abac9082c9a",
    "bp4": "7afc926765c2c5e084355c30f78c80c12790c1a30a3b588e2f9ba35a8b15746c",
}

# Mutant answers, the upstream-ignored answers and the objective, on the same trials: they
# share the engine and interpreter, and mistake recognition compares them to submissions.
DERIVED = {
    "gates": "3562704f9a70b8bc88d572addaca2b6230458e4df15f1319e47aca4c846a5063",
    "vjp": "ba4ea0d7c4ffce040ad95cbc13ddceb9dff1353c8e2eb454c89851728ab0edd3",
    "mlp": "3eeb098e7ad3b62ad37242733ad82bc9c298197d25aab262c296fd0c0d3d4a92",
    "bp4": "b26dda5fb1be3cfc7d248b422c1bacc74d7b359221a92200a7ebfafa688d35c0",
}


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, np.ndarray):
        h.update(f"nd{value.dtype.str}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}[".encode())
        for v in value:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(f"dict{len(value)}{{".encode())
        for k, v in value.items():
            h.update(repr(k).encode())
            _feed(h, v)
        h.update(b"}")
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def _trial_record(t: Trial) -> list[Any]:
    return [
        t.function, t.index, t.label, t.hidden, t.dims, t.args, t.expected,
        t.arg_shapes, t.shapes, t.layers, t.inputs, t.upstream,
    ]


def _trials(assignment: Assignment) -> dict[str, dict[int, list[Trial]]]:
    return {fn.name: {seed: make_trials(assignment, fn, seed) for seed in SEEDS} for fn in assignment.functions}


def _derived_record(assignment: Assignment, trials: dict[str, dict[int, list[Trial]]]) -> list[Any]:
    out: list[Any] = []
    for fn in assignment.functions:
        for seed in SEEDS:
            for t in trials[fn.name][seed]:
                for m in range(len(fn.spec.mutants)):
                    try:
                        out.append(mutant_outputs(fn, m, t))
                    except (ValueError, ArithmeticError) as exc:
                        out.append(f"{type(exc).__name__}: {exc}")
                if fn.spec.upstream:
                    ones = {arg: np.ones_like(up) for arg, up in t.upstream.items()}
                    out.append(derive(fn, t, upstream=ones))
                else:
                    dims = dict(t.dims)
                    if t.layers:
                        dims["n_first"], dims["n_last"] = t.layers[0], t.layers[-1]
                    out.append(objective_value(fn, t.inputs, dims, t.upstream))
    return out


def _digest(value: Any) -> str:
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


@pytest.mark.parametrize("aid", sorted(TRIALS))
def test_trials_and_derived_answers_are_bit_identical(assignments: dict[str, Assignment], aid: str) -> None:
    trials = _trials(assignments[aid])
    records = [
        _trial_record(t) for fn in assignments[aid].functions for seed in SEEDS for t in trials[fn.name][seed]
    ]
    assert _digest(records) == TRIALS[aid]
    assert _digest(_derived_record(assignments[aid], trials)) == DERIVED[aid]


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**53 - 1, 2**63 - 1, 2**63, -1, -(2**40)])
def test_trial_generator_is_default_rng_of_the_seed_list(seed: int) -> None:
    """The generator is built from the seed's 32-bit words, as SeedSequence splits a list."""
    for tag in (0, 1, 2**32 - 1, 2_654_435_761):
        for index, attempt in ((0, 0), (53, 199)):
            ours = _rng(tag, seed, index, attempt)
            reference = np.random.default_rng(np.random.SeedSequence([seed & (2**63 - 1), tag, index, attempt]))
            assert ours.bit_generator.state == reference.bit_generator.state


def test_distinct_draws_match_generator_choice() -> None:
    for seed in range(300):
        for size in (2, 3, 7, 11, 29, 160):
            ours, reference = np.random.default_rng(seed), np.random.default_rng(seed)
            distinct = _Distinct(ours, [])
            drawn = [distinct.draw(Range(low=0, high=size + 2), "n") for _ in range(3)]
            expected = []
            for _ in range(3):
                choices = [n for n in range(2, size + 3) if n not in expected]
                expected.append(int(reference.choice(choices)))
            assert drawn == expected
            assert ours.bit_generator.state == reference.bit_generator.state
