"""The trusted parent's side of running one job, whatever process runs it.

A launcher starts a child (a fresh interpreter, or a fork of the sandbox zygote) and hands
back a `ChildHandle`: the write end of the job pipe, the read end of the result pipe, and
a way to kill it. `run_job` streams the job in, reads framed results with a wall-clock
deadline per call, kills the child on a timeout, a crash or a malformed frame, and starts
a new child for the calls that remain, so a broken function costs only its own points.

The child writes one frame per call as the call ends, but the parent is not woken for
each: while results keep coming it polls the result pipe for hang-up only (the child closes
it after its last frame, or dies) and reads what has arrived every `READ_INTERVAL`; once a
read finds nothing, it sleeps until the next byte arrives or the running call's deadline,
whichever comes first, so a slow or hanging call costs it no wake-ups. Reading is also how
it sees which call is running: a call's deadline runs from the moment the parent saw the
previous call's result, at most one read interval after the call really started, so a
hanging call is killed up to `READ_INTERVAL` late, never early, and the results of the
calls before it were in the pipe before it started. Large results (a pipe half full at a
read) are read as they come.
"""

from __future__ import annotations

import fcntl
import os
import select
import time
from typing import Any, Callable, Optional, Protocol

from grader.runner.base import CallResult, Job, LoadResult, RunReport
from grader.runner.protocol import (
    OUTPUT_REGION_BYTES,
    UNCHANGED,
    Decoder,
    FrameReader,
    InputRegion,
    OutputRegion,
    ProtocolError,
    clean_text,
    encode_job,
    error_of,
)

MAX_OUTPUT_TOTAL = 64 << 10
READ_INTERVAL = 0.001  # seconds between reads of the result pipe while results arrive (a
# child blocked on a full pipe waits for the next read, and a hung call is killed up to this late)
CHUNK = 1 << 20
POLLIN, POLLOUT = select.POLLIN, select.POLLOUT
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class SandboxFailure(Exception):
    """The runner itself failed (not the student's code): grading must not go on."""


class ChildHandle(Protocol):
    reports_confinement: bool  # sends "confined" (or "confinement_failed") before reading its job
    job_fd: int  # write end of the job pipe (owned by the handle), once connected
    result_fd: int  # read end of the result pipe (owned by the handle), once connected
    diagnostic_fds: list[int]  # extra read ends (the harness's own stderr), drained and kept
    # A handle whose class sets `shared_memory = True` also has, once connected,
    # `input_fd` and `output_fd`: two fresh memfds the child holds (large arrays travel
    # through them, see protocol.InputRegion); a handle without them uses the pipes only.
    # Such a handle also has `input_sealed(input_bytes)`, told once the input memfd holds
    # the job's large arguments and is sealed: it drops its own reference to the file, and
    # may prepare as much for the next child.

    def connect(self) -> None:
        """Wait until the pipes above are there (the job is encoded in the meantime)."""

    def kill(self) -> None: ...

    def wait(self, timeout: float) -> Optional[str]:
        """How the child ended ("killed by SIGSEGV", "exited with status 3"), None if unknown;
        raises SandboxFailure if what started the child is gone (and took it along)."""

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
        self.awaiting_confinement = False  # set by _loop for a child that reports it

    def limits(self) -> dict[str, Any]:
        cpu_total = sum(self.job.calls[i].cpu_seconds for i in self.pending) + self.job.import_seconds
        return {"memory_mb": self.job.memory_mb, "cpu_seconds_total": cpu_total, "output_bytes": self.job.max_output_bytes}

    def run(self, child: ChildHandle) -> None:
        try:
            calls = [(i, self.job.calls[i].function, self.job.calls[i].args) for i in self.pending]
            region = InputRegion() if getattr(child, "shared_memory", False) else None
            payload = encode_job(self.job.source, calls, self.limits(), region)
            child.connect()
            results = None
            if region is not None:
                try:
                    region.install(child.input_fd, child.output_fd)  # type: ignore[attr-defined]
                except (OSError, ValueError) as exc:
                    raise SandboxFailure(f"cannot set up a child's shared memory: {exc}") from None
                results = OutputRegion(child.output_fd, OUTPUT_REGION_BYTES)  # type: ignore[attr-defined]
                child.input_sealed(region.size)  # type: ignore[attr-defined]
            self._loop(child, payload, results)
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

    def _loop(self, child: ChildHandle, payload: bytes, results: Optional[OutputRegion] = None) -> None:
        reader = FrameReader(self.job.max_result_bytes, results)
        for fd in (child.job_fd, child.result_fd, *child.diagnostic_fds):
            os.set_blocking(fd, False)
        try:
            large = fcntl.fcntl(child.result_fd, F_GETPIPE_SZ) // 2
        except OSError:
            large = 32 << 10
        poller = select.poll()
        # A sandbox child reports that it is confined before it reads its job, so the first
        # frame, "confined" or "confinement_failed", can only come from the harness, never
        # from a student; the job is sent at once all the same (a spare that failed exits
        # without reading it). Until that frame, after a read that found nothing, and while
        # results are large, every byte on the result pipe wakes us (`waiting`); otherwise
        # only its hang-up does (events 0: POLLHUP and POLLERR are always reported), and
        # the timer reads what came.
        self.awaiting_confinement = child.reports_confinement
        waiting = True
        poller.register(child.result_fd, POLLIN)
        for fd in child.diagnostic_fds:
            poller.register(fd, POLLIN)
        self.sent = 0
        self.payload = memoryview(payload)
        if not self._send_job(child):
            poller.register(child.job_fd, POLLOUT)
        now = time.monotonic()
        deadline = self._deadline_after(now)
        next_read = now + READ_INTERVAL
        while True:
            wake = deadline if waiting else min(deadline, next_read)
            timeout = wake - time.monotonic()
            events = poller.poll(timeout * 1000 if timeout > 0 else 0)
            read_now = False
            for fd, _ in events:
                if fd == child.result_fd:
                    read_now = True
                elif fd == child.job_fd:
                    if self._send_job(child):
                        poller.unregister(fd)
                else:
                    try:
                        data = os.read(fd, CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        self.capture.add("<harness>", data)
                    else:
                        poller.unregister(fd)
            now = time.monotonic()
            if not (read_now or (now >= next_read and not waiting) or now >= deadline):
                continue
            over, handled, nbytes, eof = self._read_results(child, reader)
            if over:
                return
            now = time.monotonic()
            if handled:
                deadline = self._deadline_after(now)
            if eof:
                # The result pipe closed before the last frame: the child died.
                child.kill()
                self._fail("crashed", child.wait(5.0) or "it died")
                return
            if now >= deadline:
                child.kill()
                self._fail("timeout", "budget" if now >= self.job_deadline else "")
                return
            # Nothing came (a slow call): sleep until something does. Results filling the
            # pipe faster than the timer reads it: read them as they come, until reads are
            # small again. Otherwise let the timer gather the next ones.
            wait = self.awaiting_confinement or not nbytes or nbytes >= (large // 16 if waiting else large)
            if wait != waiting:
                waiting = wait
                poller.modify(child.result_fd, POLLIN if waiting else 0)
            next_read = now + READ_INTERVAL

    def _send_job(self, child: ChildHandle) -> bool:
        """Write what the job pipe takes of the job; True when all of it is sent."""
        try:
            while self.sent < len(self.payload):
                self.sent += os.write(child.job_fd, self.payload[self.sent : self.sent + CHUNK])
        except BlockingIOError:
            return False
        except OSError:  # the child is gone; its result pipe will say so
            self.sent = len(self.payload)
        return True

    def _read_results(self, child: ChildHandle, reader: FrameReader) -> tuple[bool, bool, int, bool]:
        """Read and handle what the result pipe holds: (session over, frames handled,
        bytes read, end of file)."""
        handled, nbytes = False, 0
        while True:
            try:
                data = os.read(child.result_fd, CHUNK)
            except BlockingIOError:
                return False, handled, nbytes, False
            except OSError:
                data = b""
            if not data:
                return False, handled, nbytes, True
            nbytes += len(data)
            try:
                frames = reader.feed(data)
            except ProtocolError as exc:
                child.kill()
                self._fail("too_large" if "exceeds" in str(exc) else "protocol", str(exc))
                return True, handled, nbytes, False
            for header, blobs in frames:
                handled = True
                try:
                    over = self._handle(header, blobs)
                except SandboxFailure:
                    raise
                except Exception as exc:  # a forged frame must not take the grader down
                    child.kill()
                    self._fail("protocol", f"unreadable result ({type(exc).__name__})")
                    return True, handled, nbytes, False
                if over:
                    return True, handled, nbytes, False
            if reader.error is not None:
                child.kill()
                self._fail("too_large" if "exceeds" in str(reader.error) else "protocol", str(reader.error))
                return True, handled, nbytes, False
            if len(data) < CHUNK:
                return False, handled, nbytes, False  # the pipe is (nearly) empty; a hang-up wakes us

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
        result = self.results[current] = _call_result(header, blobs, len(self.job.calls[current].args))
        self.pending.pop(0)
        if result.status == "protocol":
            # A malformed value is a forged frame (the harness writes none): the frames
            # after it cannot be trusted to belong to the calls they name.
            self.stopped_at = current
            return True
        return False

    def _fail(self, status: str, detail: str = "") -> None:
        """The child is beyond use: blame the load or the running call. A sandbox child
        that fails before reporting its confinement has run no student code (it reads its
        job only after that report): the sandbox failed, not the submission. Seen when a
        retiring zygote killed the spare it had just handed over, on a loaded machine."""
        if self.awaiting_confinement:
            raise SandboxFailure(f"a sandbox child failed before reporting its confinement ({status}{': ' if detail else ''}{detail})")
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


def _call_result(header: dict[str, Any], blobs: list[memoryview], nargs: int) -> CallResult:
    status = header.get("status")
    seconds = _seconds(header)
    if status == "ok":
        decoder = Decoder(blobs)
        try:
            value = decoder.decode(header.get("value"))
            after = header.get("args_after")
            # "=": the child found every argument as it was given.
            after = [UNCHANGED] * nargs if after == "=" else decoder.decode(after)
            decoder.finish()
        except ProtocolError as exc:
            return CallResult("protocol", detail=str(exc), seconds=seconds)
        return CallResult("ok", value=value, args_after=after, seconds=seconds)
    if status == "error":
        return CallResult("error", error=error_of(header), seconds=seconds)
    if status in ("missing", "not_callable", "bad_signature", "too_complex"):
        return CallResult(status, detail=clean_text(header.get("detail"), 500), seconds=seconds)
    return CallResult("protocol", detail="unknown call status")
