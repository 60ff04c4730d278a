"""Seeded trial generation and the engine-derived expected answers.

A trial is fully determined by (assignment id, assignment version, submission seed,
function, trial index): re-running `make_trial` with those reproduces it bit for bit.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from grader.engine import OPS, Tensor, apply, backward
from grader.spec.load import Assignment, Function
from grader.spec.model import AssignmentSpec, Case, InputSpec, Range
from grader.spec.program import Program, ProgramError

MAX_CONSTRAINT_ATTEMPTS = 200


class TrialError(ValueError):
    """The spec cannot produce this trial (e.g. a constraint that never holds)."""


@dataclass
class Trial:
    function: str
    index: int
    label: str
    hidden: bool
    dims: dict[str, int]  # the named dimensions drawn (shape variables and layer sizes are in shapes/layers)
    args: list[Any]  # what the student's function receives, in argument order
    expected: list[Any]  # one per graded output (LeafInfo order): ndarray or list of ndarrays
    arg_shapes: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # shape variables drawn
    layers: Optional[list[int]] = None
    # Parent-side only, for self-tests: the generated inputs and the upstream gradients.
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    upstream: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """A one-line, student-facing description of the trial's shapes."""
        parts = []
        for name, shape in self.arg_shapes.items():
            if isinstance(shape, list):
                parts.append(f"{name}: {len(shape)} arrays")
            elif shape is None:
                parts.append(f"{name}: scalar")
            else:
                parts.append(f"{name} {fmt_shape(shape)}")
        return ", ".join(parts)


def fmt_shape(shape: tuple[int, ...]) -> str:
    """A shape as Python writes a tuple: (3,), (2, 5), ()."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(n) for n in shape) + ")"


@dataclass(frozen=True)
class TrialPlan:
    label: str
    hidden: bool
    case: Optional[Case]


def plan(fn: Function) -> list[TrialPlan]:
    """Visible random trials, then the edge cases, then the hidden random trials."""
    t = fn.trials
    visible = t.random - t.hidden
    # Plans are immutable, so repeated trials share one (a frozen dataclass is slow to build).
    plans = [TrialPlan("random shapes, all dimensions distinct", False, None)] * visible
    for case in t.cases:
        plans += [TrialPlan(case.label, case.hidden, case)] * case.repeat
    plans += [TrialPlan("random shapes, all dimensions distinct", True, None)] * t.hidden
    return plans


def _tag(assignment: Assignment, fn: Function) -> int:
    return zlib.crc32(f"{assignment.id}\x00{assignment.spec.version}\x00{fn.name}".encode())


def _rng(tag: int, seed: int, index: int, attempt: int) -> np.random.Generator:
    """The generator of one attempt at one trial: every value of the trial comes from it.

    It is default_rng(SeedSequence([seed & (2**63 - 1), tag, index, attempt])), bit for bit.
    SeedSequence splits each int of such a list into little-endian 32-bit words; handed
    those words as a uint32 array it skips its slow per-int coercion. tag is a CRC-32 and
    index and attempt are small, so each of them is one word.
    """
    seed &= 2**63 - 1
    low, high = seed & 0xFFFFFFFF, seed >> 32
    words = [low, high, tag, index, attempt] if high else [low, tag, index, attempt]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(np.array(words, dtype=np.uint32))))


@dataclass(frozen=True)
class _Static:
    """What every trial of one function reads from its spec, worked out once per function."""

    spec: AssignmentSpec
    tag: int
    used_dims: tuple[str, ...]
    used_shapes: tuple[str, ...]
    uses_layers: bool

    @classmethod
    def of(cls, assignment: Assignment, fn: Function) -> _Static:
        return cls(assignment.spec, _tag(assignment, fn), tuple(_used_dims(fn)), tuple(_used_shapes(fn)), _uses_layers(fn))


def make_trials(assignment: Assignment, fn: Function, seed: int) -> list[Trial]:
    static = _Static.of(assignment, fn)
    return [_make_trial(static, fn, seed, i, p) for i, p in enumerate(plan(fn))]


def make_trial(assignment: Assignment, fn: Function, seed: int, index: int, trial_plan: TrialPlan) -> Trial:
    return _make_trial(_Static.of(assignment, fn), fn, seed, index, trial_plan)


def _make_trial(static: _Static, fn: Function, seed: int, index: int, trial_plan: TrialPlan) -> Trial:
    last_violation = ""
    for attempt in range(MAX_CONSTRAINT_ATTEMPTS):
        rng = _rng(static.tag, seed, index, attempt)
        drawn = _draw_dims(static, fn, trial_plan.case, rng)
        values = {name: _generate(name, inp, drawn, rng) for name, inp in fn.inputs.items()}
        _repair(fn, values)
        env = _to_env(values, drawn.dims)
        try:
            env = fn.program.run(env)
        except ProgramError as exc:
            raise TrialError(f"{fn.name}: forward failed on trial {index}: {exc}") from None
        violation = _violated(fn, env)
        if violation is None:
            return _finish(fn, index, trial_plan, drawn, values, env, rng)
        last_violation = violation
    raise TrialError(
        f"{fn.name}: trial {index} ({trial_plan.label}): constraint {last_violation} still fails "
        f"after {MAX_CONSTRAINT_ATTEMPTS} draws; widen the distributions or relax the margin"
    )


# --- dimensions ------------------------------------------------------------------------


@dataclass
class Drawn:
    dims: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    layers: Optional[list[int]]


def _used_dims(fn: Function) -> list[str]:
    used: list[str] = []
    for inp in fn.inputs.values():
        refs = list(inp.shape) if isinstance(inp.shape, list) else []
        refs += list(inp.range or ())
        for ref in refs:
            if isinstance(ref, str) and ref in fn.dims and ref not in used:
                used.append(ref)
    return used


def _used_shapes(fn: Function) -> list[str]:
    return sorted({inp.shape for inp in fn.inputs.values() if isinstance(inp.shape, str)})


def _uses_layers(fn: Function) -> bool:
    return any(
        inp.type == "layers" or (isinstance(inp.shape, list) and {"n_first", "n_last"} & set(map(str, inp.shape)))
        for inp in fn.inputs.values()
    )


class _Distinct:
    """Draws sizes so that every dimension of a trial differs from every other one.

    A transposed or mis-broadcast gradient then has the wrong shape or wrong values instead
    of passing by coincidence. Sizes of 1 are left to the edge cases, which set them on
    purpose, because a size-1 axis broadcasts and hides mistakes.
    """

    def __init__(self, rng: np.random.Generator, fixed: list[int]) -> None:
        self.rng = rng
        self.used = set(fixed)

    def draw(self, rng_range: Range, what: str) -> int:
        low = max(rng_range.low, 2) if rng_range.high >= 2 else rng_range.low
        choices = [n for n in range(low, rng_range.high + 1) if n not in self.used]
        if not choices:
            raise TrialError(
                f"cannot draw {what} distinct from the other dimensions within "
                f"[{rng_range.low}, {rng_range.high}]; widen the ranges"
            )
        # Generator.choice on a list draws integers(len) and indexes: the same stream,
        # without converting the list to an array.
        value = choices[int(self.rng.integers(len(choices)))]
        self.used.add(value)
        return value


def _draw_dims(static: _Static, fn: Function, case: Optional[Case], rng: np.random.Generator) -> Drawn:
    spec = static.spec
    fixed = dict(case.dims) if case else {}
    fixed_shapes = {k: tuple(v) for k, v in case.shapes.items()} if case else {}
    fixed_values = list(fixed.values()) + [n for s in fixed_shapes.values() for n in s]
    if case and case.layers:
        fixed_values += case.layers
    distinct = _Distinct(rng, fixed_values)

    dims: dict[str, int] = {}
    groups = [list(case.equal)] if case and case.equal else []
    for group in groups:
        lo = max(fn.dims[d].low for d in group)
        hi = min(fn.dims[d].high for d in group)
        if lo > hi:
            raise TrialError(f"dimensions {', '.join(group)} cannot be equal: their ranges do not overlap")
        preset = [fixed[d] for d in group if d in fixed]
        value = preset[0] if preset else distinct.draw(Range(low=lo, high=hi), "/".join(group))
        for d in group:
            dims[d] = value
    for name in static.used_dims:
        if name in dims:
            continue
        dims[name] = fixed[name] if name in fixed else distinct.draw(fn.dims[name], f"dimension {name}")

    shapes: dict[str, tuple[int, ...]] = {}
    for name in static.used_shapes:
        if name in fixed_shapes:
            shapes[name] = fixed_shapes[name]
            continue
        var = spec.shapes[name]
        rank = int(rng.integers(var.rank.low, var.rank.high + 1))
        shapes[name] = tuple(distinct.draw(var.size, f"a dimension of shape {name}") for _ in range(rank))

    layers: Optional[list[int]] = None
    if static.uses_layers:
        assert spec.layers is not None
        if case and case.layers:
            layers = list(case.layers)
        else:
            count = case.layer_count if case and case.layer_count else None
            if count is None:
                count = int(rng.integers(spec.layers.count.low, spec.layers.count.high + 1))
            layers = [distinct.draw(spec.layers.size, "a layer size") for _ in range(count)]
        dims["n_first"], dims["n_last"] = layers[0], layers[-1]
    return Drawn(dims, shapes, layers)


# --- values ----------------------------------------------------------------------------


def _resolve_shape(inp: InputSpec, drawn: Drawn, layer: Optional[int] = None) -> tuple[int, ...]:
    if isinstance(inp.shape, str):
        return drawn.shapes[inp.shape]
    out: list[int] = []
    for ref in inp.shape or []:
        if isinstance(ref, int):
            out.append(ref)
        elif ref in ("n_in", "n_out"):
            assert drawn.layers is not None and layer is not None
            out.append(drawn.layers[layer] if ref == "n_in" else drawn.layers[layer + 1])
        else:
            out.append(drawn.dims[ref])
    return tuple(out)


def _sample(inp: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if inp.dist.uniform is not None:
        return rng.uniform(inp.dist.uniform.low, inp.dist.uniform.high, size=shape)
    assert inp.dist.normal is not None
    return rng.normal(inp.dist.normal.mean, inp.dist.normal.std, size=shape)


def _generate(name: str, inp: InputSpec, drawn: Drawn, rng: np.random.Generator) -> Any:
    if inp.type == "int":
        assert inp.range is not None
        low, high = (r if isinstance(r, int) else drawn.dims[r] for r in inp.range)
        if high <= low:
            raise TrialError(f"input {name}: empty integer range [{low}, {high})")
        return int(rng.integers(low, high))
    if inp.type == "float":
        return float(_sample(inp, (), rng))
    if inp.type == "layers":
        assert drawn.layers is not None
        return [_sample(inp, _resolve_shape(inp, drawn, layer), rng) for layer in range(len(drawn.layers) - 1)]
    return np.asarray(_sample(inp, _resolve_shape(inp, drawn), rng), dtype=np.float64)


# Masks are tested with np.count_nonzero rather than .any()/.all(): the same answer, but
# a ufunc reduction costs several times more than the test itself on a trial's small arrays.


def _repair(fn: Function, values: dict[str, Any]) -> None:
    """Move inputs out of a constraint's forbidden band where that is a direct edit.

    Redrawing a large array until no element is within 1e-3 of a ReLU kink would take
    forever, but nudging those few elements keeps the distribution almost unchanged.
    """
    for constraint in fn.repairs:
        target, other = constraint.target, constraint.other
        base = values[other] if other else 0.0
        current = values[target]
        if not isinstance(current, np.ndarray):
            continue
        offset = current - base - constraint.away_from
        bad = np.abs(offset) < constraint.margin
        if not np.count_nonzero(bad):
            continue
        if other is None and current.ndim and current.dtype == np.float64:
            # The same arithmetic on the few elements in the band only: a large input has
            # tens of thousands of elements and a handful to move.
            near = offset[bad]
            fixed = current.copy()
            fixed[bad] = base + constraint.away_from + np.where(near >= 0, 1.0, -1.0) * (1.5 * constraint.margin + np.abs(near))
            values[target] = fixed
            continue
        sign = np.where(offset >= 0, 1.0, -1.0)
        fixed = base + constraint.away_from + sign * (1.5 * constraint.margin + np.abs(offset))
        values[target] = np.where(bad, fixed, current)


def _to_env(values: dict[str, Any], dims: dict[str, int]) -> dict[str, Any]:
    env: dict[str, Any] = dict(dims)
    for name, value in values.items():
        if isinstance(value, list):
            env[name] = [Tensor(v) for v in value]
        elif isinstance(value, int):
            env[name] = value
        else:
            env[name] = Tensor(value)
    return env


def _violated(fn: Function, env: dict[str, Any]) -> Optional[str]:
    for constraint, expr in zip(fn.spec.constraints, fn.constraint_exprs):
        value = fn.program.evaluate(expr, env)
        array = value.value if isinstance(value, Tensor) else np.asarray(value, dtype=np.float64)
        if np.count_nonzero(np.abs(array - constraint.away_from) < constraint.margin):
            return f"|{constraint.expr} - {constraint.away_from:g}| >= {constraint.margin:g}"
    return None


def _finish(
    fn: Function,
    index: int,
    trial_plan: TrialPlan,
    drawn: Drawn,
    values: dict[str, Any],
    env: dict[str, Any],
    rng: np.random.Generator,
) -> Trial:
    spec = fn.spec
    upstream = {arg: rng.normal(size=_node(env, node).shape) for arg, node in spec.upstream.items()}
    objective = _objective(fn, env, upstream)
    grads = backward(objective) if objective is not None else None

    expected: list[Any] = []
    for info in fn.leaves:
        target = env[info.leaf.target]
        if info.leaf.grad:
            assert grads is not None
            expected.append([grads[t] for t in target] if isinstance(target, list) else grads[_as_tensor(target)])
        else:
            expected.append(_plain(target))
        _check_finite(fn, index, info.label, expected[-1])

    args: list[Any] = []
    arg_shapes: dict[str, Any] = {}
    for name in spec.args:
        if name in upstream:
            value: Any = upstream[name]
        elif name in values:
            value = values[name]
        else:
            value = _plain(env[name])
        args.append(value)
        arg_shapes[name] = _shape_of(value)
    dims = {k: v for k, v in drawn.dims.items() if k not in ("n_first", "n_last")}
    return Trial(
        function=fn.name,
        index=index,
        label=trial_plan.label,
        hidden=trial_plan.hidden,
        dims=dims,
        args=args,
        expected=expected,
        arg_shapes=arg_shapes,
        shapes=drawn.shapes,
        layers=drawn.layers,
        inputs=values,
        upstream=upstream,
    )


def _objective(fn: Function, env: dict[str, Any], upstream: dict[str, np.ndarray]) -> Optional[Tensor]:
    """The scalar whose gradients are graded: sum(node * upstream) over the upstream
    arguments, or sum(objective)."""
    objective: Optional[Tensor] = None
    for arg, node in fn.spec.upstream.items():
        part = apply(OPS["sum"], _node(env, node) * upstream[arg])
        objective = part if objective is None else objective + part
    if fn.spec.objective is not None:
        out = _node(env, fn.spec.objective)
        objective = out if out.ndim == 0 else apply(OPS["sum"], out)
    return objective


def derive(
    fn: Function,
    trial: Trial,
    program: Optional[Program] = None,
    vjp: Optional[dict[str, Any]] = None,
    upstream: Optional[dict[str, np.ndarray]] = None,
    vjp_last_only: bool = False,
) -> list[Any]:
    """The function's outputs on `trial`'s inputs, derived from another forward program,
    with some VJPs replaced, or with other upstream gradients: the answers of a known
    mistake, to recognise it in a wrong submission. One entry per output (LeafInfo order)."""
    dims = dict(trial.dims)
    if trial.layers:
        dims["n_first"], dims["n_last"] = trial.layers[0], trial.layers[-1]
    env = (program or fn.program).run(_to_env(trial.inputs, dims))
    objective = _objective(fn, env, trial.upstream if upstream is None else upstream)
    if vjp and vjp_last_only and objective is not None:
        vjp = {name: _only_last(objective, name, rule) for name, rule in vjp.items()}
    grads = backward(objective, overrides=vjp) if objective is not None else None
    out: list[Any] = []
    for info in fn.leaves:
        target = env[info.leaf.target]
        if info.leaf.grad:
            assert grads is not None
            out.append([grads[t] for t in target] if isinstance(target, list) else grads[_as_tensor(target)])
        else:
            out.append(_plain(target))
    return out


def _only_last(objective: Tensor, op_name: str, rule: Any) -> Any:
    """`rule` for the application of `op_name` nearest the objective, the op's own VJP elsewhere."""
    from grader.engine.tensor import topological_order

    nodes = [n for n in topological_order(objective) if n.op is not None and n.op.name == op_name]
    last = nodes[-1] if nodes else None

    def vjp(g: np.ndarray, node: Tensor) -> Any:
        return rule(g, node) if node is last else node.op.vjp(g, node)

    return vjp


def objective_value(fn: Function, inputs: dict[str, Any], dims: dict[str, int], upstream: dict[str, np.ndarray]) -> float:
    """The objective re-evaluated on (perturbed) inputs, for finite-difference checks."""
    env = fn.program.run(_to_env(inputs, dims))
    objective = _objective(fn, env, upstream)
    if objective is None:
        raise TrialError(f"{fn.name} has no objective to differentiate")
    return float(objective.value)


def _node(env: dict[str, Any], name: str) -> Tensor:
    value = env[name]
    if not isinstance(value, Tensor):
        raise TrialError(f"{name!r} is not an array value, so it has no upstream gradient")
    return value


def _as_tensor(value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TrialError("a gradient was asked of a value that is not an array")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _shape_of(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.shape
    if isinstance(value, list):
        return [_shape_of(v) for v in value]
    return None


def _check_finite(fn: Function, index: int, label: str, value: Any) -> None:
    arrays = value if isinstance(value, list) else [value]
    for array in arrays:
        finite = np.isfinite(array)
        if np.count_nonzero(finite) != finite.size:
            raise TrialError(f"{fn.name}: expected {label} on trial {index} is not finite; adjust the distributions")
