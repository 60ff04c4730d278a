"""Recognising known mistakes in a wrong output, in the trusted parent.

A wrong output is compared, on every trial where it failed, with
- the known-wrong variants ("mutants") its assignment declares per function in data
  (`mutants:` in spec.yaml: a replacement forward definition and/or a known-wrong VJP),
  derived by the engine on the same trial inputs, so a new assignment gets them too;
- assignment-independent relations: a constant ratio to the expected answer (a sign
  error, 2, 1/2, a dimension such as the batch size, its inverse), the transpose, an
  extra axis that should have been summed, the local gradient with the upstream gradient
  ignored;
- what the runner saw: an argument modified in place, running out of memory on the large
  trial while the others pass (a materialised Jacobian).
A mistake is named only when it explains every failing trial of that output, and only
failing outputs are examined, so a correct submission costs nothing and is never told of
one. Relations checked on hidden trials contribute only the mistake's name: `message` (with
dimension names or a constant) is shown only when a visible trial failed as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from grader.engine.ops import VJP_VARIANTS
from grader.spec.load import Function, LeafInfo
from grader.trials import Trial, derive

# Agreement needed to call two answers equal: loose enough for float32 submissions and for
# a different order of summation, tight enough that a coincidence is out of the question.
RTOL = 1e-5


@dataclass(frozen=True)
class Mistake:
    name: str  # short, safe to show for hidden trials
    message: str  # the explanation in plain words


@dataclass
class Observation:
    """One failing trial of one output: what came back (as an array, or None when it
    could not be read as one), why the runner or comparator failed it."""

    trial: Trial
    got: Any = None  # ndarray, list of ndarrays, or None
    changed_arg: Optional[str] = None  # the argument modified in place, if any
    out_of_memory: bool = False


@dataclass
class Recogniser:
    """Recognises mistakes for one function; caches mutant answers per trial, since one
    mutant usually explains several outputs."""

    fn: Function
    _cache: dict[tuple[str, int], Optional[list[Any]]] = field(default_factory=dict)

    def recognise(self, info: LeafInfo, observations: list[Observation], passed_trials: int) -> list[Mistake]:
        """The mistakes that explain every failing trial of one output (usually none or one)."""
        try:
            return self._recognise(info, observations, passed_trials)
        except (ValueError, ArithmeticError, TypeError, MemoryError):
            # Recognition is a courtesy: whatever a strange return value does to it, the
            # grade stands without it.
            return []

    def _recognise(self, info: LeafInfo, observations: list[Observation], passed_trials: int) -> list[Mistake]:
        if not observations:
            return []
        obs = observations
        if all(o.changed_arg for o in obs):
            arg = obs[0].changed_arg
            what = "the upstream gradient" if arg in self.fn.spec.upstream else "an input"
            return [
                Mistake(
                    f"{what} modified in place",
                    f"{what.capitalize()} `{arg}` was modified in place, so the caller's array changed. "
                    f"Compute into a new array (e.g. `{arg} * mask`, or `{arg}.copy()` first) instead of "
                    "assigning into it or using `*=`.",
                )
            ]
        if passed_trials and all(o.out_of_memory for o in obs):
            return [
                Mistake(
                    "Jacobian materialised",
                    "Every trial passed except the large one, where your code ran out of memory: it builds a "
                    "full Jacobian (or another intermediate as large as inputs x outputs). Compute the "
                    "vector-Jacobian product directly, e.g. `dout @ W.T`, never forming the Jacobian.",
                )
            ]
        if any(o.got is None for o in obs):
            return []
        if not all(np.all(np.isfinite(_flat(o.got))) for o in obs):
            return []  # NaN/inf is its own message, and no relation holds for it
        index = self.fn.leaves.index(info)
        expected = [o.trial.expected[index] for o in obs]
        got = [o.got for o in obs]
        found = self._mutants(index, obs, got, expected)
        if found:
            return found
        for check in (_transposed, _not_summed, _ratio):
            mistake = check(got, expected, obs)
            if mistake:
                return [mistake]
        if self.fn.spec.upstream:
            local = (
                derive(self.fn, o.trial, upstream={arg: np.ones_like(up) for arg, up in o.trial.upstream.items()})[index]
                for o in obs
            )
            if _explains(got, local, expected):
                names = ", ".join(f"`{a}`" for a in self.fn.spec.upstream)
                return [
                    Mistake(
                        "upstream gradient ignored",
                        f"This is the local gradient alone: the upstream gradient {names} was never multiplied "
                        "in. The chain rule multiplies the local gradient by the upstream one.",
                    )
                ]
        return []

    def _mutants(self, index: int, obs: list[Observation], got: list[Any], expected: list[Any]) -> list[Mistake]:
        return [
            Mistake(mutant.name, mutant.message)
            for m, mutant in enumerate(self.fn.spec.mutants)
            if _explains(got, self._mutant_answers(m, index, obs), expected)
        ]

    def _mutant_answers(self, m: int, index: int, obs: list[Observation]) -> Iterator[Any]:
        """Mutant `m`'s answer for output `index` on each trial in turn, derived when first
        asked for; it stops at a trial where the mutant cannot be evaluated."""
        for o in obs:
            key = (str(m), o.trial.index)
            if key not in self._cache:
                try:
                    self._cache[key] = mutant_outputs(self.fn, m, o.trial)
                except (ValueError, ArithmeticError, TypeError, MemoryError):
                    # A mutant that cannot be evaluated on this trial explains nothing, and
                    # only it: the others are still tried. (Mutants are derived lazily, so
                    # whether a later trial is reached must not change what is recognised.)
                    self._cache[key] = None
            cached = self._cache[key]
            if cached is None:
                return
            yield cached[index]


def mutant_outputs(fn: Function, m: int, trial: Trial) -> list[Any]:
    """The answers of `fn`'s mutant number `m` on `trial`, one per output, derived by the engine."""
    mutant = fn.spec.mutants[m]
    vjp = {op: VJP_VARIANTS[op][variant] for op, variant in mutant.vjp.items()}
    return derive(fn, trial, fn.mutant_programs[m], vjp or None, vjp_last_only=mutant.vjp_where == "last")


def differs(answers: list[Any], expected: list[Any]) -> bool:
    """Whether a mutant's answers differ from the expected ones in some output."""
    return not all(_close(a, e) for a, e in zip(answers, expected))


# --- relations ------------------------------------------------------------------------------


def _flat(value: Any) -> Optional[np.ndarray]:
    """A list output (one array per layer) as one vector, for relations over all its parts."""
    if isinstance(value, list):
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in value]) if value else np.zeros(0)
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _same_shapes(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(_same_shapes(x, y) for x, y in zip(a, b))
    return np.shape(a) == np.shape(b)


def _close(got: Any, want: Any) -> bool:
    if not _same_shapes(got, want):
        return False
    g, w = _flat(got), _flat(want)
    if g is None or w is None or w.size == 0 or not np.isfinite(g).all():
        return False
    # The floor lets an all-zero candidate (e.g. a layer whose ReLUs are all off) match.
    scale = max(float(np.abs(w).max()), 1e-9)
    return float(np.abs(g - w).max()) <= RTOL * scale


def _explains(got: list[Any], candidates: Iterable[Any], expected: list[Any]) -> bool:
    """`got` equals the candidate on every trial, and the candidate is itself wrong on at
    least one of them (else it says nothing about the mistake). Candidates are drawn one
    trial at a time and the first miss decides, so the rest are never derived: deriving
    one costs a forward and a backward pass."""
    matched = []
    for g, c in zip(got, candidates):
        if not _close(g, c):
            return False
        matched.append(c)
    return len(matched) == len(got) and not all(_close(c, e) for c, e in zip(matched, expected))


def _visible(obs: list[Observation]) -> bool:
    return any(not o.trial.hidden for o in obs)


def _transposed(got: list[Any], expected: list[Any], obs: list[Observation]) -> Optional[Mistake]:
    if any(isinstance(e, list) or np.ndim(e) != 2 for e in expected):
        return None
    if not all(_close(g, np.transpose(e)) for g, e in zip(got, expected)):
        return None
    if all(np.shape(e)[0] == np.shape(e)[1] for e in expected):
        return Mistake("transposed", "This is the right answer transposed (the matrices here are square, so the shape could not show it). Check the order of the factors in the matrix product.")
    return Mistake("transposed", "This is the right answer transposed: its values are right but rows and columns are swapped. Check the order of the factors in the matrix product.")


def _not_summed(got: list[Any], expected: list[Any], obs: list[Observation]) -> Optional[Mistake]:
    for g, e in zip(got, expected):
        if isinstance(e, list) or isinstance(g, list):
            return None
        g = np.asarray(g)
        if g.ndim != np.ndim(e) + 1 or g.shape[1:] != np.shape(e) or not _close(g.sum(axis=0), e):
            return None
    return Mistake(
        "not summed over the batch",
        "It keeps one row per example: summed over the first axis (the batch) it is right. "
        "A parameter shared by every example gets the sum of their gradients, e.g. `dout.sum(axis=0)`.",
    )


def _ratio(got: list[Any], expected: list[Any], obs: list[Observation]) -> Optional[Mistake]:
    ratios = []
    for g, e in zip(got, expected):
        if not _same_shapes(g, e):
            return None
        gf, ef = _flat(g), _flat(e)
        denom = float(ef @ ef)
        if denom == 0.0:
            return None
        c = float(gf @ ef) / denom
        if abs(c) < 1e-12 or not _close(g, _scale(e, c)):
            return None
        ratios.append(c)

    def near(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-6 * max(abs(b), 1.0)

    if all(near(c, -1.0) for c in ratios):
        return Mistake("sign error", "It has the opposite sign: a minus sign is missing or one too many.")
    if all(near(c, 2.0) for c in ratios):
        return Mistake("a factor of 2", "It is twice the right answer: a factor of 2 too many (e.g. counted a term twice, or a derivative of x**2 / 2 taken as 2x).")
    if all(near(c, 0.5) for c in ratios):
        return Mistake("a factor of 1/2", "It is half the right answer: a factor of 2 is missing (e.g. the derivative of x**2 is 2x).")
    dims = [d for d in obs[0].trial.dims if all(o.trial.dims.get(d, 1) > 1 for o in obs)]
    for d in dims:
        if all(near(c, float(o.trial.dims[d])) for c, o in zip(ratios, obs)):
            return Mistake(
                f"summed instead of averaged over {d}",
                f"It is {d} times the right answer: summed over the {d} examples where the average is "
                f"wanted (divide by {d}).",
            )
        if all(near(c, 1.0 / o.trial.dims[d]) for c, o in zip(ratios, obs)):
            return Mistake(
                f"averaged over {d} instead of summed, or averaged twice",
                f"It is the right answer divided by {d}: averaged over {d} where a sum is wanted, or averaged twice.",
            )
    if all(near(c, ratios[0]) for c in ratios):
        shown = f" ({ratios[0]:.6g})" if _visible(obs) else ""
        return Mistake("a constant factor", f"It is the right answer times a constant factor{shown}: look for a stray constant.")
    return None


def _scale(e: Any, c: float) -> Any:
    if isinstance(e, list):
        return [c * np.asarray(x) for x in e]
    return c * np.asarray(e)
