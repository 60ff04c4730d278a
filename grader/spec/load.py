"""Loading an assignment folder and checking what the schema alone cannot: that every name
a function uses is defined, that dimensions exist, that outputs can be derived."""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import yaml
from pydantic import ValidationError

from grader.spec.model import (
    LAYER_DIMS,
    AssignmentSpec,
    DictReturn,
    FunctionSpec,
    InputSpec,
    Leaf,
    Limits,
    Range,
    ReturnSpec,
    SeqReturn,
    Trials,
)
from grader.spec.program import Program, ProgramError
from grader.spec.limits import LimitError, check_assignment_size, check_function_size

SPEC_FILE = "spec.yaml"
MAX_SPEC_BYTES = 1 << 20

DEFAULT_LIMITS = Limits(cpu_seconds=2.0, wall_seconds=3.0, memory_mb=512, import_seconds=5.0, job_seconds=60.0)

PathPart = Union[int, str]


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the field and what is wrong."""


@dataclass(frozen=True)
class LeafInfo:
    """One graded output of a function, with where it sits in the returned structure."""

    path: tuple[PathPart, ...]
    leaf: Leaf
    points: float

    @property
    def label(self) -> str:
        """The output's name in feedback: its own `name`, else its dict key, else d<target>."""
        if self.leaf.name:
            return self.leaf.name
        if self.path and isinstance(self.path[-1], str):
            return self.path[-1]
        return self.leaf.label

    @property
    def where(self) -> str:
        """How to find it in the return value, e.g. `[1][0]` or `["W1"]`; empty for a bare value."""
        return "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in self.path)


@dataclass(frozen=True)
class Repair:
    """A constraint met by editing an input: `target` (minus `other`) kept away from a value."""

    target: str
    other: Union[str, None]
    away_from: float
    margin: float


@dataclass
class Function:
    """A function spec with everything resolved that trials and grading need."""

    spec: FunctionSpec
    index: int
    program: Program
    inputs: dict[str, InputSpec]  # only the inputs this function uses, in declaration order
    dims: dict[str, Range]
    leaves: list[LeafInfo]
    trials: Trials
    limits: Limits
    repairs: list[Repair] = field(default_factory=list)
    constraint_exprs: list[ast.expr] = field(default_factory=list)  # parsed once, evaluated per trial
    mutant_programs: list[Program] = field(default_factory=list)  # per spec.mutants; the forward if none given

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Assignment:
    spec: AssignmentSpec
    folder: Path
    functions: list[Function] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def max_score(self) -> float:
        return sum(f.spec.points for f in self.functions)

    def function(self, name: str) -> Function:
        for fn in self.functions:
            if fn.name == name:
                return fn
        raise KeyError(name)

    def read_text(self, which: str) -> str:
        """The handout or starter file named by the spec."""
        return (self.folder / getattr(self.spec, which)).read_text(encoding="utf-8")


def builtin_dir() -> Path:
    """Where the built-in assignments live (overridable for deployments)."""
    configured = os.environ.get("GRADER_ASSIGNMENTS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "assignments"


def builtin_ids() -> list[str]:
    root = builtin_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / SPEC_FILE).is_file())


def load_builtin(assignment_id: str) -> Assignment:
    if assignment_id not in builtin_ids():
        known = ", ".join(builtin_ids()) or "none"
        raise SpecError(f"unknown assignment {assignment_id!r} (known: {known})")
    return load_folder(builtin_dir() / assignment_id)


def load_folder(folder: Union[str, Path]) -> Assignment:
    folder = Path(folder)
    path = folder / SPEC_FILE
    if not path.is_file():
        raise SpecError(f"{folder}: no {SPEC_FILE} in this folder")
    raw = path.read_bytes()
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    assignment = parse_spec(data, source=str(path))
    assignment.folder = folder
    for which in ("handout", "starter"):
        name = getattr(assignment.spec, which)
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents or not target.is_file():
            raise SpecError(f"{path}: {which}: file {name!r} is missing from the assignment folder")
    return assignment


def parse_spec(data: Any, source: str = "spec") -> Assignment:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping of fields, got {type(data).__name__}")
    try:
        spec = AssignmentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: invalid spec:\n" + _describe(exc, data)) from None
    try:
        check_assignment_size(spec)
    except LimitError as exc:
        raise SpecError(f"{source}: {exc}") from None
    assignment = Assignment(spec=spec, folder=Path("."))
    for index, fn_spec in enumerate(spec.functions):
        try:
            assignment.functions.append(_resolve(spec, fn_spec, index))
        except (SpecError, ProgramError, LimitError) as exc:
            raise SpecError(f"{source}: functions[{index}] ({fn_spec.name}): {exc}") from None
    return assignment


def _describe(exc: ValidationError, data: Any) -> str:
    """Pydantic's errors with function indices turned into names a spec author recognises."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        parts: list[str] = []
        node: Any = data
        for i, part in enumerate(loc):
            if isinstance(part, int):
                label = f"[{part}]"
                if isinstance(node, list) and part < len(node) and isinstance(node[part], dict):
                    name = node[part].get("name")
                    if i > 0 and loc[i - 1] == "functions" and name:
                        label = f"[{part}] ({name})"
                parts.append(label)
            else:
                parts.append(("." if parts else "") + str(part))
            node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        where = "".join(parts) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def iter_leaves(spec: ReturnSpec, path: tuple[PathPart, ...] = ()) -> Iterator[tuple[tuple[PathPart, ...], Leaf]]:
    if isinstance(spec, Leaf):
        yield path, spec
    elif isinstance(spec, SeqReturn):
        for i, item in enumerate(spec.items):
            yield from iter_leaves(item, (*path, i))
    elif isinstance(spec, DictReturn):
        for key, item in spec.keys.items():
            yield from iter_leaves(item, (*path, key))


def _resolve(spec: AssignmentSpec, fn: FunctionSpec, index: int) -> Function:
    program = Program.parse(fn.forward)
    dims = {**spec.dims, **fn.dims}
    all_inputs = {**spec.inputs, **fn.inputs}

    constraint_exprs = [c.parsed() for c in fn.constraints]
    used_names = {n.id for n in ast.walk(program.tree) if isinstance(n, ast.Name)}
    for expr in constraint_exprs:
        used_names |= {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    used_names |= set(fn.args)
    inputs = {name: inp for name, inp in all_inputs.items() if name in used_names}

    clash = sorted((set(inputs) | set(program.assigned)) & set(dims))
    if clash:
        raise SpecError(f"{', '.join(clash)}: used both as a dimension and as a value name")
    for name, inp in inputs.items():
        _check_input(spec, name, inp, dims)

    program.check_names([*inputs, *dims])
    defined = set(inputs) | set(program.assigned)
    for arg in fn.args:
        if arg not in defined and arg not in fn.upstream:
            raise SpecError(f"args: {arg!r} is neither an input, an upstream gradient nor computed by forward")
    for up_arg, node in fn.upstream.items():
        if up_arg not in fn.args:
            raise SpecError(f"upstream: {up_arg!r} is not one of the function's args")
        if up_arg in defined:
            raise SpecError(f"upstream: {up_arg!r} is also an input or forward value")
        if node not in defined:
            raise SpecError(f"upstream: {up_arg!r} is the gradient of {node!r}, which forward never defines")
    if fn.objective is not None:
        if fn.upstream:
            raise SpecError("give either upstream or objective, not both")
        if fn.objective not in program.assigned:
            raise SpecError(f"objective: {fn.objective!r} is not computed by forward")
    for expr, constraint in zip(constraint_exprs, fn.constraints):
        refs = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)} - set(dims)
        unknown = sorted(r for r in refs - defined if r not in _op_names())
        if unknown:
            raise SpecError(f"constraints: {constraint.expr!r} uses undefined name(s) {', '.join(unknown)}")

    leaves: list[LeafInfo] = []
    for path, leaf in iter_leaves(fn.returns):
        if leaf.target not in defined:
            raise SpecError(f"returns: {leaf.target!r} is neither an input nor computed by forward")
        if leaf.target in inputs and inputs[leaf.target].type == "int":
            raise SpecError(f"returns: {leaf.target!r} is an integer input; it cannot be graded as a gradient or a value")
        if leaf.grad and not fn.upstream and fn.objective is None:
            raise SpecError("returns asks for gradients, so give `upstream` or `objective`")
        leaves.append(LeafInfo(path, leaf, 0.0))
    labels = [leaf.label for leaf in leaves]
    dupes = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
    if dupes:
        raise SpecError(f"returns: output names repeat: {', '.join(dupes)} (give each a distinct `name`)")
    leaves = _share_points(fn, leaves)

    trials = fn.trials or spec.trials
    _check_cases(spec, trials, dims, inputs)
    check_function_size(spec, fn, dims, inputs, trials)
    limits = _merge_limits(DEFAULT_LIMITS, spec.limits, fn.limits)
    repairs = []
    for expr, constraint in zip(constraint_exprs, fn.constraints):
        target, other = _repair_target(expr, inputs)
        if target is not None:
            repairs.append(Repair(target, other, constraint.away_from, constraint.margin))
    mutant_programs = [_check_mutant(fn, i, program, inputs, dims, leaves) for i in range(len(fn.mutants))]
    return Function(fn, index, program, inputs, dims, leaves, trials, limits, repairs, constraint_exprs, mutant_programs)


def _check_mutant(
    fn: FunctionSpec, i: int, program: Program, inputs: dict[str, InputSpec], dims: dict[str, Range], leaves: list[LeafInfo]
) -> Program:
    """A mutant's forward must read only the function's inputs and define everything the
    function's returns, upstream and objective refer to, so its answers line up."""
    mutant = fn.mutants[i]
    where = f"mutants[{i}] ({mutant.name})"
    if mutant.forward is None:
        return program
    try:
        mutant_program = Program.parse(mutant.forward)
        mutant_program.check_names([*inputs, *dims])
    except ProgramError as exc:
        raise SpecError(f"{where}.forward: {exc}") from None
    defined = set(inputs) | set(mutant_program.assigned)
    needed = [info.leaf.target for info in leaves] + list(fn.upstream.values())
    needed += [fn.objective] if fn.objective else []
    missing = sorted({n for n in needed if n not in defined})
    if missing:
        raise SpecError(f"{where}.forward: does not define {', '.join(missing)}, which the function's returns/upstream/objective use")
    return mutant_program


def _repair_target(expr: ast.expr, inputs: dict[str, InputSpec]) -> tuple[Union[str, None], Union[str, None]]:
    """(target, other) when a constraint is on an array input, or on `x - y` of two."""

    def array_input(node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in inputs and inputs[node.id].type == "array"

    if array_input(expr):
        return expr.id, None  # type: ignore[attr-defined]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Sub) and array_input(expr.left) and array_input(expr.right):
        return expr.left.id, expr.right.id  # type: ignore[attr-defined]
    return None, None


def _op_names() -> set[str]:
    from grader.engine import OPS

    return set(OPS) | {"len"}


def _check_input(spec: AssignmentSpec, name: str, inp: InputSpec, dims: dict[str, Range]) -> None:
    def known(ref: Any, layer: bool) -> bool:
        if isinstance(ref, int):
            return ref >= 0
        if ref in dims:
            return True
        if spec.layers is not None and ref in ("n_first", "n_last"):
            return True
        return layer and ref in ("n_in", "n_out")

    if isinstance(inp.shape, str):
        if inp.shape not in spec.shapes:
            known = ", ".join(spec.shapes) or "none declared"
            raise SpecError(f"inputs.{name}.shape: {inp.shape!r} is not a declared shape (shapes: {known})")
    elif inp.shape is not None:
        for ref in inp.shape:
            if not known(ref, inp.type == "layers"):
                hint = " (n_in/n_out only inside a layers input)" if ref in LAYER_DIMS else ""
                raise SpecError(f"inputs.{name}.shape: unknown dimension {ref!r}{hint}")
    if inp.type == "layers" and spec.layers is None:
        raise SpecError(f"inputs.{name}: a layers input needs `layers:` declared at the top level")
    if inp.range is not None:
        for ref in inp.range:
            if not known(ref, False):
                raise SpecError(f"inputs.{name}.range: unknown dimension {ref!r}")


def _share_points(fn: FunctionSpec, leaves: list[LeafInfo]) -> list[LeafInfo]:
    """Outputs without explicit points share what the function's points leave over."""
    fixed = sum(leaf.leaf.points or 0.0 for leaf in leaves)
    free = [leaf for leaf in leaves if leaf.leaf.points is None]
    if fixed > fn.points + 1e-9:
        raise SpecError(f"returns: output points add up to {fixed}, more than the function's {fn.points}")
    if not free and abs(fixed - fn.points) > 1e-9:
        raise SpecError(f"returns: output points add up to {fixed}, not the function's {fn.points}")
    share = (fn.points - fixed) / len(free) if free else 0.0
    return [LeafInfo(leaf.path, leaf.leaf, leaf.leaf.points or share) for leaf in leaves]


def _check_cases(spec: AssignmentSpec, trials: Trials, dims: dict[str, Range], inputs: dict[str, InputSpec]) -> None:
    for case in trials.cases:
        where = f"trials.cases ({case.label!r})"
        for name in [*case.dims, *case.equal]:
            if name not in dims:
                raise SpecError(f"{where}: unknown dimension {name!r}")
        for name in case.shapes:
            if name not in spec.shapes:
                raise SpecError(f"{where}: unknown shape {name!r}")
        if (case.layers is not None or case.layer_count is not None) and spec.layers is None:
            raise SpecError(f"{where}: sets layers but the spec declares no `layers:`")


def _merge_limits(*layers: Limits) -> Limits:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
    return Limits(**merged)
