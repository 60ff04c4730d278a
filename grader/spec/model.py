"""The schema of an assignment spec (`spec.yaml`), validated with pydantic.

The spec declares what is generated, the forward computation and which gradients or values
each student function returns; expected answers are derived by the engine, never written
down. See `assignments/README.md` for the format with examples.
"""

from __future__ import annotations

import ast
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator, model_validator

from grader.spec.program import Program, ProgramError, parse_expression

IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
Ident = Annotated[str, Field(pattern=IDENT)]
DimRef = Union[int, Ident]  # a dimension: a literal size or a dimension name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(Strict):
    low: int
    high: int

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) != 2:
                raise ValueError("a range is [low, high]")
            return {"low": data[0], "high": data[1]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low < 0 or self.high < self.low:
            raise ValueError(f"range [{self.low}, {self.high}] must satisfy 0 <= low <= high")
        return self


class ShapeVar(Strict):
    """A shape of random rank ("any shape"): rank and per-dimension size ranges."""

    rank: Range
    size: Range


class Layers(Strict):
    """Layer sizes [n0, ..., nL] of a layered network: how many sizes and their range."""

    count: Range
    size: Range

    @model_validator(mode="after")
    def _at_least_two(self) -> Layers:
        if self.count.low < 2:
            raise ValueError("a network needs at least 2 layer sizes (input and output)")
        if self.size.low < 1:
            raise ValueError("layer sizes must be at least 1")
        return self


class Normal(Strict):
    mean: float = 0.0
    std: PositiveFloat = 1.0


class Uniform(Strict):
    low: float
    high: float

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)) and len(data) == 2:
            return {"low": data[0], "high": data[1]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError("uniform needs low < high")
        return self


class Dist(Strict):
    """How values are drawn: exactly one of normal/uniform (default: standard normal)."""

    normal: Optional[Normal] = None
    uniform: Optional[Uniform] = None

    @model_validator(mode="after")
    def _one(self) -> Dist:
        if (self.normal is None) == (self.uniform is None):
            raise ValueError("give exactly one of `normal` or `uniform`")
        return self


class InputSpec(Strict):
    """One generated input.

    type `array` (default): a float64 array of `shape`, a list of dimension names/sizes or
    the name of a shape variable; `float`: a Python float; `int`: a Python int drawn from
    `range` [low, high) whose bounds may be dimension names; `layers`: a list with one array
    per layer of the network, `shape` written with `n_out`/`n_in` for n_{l+1}/n_l.
    """

    type: Literal["array", "float", "int", "layers"] = "array"
    shape: Union[list[DimRef], Ident, None] = None
    dist: Dist = Dist(normal=Normal())
    range: Optional[tuple[DimRef, DimRef]] = None

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if self.type == "int":
            if self.range is None:
                raise ValueError("an int input needs `range: [low, high)`")
            if self.shape is not None:
                raise ValueError("an int input is a single integer; it takes no shape")
        elif self.range is not None:
            raise ValueError("`range` is only for int inputs; use `dist` for floats")
        if self.type in ("array", "layers") and self.shape is None:
            raise ValueError(f"an {self.type} input needs a shape")
        if self.type == "float" and self.shape is not None:
            raise ValueError("a float input is a single number; use type array for a shape")
        if self.type == "layers" and not isinstance(self.shape, list):
            raise ValueError("a layers input needs a shape list such as [n_out, n_in]")
        return self


class Leaf(Strict):
    """One graded output: the gradient of the objective w.r.t. a name, or a name's value."""

    grad: Optional[Ident] = None
    value: Optional[Ident] = None
    name: Optional[str] = None
    points: Optional[PositiveFloat] = None

    @model_validator(mode="after")
    def _one(self) -> Leaf:
        if (self.grad is None) == (self.value is None):
            raise ValueError("an output is either {grad: NAME} or {value: NAME}")
        return self

    @property
    def target(self) -> str:
        return self.grad or self.value  # type: ignore[return-value]

    @property
    def label(self) -> str:
        return self.name or (f"d{self.grad}" if self.grad else str(self.value))


class SeqReturn(Strict):
    tuple: Optional[list[ReturnSpec]] = None
    list: Optional[list[ReturnSpec]] = None

    @model_validator(mode="after")
    def _one(self) -> SeqReturn:
        if (self.tuple is None) == (self.list is None):
            raise ValueError("give exactly one of `tuple` or `list`")
        if not self.items:
            raise ValueError("a returned tuple/list needs at least one item")
        return self

    @property
    def items(self) -> list[ReturnSpec]:
        return self.tuple if self.tuple is not None else self.list  # type: ignore[return-value]


class DictReturn(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    keys: dict[str, ReturnSpec] = Field(alias="dict")

    @field_validator("keys")
    @classmethod
    def _nonempty(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("a returned dict needs at least one key")
        return value


ReturnSpec = Union[Leaf, SeqReturn, DictReturn]
SeqReturn.model_rebuild()
DictReturn.model_rebuild()


class Constraint(Strict):
    """Keep `expr` (any forward expression) at least `margin` away from `away_from`.

    Inputs are nudged when `expr` is an input or the difference of two inputs; otherwise
    the trial is redrawn until the constraint holds (e.g. a ReLU kink on `W1 @ x`).
    """

    expr: str
    away_from: float = 0.0
    margin: PositiveFloat

    @field_validator("expr")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parse_expression(value)
        except ProgramError as exc:
            raise ValueError(f"cannot parse constraint expression: {exc}") from None
        return value

    def parsed(self) -> ast.expr:
        return parse_expression(self.expr)[1]


class Limits(Strict):
    cpu_seconds: Optional[PositiveFloat] = None  # per call, summed into one CPU rlimit per child process
    wall_seconds: Optional[PositiveFloat] = None  # per call, enforced from outside
    memory_mb: Optional[PositiveInt] = None  # address space of the process
    import_seconds: Optional[PositiveFloat] = None  # running the file's top level
    job_seconds: Optional[PositiveFloat] = None  # one whole submission, restarts included


class Tolerance(Strict):
    rtol: PositiveFloat = 1e-7
    atol: PositiveFloat = 1e-9  # relative to the largest expected magnitude
    float32_rtol: PositiveFloat = 1e-4
    float32_atol: PositiveFloat = 1e-6


class Case(Strict):
    """An edge-case trial: fixed dimensions, equal groups, fixed shapes or layer sizes."""

    label: str
    dims: dict[Ident, PositiveInt] = {}
    equal: list[Ident] = []
    shapes: dict[Ident, list[PositiveInt]] = {}
    layers: Optional[list[PositiveInt]] = None
    layer_count: Optional[PositiveInt] = None
    hidden: bool = False
    repeat: PositiveInt = 1

    @model_validator(mode="after")
    def _layers(self) -> Case:
        if self.layers is not None and self.layer_count is not None:
            raise ValueError("give `layers` (sizes) or `layer_count`, not both")
        if self.layers is not None and len(self.layers) < 2:
            raise ValueError("`layers` lists at least 2 sizes")
        return self


class Trials(Strict):
    random: int = Field(8, ge=0, le=200)  # trials with every dimension drawn distinct
    hidden: int = Field(0, ge=0)  # how many of the random trials (the last ones) are hidden
    cases: list[Case] = []

    @model_validator(mode="after")
    def _counts(self) -> Trials:
        if self.hidden > self.random:
            raise ValueError(f"hidden ({self.hidden}) cannot exceed random ({self.random})")
        if self.random + sum(c.repeat for c in self.cases) == 0:
            raise ValueError("at least one trial is needed")
        return self


class Mutant(Strict):
    """A known-wrong variant of a function's answer, with the mistake it stands for.

    The engine derives the mutant's answers like the expected ones, from `forward` (a
    replacement forward definition, same language, same inputs) and/or with an op's VJP
    swapped for a known-wrong one (`vjp: {sigmoid: at_output}`). A wrong output that equals
    the mutant on every failing trial is told `message`.
    """

    name: Annotated[str, Field(min_length=1, max_length=80)]
    message: Annotated[str, Field(min_length=1, max_length=500)]
    forward: Optional[str] = None
    vjp: dict[Ident, str] = {}
    # Where the VJP substitution applies: every application of the op, or only the last
    # one (the layer nearest the output, e.g. BP1's delta^L but not BP2's).
    vjp_where: Literal["all", "last"] = "all"

    @field_validator("forward")
    @classmethod
    def _parses(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                Program.parse(value)
            except ProgramError as exc:
                raise ValueError(f"cannot parse the mutant's forward definition: {exc}") from None
        return value

    @field_validator("vjp")
    @classmethod
    def _known_variants(cls, value: dict[str, str]) -> dict[str, str]:
        from grader.engine.ops import VJP_VARIANTS

        for op, variant in value.items():
            known = VJP_VARIANTS.get(op, {})
            if variant not in known:
                ops = ", ".join(f"{o}: {'/'.join(v)}" for o, v in sorted(VJP_VARIANTS.items()))
                raise ValueError(f"no known-wrong VJP {variant!r} for op {op!r} (known: {ops})")
        return value

    @model_validator(mode="after")
    def _something(self) -> Mutant:
        if self.forward is None and not self.vjp:
            raise ValueError("a mutant needs a `forward` definition, a `vjp` substitution or both")
        return self


class FunctionSpec(Strict):
    name: Ident
    args: list[Ident]
    description: str = ""
    points: PositiveFloat = 1.0
    inputs: dict[Ident, InputSpec] = {}
    forward: str
    upstream: dict[Ident, Ident] = {}  # argument name -> forward name it is the gradient of
    objective: Optional[Ident] = None  # differentiate sum(objective) when no upstream is given
    returns: ReturnSpec
    constraints: list[Constraint] = []
    trials: Optional[Trials] = None
    limits: Limits = Limits()
    dims: dict[Ident, Range] = {}
    mutants: list[Mutant] = []  # known mistakes, recognised in feedback

    @field_validator("forward")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            Program.parse(value)
        except ProgramError as exc:
            raise ValueError(f"cannot parse the forward definition: {exc}") from None
        return value

    @field_validator("args")
    @classmethod
    def _unique_args(cls, value: list[str]) -> list[str]:
        dupes = sorted({a for a in value if value.count(a) > 1})
        if dupes:
            raise ValueError(f"argument names repeat: {', '.join(dupes)}")
        return value


class AssignmentSpec(Strict):
    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
    title: str
    version: str
    description: str = ""
    handout: str = "handout.md"
    starter: str = "starter.py"
    dims: dict[Ident, Range] = {}
    shapes: dict[Ident, ShapeVar] = {}
    layers: Optional[Layers] = None
    inputs: dict[Ident, InputSpec] = {}  # shared by every function; a function may override
    trials: Trials = Trials()
    limits: Limits = Limits()
    tolerance: Tolerance = Tolerance()
    functions: list[FunctionSpec]

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value

    @field_validator("functions")
    @classmethod
    def _functions(cls, value: list[FunctionSpec]) -> list[FunctionSpec]:
        if not value:
            raise ValueError("an assignment needs at least one function")
        names = [f.name for f in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"function names repeat: {', '.join(dupes)}")
        return value


LAYER_DIMS = ("n_in", "n_out", "n_first", "n_last")
