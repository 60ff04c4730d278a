"""Service processes for the end-to-end and fault tests (and benchmarks/faults.py): a
`grader worker` (or `grader up`) run as a real subprocess in its own session, its output in
a log file, with ways to find and kill its pool processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

from grader.config import Settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.stack import children  # noqa: E402  (re-exported: chaos and the tests use it)

# Short timings for the fault tests: a lease of 10 s (Celery limits 8 s / 9 s), sweeps every
# second, a queued row re-sent after 2 s without a worker.
FAST_RECOVERY = {"GRADER_LEASE_SECONDS": "10", "GRADER_SWEEP_SECONDS": "1", "GRADER_STUCK_SECONDS": "2"}
TIMEOUT = 60.0


# --- processes -----------------------------------------------------------------------------


def service_env(**values: str) -> dict[str, str]:
    """The test process's environment without any service configuration, plus `values`
    (the sandbox settings pass through, so CI's GRADER_SANDBOX_REQUIRE applies)."""
    # GRADER_LOG_FORMAT too: the tests read the workers' logs in the testing default (text).
    drop = {
        "DATABASE_URL", "BROKER_URL", "REDIS_URL", "SECRET_KEY", "GRADER_ENV", "GRADER_QUEUE", "GRADER_INSTANCE",
        "GRADER_LOG_FORMAT", *FAST_RECOVERY,
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(values)
    return env


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return service_env(
        GRADER_ENV="testing",
        DATABASE_URL=settings.database_url,
        BROKER_URL=settings.broker_url,
        GRADER_QUEUE=settings.queue,
        GRADER_INSTANCE=str(settings.instance_path),
        **extra,
    )


class Proc:
    """A service process started in its own session, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, wrapper: Sequence[str] = ()) -> None:
        """`wrapper` goes before the interpreter, e.g. `ip netns exec HOST` to run it on a
        network of its own; it must exec the command (so `pid` is the service's)."""
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "grader.cli", *args],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"{self.log_path.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"no {pattern!r} in {self.log_path.name} after {timeout:g} s:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole process group: the main process, its pool and beat."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        code = self.proc.poll()
        self.kill()
        self._log.close()
        return code


def start_worker(settings: Settings, log: Path, beat: bool = False, **extra: str) -> Proc:
    args = ["worker", "--concurrency=1"] + (["--beat"] if beat else [])
    return Proc(args, worker_env(settings, **extra), log)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts is stopped at its end, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop(timeout=5)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"


def grading_process(worker: Proc) -> int:
    """The pool process of `worker` that is grading now: the parent of a sandbox zygote."""
    for child in children(worker.pid):
        if any("bwrap" in cmdline(grandchild) or "sh -c" in cmdline(grandchild) for grandchild in children(child)):
            return child
    pytest.fail(f"no pool process of worker {worker.pid} runs a sandbox")
