"""A runner that starts a fresh interpreter per submission (and per restart).

It is process isolation without a sandbox: the child gets an empty environment, a scratch
directory, no inherited fds but its pipes, rlimits and a wall-clock SIGKILL; it can still
read the file system and open sockets. The sandbox runner replaces it in production.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from grader.runner.base import Call, CallResult, Job, LoadResult, RunReport
from grader.runner.protocol import FrameReader, ProtocolError, decode_value, encode_job, error_of

CHILD = Path(__file__).with_name("child.py")
CHILD_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}
MAX_OUTPUT_TOTAL = 64 << 10


class OutputCapture:
    """Keeps a prefix of what the student printed, attributed to the running function."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.kept: dict[str, bytearray] = {}
        self.dropped: dict[str, int] = {}
        self.total = 0

    def add(self, key: str, data: "bytes | str", dropped: int = 0) -> None:
        raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else data
        buf = self.kept.setdefault(key, bytearray())
        room = max(0, min(self.per_key - len(buf), MAX_OUTPUT_TOTAL - self.total))
        buf += raw[:room]
        self.total += min(room, len(raw))
        lost = max(0, len(raw) - room) + max(0, dropped)
        if lost:
            self.dropped[key] = self.dropped.get(key, 0) + lost

    def texts(self) -> dict[str, str]:
        out = {}
        for key, buf in self.kept.items():
            if key == "<harness>":
                continue
            text = buf.decode("utf-8", errors="replace")
            if self.dropped.get(key):
                text += f"\n[... {self.dropped[key]} more bytes of output dropped]"
            if text:
                out[key] = text
        return out


class _Session:
    """One child process working through the pending calls until done, a kill or a crash."""

    def __init__(self, job: Job, pending: list[int], capture: OutputCapture, results: dict[int, CallResult]) -> None:
        self.job = job
        self.pending = list(pending)
        self.capture = capture
        self.results = results
        self.load: Optional[LoadResult] = None
        self.stopped_at: Optional[int] = None  # call index the session died on

    def limits(self) -> dict[str, Any]:
        cpu_total = sum(self.job.calls[i].cpu_seconds for i in self.pending) + self.job.import_seconds
        return {"memory_mb": self.job.memory_mb, "cpu_seconds_total": cpu_total, "output_bytes": self.job.max_output_bytes}

    def run(self) -> None:
        calls = [(i, self.job.calls[i].function, self.job.calls[i].args) for i in self.pending]
        payload = encode_job(self.job.source, calls, self.limits())
        scratch = tempfile.mkdtemp(prefix="grader-run-")
        result_r, result_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-u", str(CHILD), str(result_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(result_w,),
                cwd=scratch,
                env=CHILD_ENV,
                start_new_session=True,
            )
        finally:
            os.close(result_w)
        try:
            self._loop(proc, payload, result_r)
        finally:
            _kill_group(proc)
            os.close(result_r)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            shutil.rmtree(scratch, ignore_errors=True)

    def _current(self) -> Optional[int]:
        return self.pending[0] if self.load is not None and self.pending else None

    def _key(self) -> str:
        current = self._current()
        return "<import>" if current is None else self.job.calls[current].function

    def _deadline_after(self, now: float) -> float:
        current = self._current()
        if self.load is None:
            return now + self.job.import_seconds
        return now + (self.job.calls[current].wall_seconds if current is not None else 2.0)

    def _loop(self, proc: subprocess.Popen, payload: bytes, result_r: int) -> None:
        assert proc.stdin and proc.stdout and proc.stderr
        reader = FrameReader(self.job.max_result_bytes)
        sel = selectors.DefaultSelector()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
        os.set_blocking(result_r, False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(result_r, selectors.EVENT_READ, "result")
        sent = 0
        deadline = self._deadline_after(time.monotonic())
        open_reads = 3
        try:
            while open_reads:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    self._fail("timeout")
                    return
                for key, _ in sel.select(timeout):
                    if key.data == "stdin":
                        try:
                            sent += os.write(proc.stdin.fileno(), payload[sent : sent + (1 << 20)])
                        except (BrokenPipeError, OSError):
                            sent = len(payload)
                        if sent >= len(payload):
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    fd = key.fd
                    try:
                        data = os.read(fd, 1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        open_reads -= 1
                        continue
                    if key.data != "result":
                        # Only the harness writes here (the child redirects the student's
                        # output into its frames); keep it for crash diagnostics.
                        self.capture.add("<harness>", data)
                        continue
                    try:
                        frames = reader.feed(data)
                    except ProtocolError as exc:
                        self._fail("too_large" if "exceeds" in str(exc) else "protocol", str(exc))
                        return
                    for header, blobs in frames:
                        if self._handle(header, blobs):
                            return
                        deadline = self._deadline_after(time.monotonic())
        finally:
            sel.close()
        # Every read end closed without a "done" frame: the process died.
        code = proc.wait(timeout=5)
        self._fail("crashed", _describe_exit(code))

    def _handle(self, header: dict[str, Any], blobs: list[bytes]) -> bool:
        """Record one frame; True when the session is over."""
        kind = header.get("kind")
        printed, dropped = header.get("output"), header.get("output_dropped")
        if isinstance(printed, str) or isinstance(dropped, int):
            self.capture.add(self._key(), printed if isinstance(printed, str) else "", dropped if isinstance(dropped, int) else 0)
        if self.load is None:
            if kind != "loaded":
                self._fail("protocol", "expected the load report first")
                return True
            seconds = header.get("seconds")
            if header.get("ok") is True:
                self.load = LoadResult("ok", seconds=seconds if isinstance(seconds, float) else None)
                return not self.pending
            self.load = LoadResult("error", error=error_of(header))
            return True
        if kind == "done":
            if self.pending:
                self._fail("protocol", "the child stopped before running every call")
            return True
        current = self._current()
        if kind != "call" or header.get("index") != current or current is None:
            self._fail("protocol", "an unexpected message arrived on the result channel")
            return True
        self.results[current] = _call_result(header, blobs)
        self.pending.pop(0)
        return False

    def _fail(self, status: str, detail: str = "") -> None:
        """The child is beyond use: blame the load or the running call."""
        if self.load is None:
            self.load = LoadResult(status if status in ("timeout", "crashed") else "crashed", detail=detail)
            return
        current = self._current()
        if current is None:
            return
        self.results[current] = CallResult(status, detail=detail)
        self.pending.pop(0)
        self.stopped_at = current


def _call_result(header: dict[str, Any], blobs: list[bytes]) -> CallResult:
    status = header.get("status")
    seconds = header.get("seconds")
    seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
    if status == "ok":
        try:
            value = decode_value(header.get("value"), blobs)
            after = decode_value(header.get("args_after"), blobs)
        except ProtocolError as exc:
            return CallResult("protocol", detail=str(exc), seconds=seconds)
        return CallResult("ok", value=value, args_after=after, seconds=seconds)
    if status == "error":
        return CallResult("error", error=error_of(header), seconds=seconds)
    if status in ("missing", "not_callable", "bad_signature", "too_complex"):
        detail = header.get("detail")
        return CallResult(status, detail=detail[:500] if isinstance(detail, str) else "", seconds=seconds)
    return CallResult("protocol", detail="unknown call status")


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with status {code}"


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child and anything it started in its session (daemons, grandchildren)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


class SubprocessRunner:
    """Fresh interpreter per submission; a timed-out or crashed call costs only the rest of
    its own function's trials, the other functions continue in a new process."""

    def run(self, job: Job) -> RunReport:
        started = time.perf_counter()
        capture = OutputCapture(job.max_output_bytes)
        results: dict[int, CallResult] = {}
        pending = list(range(len(job.calls)))
        load: Optional[LoadResult] = None
        restarts = -1
        while pending:
            restarts += 1
            session = _Session(job, pending, capture, results)
            session.run()
            if load is None or load.status == "ok":
                load = session.load
            assert session.load is not None
            if session.load.status != "ok":
                for i in pending:
                    results.setdefault(i, CallResult("not_loaded"))
                break
            if session.stopped_at is not None:
                failed = job.calls[session.stopped_at]
                for i in session.pending:
                    if job.calls[i].function == failed.function:
                        results[i] = CallResult("skipped", detail=results[session.stopped_at].status)
            pending = [i for i in session.pending if i not in results]
        if load is None:
            load = LoadResult("ok")
        calls = [results[i] for i in range(len(job.calls))]
        return RunReport(load, calls, capture.texts(), max(restarts, 0), time.perf_counter() - started)

    def close(self) -> None:
        pass

