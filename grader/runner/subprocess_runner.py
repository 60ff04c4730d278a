"""A runner that starts a fresh interpreter per submission (and per restart).

Process isolation without a sandbox: the child gets an empty environment, a scratch
directory, no inherited fds but its pipes, rlimits, and SIGKILL to its whole process group
at the deadline; it can still read the file system and open sockets. It is the baseline
the sandbox is measured against, and the explicit, loudly logged development mode.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from grader.runner.base import Job, RunReport
from grader.runner.session import run_job

CHILD = Path(__file__).with_name("child.py")
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
CHILD_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with status {code}"


class _Process:
    reports_confinement = False

    def __init__(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="grader-run-")
        job_r, self.job_fd = os.pipe()
        self.result_fd, result_w = os.pipe()
        for fd in (self.job_fd, result_w):
            # As in the sandbox: a job's arguments and results fit, so neither side waits
            # for the other (the parent reads results on a timer, not as each arrives).
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass
        err_r, err_w = os.pipe()
        self.diagnostic_fds = [err_r]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-u", str(CHILD), str(result_w)],
                stdin=job_r,
                stdout=err_w,
                stderr=err_w,
                pass_fds=(result_w,),
                cwd=self.scratch,
                env=CHILD_ENV,
                start_new_session=True,
            )
        except OSError:
            for fd in (self.job_fd, self.result_fd, err_r):
                os.close(fd)
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        finally:
            for fd in (job_r, result_w, err_w):
                os.close(fd)

    def connect(self) -> None:
        pass

    def kill(self) -> None:
        """SIGKILL the child and anything it started in its session."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> Optional[str]:
        try:
            return describe_exit(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        self.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self.job_fd, self.result_fd, *self.diagnostic_fds):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.scratch, ignore_errors=True)


class SubprocessRunner:
    """Fresh interpreter per submission."""

    def run(self, job: Job) -> RunReport:
        return run_job(job, _Process)

    def close(self) -> None:
        pass
