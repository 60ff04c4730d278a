"""Running student code out of the grader's process: bytes in, raw numeric arrays out."""

from grader.runner.base import Call, CallResult, Job, LoadResult, Runner, RunReport
from grader.runner.protocol import Returned, Unsupported
from grader.runner.subprocess_runner import SubprocessRunner

__all__ = ["Call", "CallResult", "Job", "LoadResult", "Returned", "RunReport", "Runner", "SubprocessRunner", "Unsupported"]
