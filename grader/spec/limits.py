"""How large a spec may make its trials, and the check that a spec stays within that.

An uploaded spec is self-tested inside the instructor's web request, and every grading of
the assignment derives the expected answers of all its trials, so a spec that declares huge
dimensions or thousands of trials makes both slow (a 3000x3000 spec took 70 s to self-test).
Sizes are checked here from the declarations alone, before anything is generated: each
input's largest possible element count follows from the dimensions' upper bounds, the
shape variables' rank and size ranges, the layer sizes and the cases' fixed values.

Each number below says what the built-in assignments need: the limits leave room for
specs many times larger and refuse a runaway one with a reason. The README's spec guide
(`assignments/README.md`) lists them for authors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:  # the model imports the program module, which takes its caps from here
    from grader.spec.model import AssignmentSpec, Case, FunctionSpec, InputSpec, Limits, Range, Trials

# One input array of one trial: 4 M float64 = 32 MB. The largest built-in array is vjp's
# "a Jacobian would not fit in memory" trial of relu, S = [160, 240] (38,400 elements), 100x below;
# an instructor can still write a trial whose Jacobian is hundreds of GB.
MAX_ARRAY_ELEMENTS = 4_000_000
# All declared inputs of one trial (upstream gradients, shaped like forward values, come
# on top). vjp's largest trial (x, W, b at N=128, D=160, M=144) has 43,664.
MAX_TRIAL_ELEMENTS = 8_000_000
# All trials of one grading of one function: 128 MB of inputs, and the self-test holds
# three gradings' trials (inputs and expected answers) at once in the web process.
MAX_GRADING_ELEMENTS = 16_000_000
# random + cases (each case counted `repeat` times). The built-ins have at most 12.
MAX_TRIALS_PER_FUNCTION = 100
# Functions per assignment. The built-ins have at most 6 (gates).
MAX_FUNCTIONS = 50
# Known mistakes per function; each is re-derived on every trial of every grading. The
# built-ins have at most 7 (mlp).
MAX_MUTANTS_PER_FUNCTION = 30
# Syntax nodes in one forward definition (the function's, a mutant's or a constraint),
# and how deeply they nest (checking and evaluating recurse once or twice per level, so a
# long chain `x + x + ... + x` would otherwise overflow Python's stack). The built-ins'
# largest (mlp's mutants) has 91 nodes; the deepest (bp4) nests 9 levels.
MAX_PROGRAM_NODES = 2_000
MAX_PROGRAM_DEPTH = 50
# Largest size a random draw may pick (dimension ranges, shape-variable and layer sizes):
# drawing keeps every dimension distinct by listing the free sizes of the range. The
# built-ins draw up to 30; a single larger trial is a case with fixed dimensions.
MAX_DRAWN_SIZE = 10_000
# Rank of any array (shape lists, shape variables, case shapes). The built-ins reach 4.
MAX_RANK = 8
# Layer sizes of a layered network (`layers.count`, a case's `layers` or `layer_count`).
# bp4 has at most 5.
MAX_LAYERS = 64
# Evaluating a forward definition: iterations of one loop, and statements executed in all
# (nested loops multiply). bp4's loop runs at most 4 times.
MAX_LOOP_ITERATIONS = 10_000
MAX_EXECUTED_STATEMENTS = 100_000
# The largest `limits:` a spec may give the sandbox. job_seconds stays below the soft time
# limit a worker holds a submission for (240 s of the default 300 s lease), so a slow
# submission ends with the spec's own message rather than the worker's; it also bounds
# grading the reference solution in the self-test. The defaults are in grader/spec/load.py.
MAX_RUN_LIMITS = {"cpu_seconds": 60.0, "wall_seconds": 60.0, "import_seconds": 60.0, "job_seconds": 180.0, "memory_mb": 8192}


class LimitError(ValueError):
    """A spec whose trials would be larger than the limits above; says which and by how much."""


def fmt(n: int) -> str:
    return f"{n:,}"


def check_assignment_size(spec: AssignmentSpec) -> None:
    if len(spec.functions) > MAX_FUNCTIONS:
        raise LimitError(f"functions: the spec declares {len(spec.functions)} functions; the limit is {MAX_FUNCTIONS}")
    _check_run_limits(spec.limits)
    ranges = [(f"dims.{name}", r) for name, r in spec.dims.items()]
    ranges += [(f"shapes.{name}.size", var.size) for name, var in spec.shapes.items()]
    if spec.layers is not None:
        ranges.append(("layers.size", spec.layers.size))
        if spec.layers.count.high > MAX_LAYERS:
            raise LimitError(f"layers.count: up to {spec.layers.count.high} layer sizes; the limit is {MAX_LAYERS}")
    for where, rng in ranges:
        _check_drawn(where, rng)
    for name, var in spec.shapes.items():
        if var.rank.high > MAX_RANK:
            raise LimitError(f"shapes.{name}.rank: up to {var.rank.high} axes; the limit is {MAX_RANK}")


def _check_run_limits(limits: Limits) -> None:
    for name, value in limits.model_dump().items():
        cap = MAX_RUN_LIMITS[name]
        if value is not None and value > cap:
            unit = "MB" if name == "memory_mb" else "s"
            raise LimitError(f"limits.{name}: {value:g} {unit}; the limit is {cap:g} {unit}")


def _check_drawn(where: str, rng: Range) -> None:
    if rng.high > MAX_DRAWN_SIZE:
        raise LimitError(
            f"{where}: sizes are drawn from [{rng.low}, {rng.high}]; the largest size a random draw may pick is "
            f"{fmt(MAX_DRAWN_SIZE)} (for one large trial, add a case with fixed dimensions)"
        )


@dataclass(frozen=True)
class _Bound:
    """The most elements an input can have in one trial, and how that follows from the spec."""

    largest_array: int  # one array (for a layers input: the largest layer's)
    total: int  # all its arrays
    why: str


class _Sizes:
    """Upper bounds of the sizes one kind of trial (random, or one case) can draw."""

    def __init__(self, spec: AssignmentSpec, dims: dict[str, Range], case: Optional[Case]) -> None:
        self.spec = spec
        self.dims = dims
        self.case = case

    def dim(self, name: str) -> tuple[int, str]:
        case = self.case
        if case is not None and name in case.equal:
            preset = [case.dims[d] for d in case.equal if d in case.dims]
            if preset:
                return preset[0], f"{name} = {preset[0]}"
            high = min(self.dims[d].high for d in case.equal if d in self.dims)
            return high, f"{name} ≤ {high}"
        if case is not None and name in case.dims:
            return case.dims[name], f"{name} = {case.dims[name]}"
        if name in self.dims:
            return self.dims[name].high, f"{name} ≤ {self.dims[name].high}"
        layers = self.spec.layers
        assert layers is not None and name in ("n_first", "n_last"), name  # the loader checked the names
        if case is not None and case.layers:
            value = case.layers[0] if name == "n_first" else case.layers[-1]
            return value, f"{name} = {value}"
        return layers.size.high, f"{name} ≤ {layers.size.high}"

    def input(self, inp: InputSpec) -> _Bound:
        if inp.type in ("int", "float"):
            return _Bound(1, 1, "a single number")
        if isinstance(inp.shape, str):
            return self._shape_var(inp.shape)
        assert isinstance(inp.shape, list)
        if inp.type == "layers":
            return self._layers(inp.shape)
        size, parts = 1, []
        for ref in inp.shape:
            if isinstance(ref, int):
                size *= ref
            else:
                value, text = self.dim(ref)
                size *= value
                parts.append(text)
        parts = list(dict.fromkeys(parts))  # [D, D] names D once
        return _Bound(size, size, f"dims {', '.join(parts)}" if parts else "a fixed shape")

    def _shape_var(self, name: str) -> _Bound:
        if self.case is not None and name in self.case.shapes:
            fixed = self.case.shapes[name]
            size = math.prod(fixed)
            return _Bound(size, size, f"shape {name} = {fixed}")
        var = self.spec.shapes[name]
        size = var.size.high ** var.rank.high
        return _Bound(size, size, f"shape {name}: up to {var.rank.high} axes of size ≤ {var.size.high}")

    def _layers(self, shape: list[Union[int, str]]) -> _Bound:
        layers = self.spec.layers
        assert layers is not None
        sizes: Optional[list[int]] = list(self.case.layers) if self.case is not None and self.case.layers else None

        def array(n_in: int, n_out: int) -> tuple[int, list[str]]:
            size, parts = 1, []
            for ref in shape:
                if isinstance(ref, int):
                    size *= ref
                elif ref == "n_in":
                    size *= n_in
                elif ref == "n_out":
                    size *= n_out
                else:
                    value, text = self.dim(ref)
                    size *= value
                    parts.append(text)
            return size, parts

        if sizes is not None:
            per_layer = [array(sizes[k], sizes[k + 1])[0] for k in range(len(sizes) - 1)]
            extra = list(dict.fromkeys(array(1, 1)[1]))
            why = ", ".join([f"layers = {sizes}", *extra])
            return _Bound(max(per_layer), sum(per_layer), why)
        count = self.case.layer_count if self.case is not None and self.case.layer_count else layers.count.high
        largest, extra = array(layers.size.high, layers.size.high)
        extra = list(dict.fromkeys(extra))
        why = ", ".join([f"{count - 1} weight layers of sizes ≤ {layers.size.high}", *extra])
        return _Bound(largest, largest * (count - 1), why)


def check_function_size(spec: AssignmentSpec, fn: FunctionSpec, dims: dict[str, Range], inputs: dict[str, InputSpec], trials: Trials) -> None:
    """Refuse a function whose trials could exceed the limits; `dims` and `inputs` are the
    function's own (the assignment's merged with its overrides), as the loader resolved them."""
    _check_run_limits(fn.limits)
    for name, rng in fn.dims.items():
        _check_drawn(f"dims.{name}", rng)
    if len(fn.mutants) > MAX_MUTANTS_PER_FUNCTION:
        raise LimitError(f"mutants: {len(fn.mutants)} known mistakes; the limit is {MAX_MUTANTS_PER_FUNCTION} per function")
    count = trials.random + sum(c.repeat for c in trials.cases)
    if count > MAX_TRIALS_PER_FUNCTION:
        cases = sum(c.repeat for c in trials.cases)
        raise LimitError(
            f"trials: {count} trials per grading (random: {trials.random}, cases: {cases}); "
            f"the limit is {MAX_TRIALS_PER_FUNCTION} per function"
        )
    for name, inp in inputs.items():
        if isinstance(inp.shape, list) and len(inp.shape) > MAX_RANK:
            raise LimitError(f"inputs.{name}.shape: {len(inp.shape)} axes; the limit is {MAX_RANK}")
    kinds: list[tuple[Optional[Case], int]] = [(None, trials.random)] if trials.random else []
    kinds += [(case, case.repeat) for case in trials.cases]
    grading_total = 0
    for case, repeat in kinds:
        where = "a random trial" if case is None else f"trials.cases ({case.label!r})"
        _check_case_shape(case, where)
        sizes = _Sizes(spec, dims, case)
        bounds = {name: sizes.input(inp) for name, inp in inputs.items()}
        for name, bound in bounds.items():
            if bound.largest_array > MAX_ARRAY_ELEMENTS:
                prefix = "" if case is None else f"{where}: "
                which = "an array of input" if inputs[name].type == "layers" else "input"
                raise LimitError(
                    f"{prefix}{which} {name} has up to {fmt(bound.largest_array)} elements ({bound.why}); "
                    f"the limit is {fmt(MAX_ARRAY_ELEMENTS)} per array"
                )
        total = sum(b.total for b in bounds.values())
        if total > MAX_TRIAL_ELEMENTS:
            parts = ", ".join(f"{n}: {fmt(b.total)}" for n, b in bounds.items() if b.total > 1)
            raise LimitError(
                f"{where} has up to {fmt(total)} input elements in all ({parts}); "
                f"the limit is {fmt(MAX_TRIAL_ELEMENTS)} per trial"
            )
        grading_total += total * repeat
    if grading_total > MAX_GRADING_ELEMENTS:
        raise LimitError(
            f"trials: the {count} trials of one grading have up to {fmt(grading_total)} input elements in all; "
            f"the limit is {fmt(MAX_GRADING_ELEMENTS)} (use fewer trials or smaller dimensions)"
        )


def _check_case_shape(case: Optional[Case], where: str) -> None:
    if case is None:
        return
    for name, shape in case.shapes.items():
        if len(shape) > MAX_RANK:
            raise LimitError(f"{where}: shape {name} has {len(shape)} axes; the limit is {MAX_RANK}")
    count = len(case.layers) if case.layers else case.layer_count
    if count is not None and count > MAX_LAYERS:
        raise LimitError(f"{where}: {count} layer sizes; the limit is {MAX_LAYERS}")
