"""What a runner is: it takes a job (source + calls with plain arguments), runs it out of
the grader's process, and reports raw outcomes. It never compares or scores; the grading
core does that with the values decoded here. Runners differ in isolation (a plain
subprocess, a sandbox zygote) but share this interface and the child's wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

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
    """How one call ended. `status` is one of:
    ok (`value`, `args_after` decoded), error (`error` has the student's traceback),
    missing, not_callable, bad_signature (`detail` says why), timeout (`detail` "budget"
    when the submission's total budget ran out), crashed (the process died: a signal,
    os._exit, a CPU limit), too_large, too_complex, protocol (the child sent something
    malformed), skipped (an earlier trial of the function timed out, crashed or sent
    garbage, or the budget ran out), not_loaded (a restarted child failed to load)."""

    status: str
    value: Any = None
    args_after: Any = None
    error: Optional[dict[str, Any]] = None  # {"type", "text", "line"}
    detail: str = ""
    seconds: Optional[float] = None


@dataclass
class LoadResult:
    status: str  # "ok", "error" (incl. syntax errors), "timeout", "crashed", "protocol", "too_large"
    error: Optional[dict[str, Any]] = None
    detail: str = ""


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
