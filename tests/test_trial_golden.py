"""Golden digests of the built-in assignments' trials.

A repro download rebuilds a trial from its stored seed years later, so every generated
value, and every answer the engine derives from it, must stay bit-identical across changes
to the engine, the trial generator or the program interpreter. A mismatch means a generated
value moved.

NumPy (AVX2, AVX-512 variants of exp, tanh, ...) and OpenBLAS (matmul kernels) choose
their code by CPU at run time, and the variants round differently in the last bit: digests
recorded on one CI machine failed on the next. So the digests are computed in a subprocess
with both pinned to what every x86-64 machine running NumPy 2.4 has: no SIMD dispatch above
NumPy's baseline, OpenBLAS's Nehalem kernels, one BLAS thread. Recorded that way from the
code as it stood before any speed work (the parent of 0fa12a5) and from the current code:
the two agreed, as they did unpinned on each machine. (So a repro download rebuilds the same
trial inputs anywhere, but an answer derived with matmul or exp is bit-identical only on
a machine that picks the same kernels; the comparison's tolerances absorb the difference.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from grader.mistakes import mutant_outputs
from grader.spec import Assignment, load_builtin
from grader.spec.model import Range
from grader.trials import Trial, _Distinct, _rng, derive, make_trials, objective_value

SEEDS = (0, 2**63 + 977, 6_004_799_503_160_661, -1)  # seeds of one and of two 32-bit words

# The same kernels on every machine (see the module docstring).
PINNED = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Nehalem",
    "OPENBLAS_NUM_THREADS": "1",
}

TRIALS = {
    "gates": "f188ad3c20eb3b28418f5f30f8268477048cb6b981d667b9f9fc6eb234a3275e",
    "vjp": "dee0c21edf2ae8f12a8972afb38be82c952ccce6937b02fd31bbad208de7ac9e",
    "mlp": "5e4e4cf717fa4e587e7ccacfc831bcb2e280f30c9e1b5ae012c1479e3e95de11",
    "bp4": "17d6d604f6fd5c7def53027a71eb86886262360c9c478e90970021937bba3bfa",
}

# Mutant answers, the upstream-ignored answers and the objective, on the same trials: they
# share the engine and interpreter, and mistake recognition compares them to submissions.
DERIVED = {
    "gates": "ce0236ca97e420eb1bce5441d5fae6439f2d1408a5b0538aed50f339a700c9b1",
    "vjp": "9db12885835531495eb29b2d028da4f4d85e0bda99782c3ae4ed08725de6de3d",
    "mlp": "a80b8ff4f63b4fd23acac9b7172196836da7f7064adddf7696d53ed39cbbf3c4",
    "bp4": "5025c35dbcb0d462c914a4b545485ccac2bace79a3640ef7b2bc783fae9250f7",
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


def digests(assignment: Assignment) -> tuple[str, str]:
    """(digest of the trials, digest of the answers derived from them)."""
    trials = _trials(assignment)
    records = [_trial_record(t) for fn in assignment.functions for seed in SEEDS for t in trials[fn.name][seed]]
    return _digest(records), _digest(_derived_record(assignment, trials))


@pytest.fixture(scope="module")
def pinned_digests() -> dict[str, list[str]]:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, __file__], env={**os.environ, **PINNED, "PYTHONPATH": str(root)},
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("aid", sorted(TRIALS))
def test_trials_and_derived_answers_are_bit_identical(pinned_digests: dict[str, list[str]], aid: str) -> None:
    trials, derived = pinned_digests[aid]
    assert trials == TRIALS[aid]
    assert derived == DERIVED[aid]


def test_the_pinned_kernels_are_the_ones_in_use() -> None:
    # The pins only help if NumPy and OpenBLAS honour them: a renamed variable would leave
    # the digests machine-dependent again without anyone noticing until the next machine.
    probe = (
        "import ctypes, numpy\n"
        "from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__\n"
        "lib = [l.split()[-1] for l in open('/proc/self/maps') if 'openblas' in l][0]\n"
        "name = ctypes.CDLL(lib).scipy_openblas_get_corename64_\n"
        "name.restype = ctypes.c_char_p\n"
        "print([f for f in __cpu_dispatch__ if __cpu_features__.get(f)], name().decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **PINNED}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "[] Nehalem"


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


if __name__ == "__main__":
    # Run by `pinned_digests` with the kernels pinned: one JSON object, aid -> [trials, derived].
    print(json.dumps({aid: digests(load_builtin(aid)) for aid in sorted(TRIALS)}))
