"""The trusted parent's side of running one job, whatever process runs it.

A launcher starts a child (a fresh interpreter, or a fork of the sandbox zygote) and hands
back a `ChildHandle`: the write end of the job pipe, the read end of the result pipe, and
a way to kill it. `run_job` streams the job in, reads framed results with a wall-clock
deadline per call, kills the child on a timeout, a crash or a malformed frame, and starts
a new child for the calls that remain, so a broken function costs only its own points.
"""

from __future__ import annotations

import os
import selectors
import time
from typing import Any, Callable, Optional, Protocol

from grader.runner.base import CallResult, Job, LoadResult, RunReport
from grader.runner.protocol import Decoder, FrameReader, ProtocolError, clean_text, encode_job, error_of

MAX_OUTPUT_TOTAL = 64 << 10


class SandboxFailure(Exception):
    """The runner itself failed (not the student's code): grading must not go on."""


class ChildHandle(Protocol):
    reports_confinement: bool  # sends "confined" (or "confinement_failed") before reading its job
    job_fd: int  # write end of the job pipe (owned by the handle)
    result_fd: int  # read end of the result pipe (owned by the handle)
    diagnostic_fds: list[int]  # extra read ends (the harness's own stderr), drained and kept

    def kill(self) -> None: ...

    def wait(self, timeout: float) -> Optional[str]:
        """How the child ended ("killed by SIGSEGV", "exited with status 3"), None if unknown."""

    def close(self) -> None: ...


Launch = Callable[[], ChildHandle]


class OutputCapture:
    """Keeps a prefix of what the student printed, per function (and for the import)."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.kept: dict[str, bytearray] = {}
        self.dropped: dict[str, int] = {}
        self.total = 0
        self.hidden: set[str] = set()  # functions whose hidden trials printed

    def add(self, key: str, data: "bytes | str", dropped: int = 0) -> None:
        raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else data
        buf = self.kept.setdefault(key, bytearray())
        room = max(0, min(self.per_key - len(buf), MAX_OUTPUT_TOTAL - self.total))
        buf += raw[:room]
        self.total += min(room, len(raw))
        lost = max(0, len(raw) - room) + max(0, dropped)
        if lost:
            self.dropped[key] = self.dropped.get(key, 0) + lost

    def without_import(self) -> "OutputCapture":
        """This capture, except that output printed while loading the file is ignored."""
        view = _NoImport.__new__(_NoImport)
        view.__dict__ = self.__dict__
        return view

    def texts(self) -> dict[str, str]:
        out = {}
        for key in set(self.kept) | self.hidden:
            if key.startswith("<harness"):
                continue
            text = self.kept.get(key, bytearray()).decode("utf-8", errors="replace")
            if self.dropped.get(key):
                text += f"\n[... {self.dropped[key]} more bytes of output dropped]"
            if key in self.hidden:
                text += ("\n" if text else "") + "[output printed during hidden trials is not shown]"
            if text:
                out[key] = text
        return out


class _NoImport(OutputCapture):
    def add(self, key: str, data: "bytes | str", dropped: int = 0) -> None:
        if key != "<import>":
            super().add(key, data, dropped)


def run_job(job: Job, launch: Launch) -> RunReport:
    started = time.perf_counter()
    job_deadline = time.monotonic() + job.max_seconds
    capture = OutputCapture(job.max_output_bytes)
    results: dict[int, CallResult] = {}
    pending = list(range(len(job.calls)))
    load: Optional[LoadResult] = None
    sessions = 0
    while pending:
        sessions += 1
        if time.monotonic() >= job_deadline:
            for i in pending:
                results[i] = CallResult("skipped", detail=f"the submission's total time budget ({job.max_seconds:g} s)")
            break
        # A restarted child loads the file again; what that prints was shown the first time.
        session = _Session(job, pending, capture if sessions == 1 else capture.without_import(), results, job_deadline)
        session.run(launch())
        assert session.load is not None
        if load is None:
            load = session.load
        if session.load.status != "ok":
            # A restarted child that fails to load costs only the calls still pending;
            # what earlier children earned stands.
            detail = "" if sessions == 1 else (session.load.error or {}).get("type") or session.load.status
            for i in pending:
                results.setdefault(i, CallResult("not_loaded", detail=detail))
            break
        if session.stopped_at is not None:
            failed = job.calls[session.stopped_at]
            for i in session.pending:
                if job.calls[i].function == failed.function:
                    results[i] = CallResult("skipped", detail=results[session.stopped_at].status)
        pending = [i for i in session.pending if i not in results]
    calls = [results[i] for i in range(len(job.calls))]
    return RunReport(load or LoadResult("ok"), calls, capture.texts(), max(sessions - 1, 0), time.perf_counter() - started)


class _Session:
    """One child working through the pending calls until done, a kill or a crash."""

    def __init__(
        self, job: Job, pending: list[int], capture: OutputCapture, results: dict[int, CallResult], job_deadline: float
    ) -> None:
        self.job = job
        self.job_deadline = job_deadline
        self.pending = list(pending)
        self.capture = capture
        self.results = results
        self.load: Optional[LoadResult] = None
        self.stopped_at: Optional[int] = None  # the call this child died on

    def limits(self) -> dict[str, Any]:
        cpu_total = sum(self.job.calls[i].cpu_seconds for i in self.pending) + self.job.import_seconds
        return {"memory_mb": self.job.memory_mb, "cpu_seconds_total": cpu_total, "output_bytes": self.job.max_output_bytes}

    def run(self, child: ChildHandle) -> None:
        try:
            calls = [(i, self.job.calls[i].function, self.job.calls[i].args) for i in self.pending]
            self._loop(child, encode_job(self.job.source, calls, self.limits()))
        finally:
            child.kill()
            child.close()

    def _current(self) -> Optional[int]:
        return self.pending[0] if self.load is not None and self.pending else None

    def _key(self) -> str:
        current = self._current()
        return "<import>" if current is None else self.job.calls[current].function

    def _deadline_after(self, now: float) -> float:
        current = self._current()
        if self.load is None:
            step = self.job.import_seconds
        else:
            step = self.job.calls[current].wall_seconds if current is not None else 2.0
        return min(now + step, self.job_deadline)

    def _loop(self, child: ChildHandle, payload: bytes) -> None:
        reader = FrameReader(self.job.max_result_bytes)
        sel = selectors.DefaultSelector()
        for fd in (child.job_fd, child.result_fd, *child.diagnostic_fds):
            os.set_blocking(fd, False)
        # A sandbox child first reports that it is confined; only then does it get its job,
        # so a "confinement_failed" report can only come from the harness, never a student.
        self.awaiting_confinement = child.reports_confinement
        if not self.awaiting_confinement:
            sel.register(child.job_fd, selectors.EVENT_WRITE, "job")
        sel.register(child.result_fd, selectors.EVENT_READ, "result")
        for fd in child.diagnostic_fds:
            sel.register(fd, selectors.EVENT_READ, "diagnostic")
        sent = 0
        outgoing = memoryview(payload)
        deadline = self._deadline_after(time.monotonic())
        try:
            while True:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    child.kill()
                    self._fail("timeout", "budget" if time.monotonic() >= self.job_deadline else "")
                    return
                for key, _ in sel.select(timeout):
                    if key.data == "job":
                        try:
                            sent += os.write(child.job_fd, outgoing[sent : sent + (1 << 20)])
                        except (BrokenPipeError, OSError):
                            sent = len(payload)
                        if sent >= len(payload):
                            sel.unregister(child.job_fd)
                        continue
                    try:
                        data = os.read(key.fd, 1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if key.data == "diagnostic":
                        if data:
                            self.capture.add("<harness>", data)
                        else:
                            sel.unregister(key.fd)
                        continue
                    if not data:
                        # The result pipe closed without a "done" frame: the child died.
                        child.kill()
                        self._fail("crashed", child.wait(5.0) or "it died")
                        return
                    try:
                        frames = reader.feed(data)
                    except ProtocolError as exc:
                        child.kill()
                        self._fail("too_large" if "exceeds" in str(exc) else "protocol", str(exc))
                        return
                    for header, blobs in frames:
                        try:
                            over = self._handle(header, blobs)
                        except SandboxFailure:
                            raise
                        except Exception as exc:  # a forged frame must not take the grader down
                            child.kill()
                            self._fail("protocol", f"unreadable result ({type(exc).__name__})")
                            return
                        if over:
                            return
                        if header.get("kind") == "confined" and child.job_fd not in sel.get_map():
                            sel.register(child.job_fd, selectors.EVENT_WRITE, "job")
                        deadline = self._deadline_after(time.monotonic())
                    if reader.error is not None:
                        child.kill()
                        self._fail("too_large" if "exceeds" in str(reader.error) else "protocol", str(reader.error))
                        return
        finally:
            sel.close()

    def _handle(self, header: dict[str, Any], blobs: list[bytes]) -> bool:
        """Record one frame; True when the session is over."""
        kind = header.get("kind")
        if self.awaiting_confinement:
            if kind == "confinement_failed":
                raise SandboxFailure(f"the sandbox could not confine a child: {clean_text(header.get('detail'), 500) or '?'}")
            if kind != "confined":
                raise SandboxFailure("a sandbox child spoke before reporting its confinement")
            self.awaiting_confinement = False
            return False
        printed, dropped = header.get("output"), header.get("output_dropped")
        if isinstance(printed, str) or isinstance(dropped, int):
            dropped = dropped if isinstance(dropped, int) and 0 <= dropped < 1 << 40 else 0
            current = self._current()
            if current is not None and self.job.calls[current].hidden:
                # What a hidden trial printed could be its inputs: it is not shown.
                self.capture.hidden.add(self._key())
            else:
                self.capture.add(self._key(), printed if isinstance(printed, str) else "", dropped)
        if self.load is None:
            if kind != "loaded":
                self._fail("protocol", "expected the load report first")
                return True
            if header.get("ok") is True:
                self.load = LoadResult("ok")
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
            self.load = LoadResult(status, detail=detail)
            return
        current = self._current()
        if current is None:
            return
        self.results[current] = CallResult(status, detail=detail)
        self.pending.pop(0)
        self.stopped_at = current


def _seconds(header: dict[str, Any]) -> Optional[float]:
    """A duration the child reports, if it is a plausible one (it is only informative)."""
    value = header.get("seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if 0.0 <= value < 1e6 else None


def _call_result(header: dict[str, Any], blobs: list[bytes]) -> CallResult:
    status = header.get("status")
    seconds = _seconds(header)
    if status == "ok":
        decoder = Decoder(blobs)
        try:
            value = decoder.decode(header.get("value"))
            after = decoder.decode(header.get("args_after"))
            decoder.finish()
        except ProtocolError as exc:
            return CallResult("protocol", detail=str(exc), seconds=seconds)
        return CallResult("ok", value=value, args_after=after, seconds=seconds)
    if status == "error":
        return CallResult("error", error=error_of(header), seconds=seconds)
    if status in ("missing", "not_callable", "bad_signature", "too_complex"):
        return CallResult(status, detail=clean_text(header.get("detail"), 500), seconds=seconds)
    return CallResult("protocol", detail="unknown call status")
