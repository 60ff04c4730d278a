"""What a runner is: it takes a job (source + calls with plain arguments), runs it out of
the grader's process, and reports raw outcomes. It never compares or scores; the grading
core does that with the values decoded here. Runners differ in isolation (a plain
subprocess, a sandbox zygote) but share this interface and the child's wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

CALL_STATUSES = (
    "ok",  # returned; `value` and `args_after` are decoded data
    "error",  # raised; `error` has the student's traceback
    "missing",  # no such name in the module
    "not_callable",
    "bad_signature",  # cannot take the assignment's arguments; `detail` says why
    "timeout",  # killed at the wall-clock deadline
    "crashed",  # the process died (segfault, os._exit, a signal, a CPU or memory limit)
    "too_large",  # the result exceeded the size cap
    "too_complex",  # the result nested too deeply or had too many parts
    "protocol",  # the child sent something malformed (e.g. the student wrote to the result fd)
    "skipped",  # not run: an earlier trial of the same function timed out or crashed
    "not_loaded",  # not run: the file could not be loaded
)


@dataclass
class Call:
    function: str
    args: list[Any]
    wall_seconds: float
    cpu_seconds: float
    hidden: bool = False  # what a hidden trial prints is not passed on to the student


@dataclass
class Job:
    source: str
    calls: list[Call]
    memory_mb: int = 512
    import_seconds: float = 5.0
    max_result_bytes: int = 64 << 20  # per call
    max_output_bytes: int = 2048  # captured stdout+stderr kept per function (and for import)
    max_seconds: float = 60.0  # the whole job, restarts included: bounds one submission's cost


@dataclass
class CallResult:
    status: str
    value: Any = None
    args_after: Any = None
    error: Optional[dict[str, Any]] = None  # {"type", "text", "line"}
    detail: str = ""
    seconds: Optional[float] = None


@dataclass
class LoadResult:
    status: str  # "ok", "error" (incl. syntax errors), "timeout", "crashed"
    error: Optional[dict[str, Any]] = None
    detail: str = ""
    seconds: Optional[float] = None


@dataclass
class RunReport:
    load: LoadResult
    calls: list[CallResult]
    output: dict[str, str] = field(default_factory=dict)  # "<import>" or function -> captured text
    restarts: int = 0
    seconds: float = 0.0


class Runner(Protocol):
    def run(self, job: Job) -> RunReport: ...

    def close(self) -> None: ...
