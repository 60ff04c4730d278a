"""Large arrays through shared memory: the memfd path of the sandbox, and its hostile cases.

A sandbox child gets two memfds from the zygote: the parent writes the job's large
arguments into one and seals it, and sizes and seals the other for the child's large
results, which the parent copies out by [offset, length] from the frame's blob table.
Everything here checks that this path is exact, bounded, leak-free and no weaker than the
pipes: the child cannot change its inputs' file, resize its results' file, point the parent
outside it, make it copy the same bytes twice, or hang it by dying mid-write.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from grader.grade import grade_bytes
from grader.runner import Call, Job
from grader.runner.protocol import (
    OUTPUT_REGION_BYTES,
    SHARED_MIN_BYTES,
    UNCHANGED,
    InputRegion,
    OutputRegion,
    ProtocolError,
    Returned,
    encode_job,
    parse_payload,
)
from grader.sandbox import SandboxRunner, probe_host
from grader.spec import load_builtin

ROOT = Path(__file__).resolve().parents[1]
HAS_SANDBOX = probe_host().missing(("bwrap", "userns", "landlock", "seccomp")) == []
needs_sandbox = pytest.mark.skipif(not HAS_SANDBOX, reason="the sandbox's layers are not available on this host")

RNG = np.random.default_rng(3)
X = RNG.standard_normal((256, 384))  # larger than vjp's large trials (128 x 160)
W = RNG.standard_normal((384, 320))


def memfd(data: bytes = b"", size: int = 0) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if size:
        os.ftruncate(fd, size)
    if data:
        os.pwrite(fd, data, 0)
    return fd


def frame_payload(header: dict, inline: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + inline


# --- the trusted side, without a sandbox ---------------------------------------------


def test_output_region_copies_exactly_what_lies_in_range() -> None:
    fd = memfd(bytes(range(256)) * 4, size=4096)
    try:
        region = OutputRegion(fd, 4096)
        first = region.take([16, 8])
        assert bytes(first) == bytes(range(16, 24))
        os.pwrite(fd, b"\xff" * 64, 0)  # the child writes on after the parent took its copy
        assert bytes(first) == bytes(range(16, 24))
        assert bytes(region.take([4000, 96])) == bytes(96)  # never written: zeros
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "entries",
    [
        [[-64, 8]],  # before the file
        [[0, -8]],  # a negative length
        [[4090, 8]],  # past its end
        [[2**62, 2**62]],  # offset + length overflow a 64-bit sum
        [[0, 8], [0, 8]],  # the same bytes twice: a few bytes of header, megabytes copied
        [[1024, 8], [0, 8]],  # out of order
        [[0, 16], [8, 8]],  # overlapping
    ],
    ids=["negative-offset", "negative-length", "past-end", "huge", "twice", "backwards", "overlap"],
)
def test_output_region_refuses_ranges_it_should_not_copy(entries: list) -> None:
    fd = memfd(size=4096)
    try:
        region = OutputRegion(fd, 4096)
        with pytest.raises(ProtocolError, match="outside its allowed range"):
            for entry in entries:
                region.take(entry)
    finally:
        os.close(fd)


@pytest.mark.parametrize("entry", [[True, 8], [0, 8.0], [0], [0, 8, 1], "0,8", {"o": 0}, [None, 8]])
def test_malformed_shared_blob_entries_are_bad_blob_tables(entry: object) -> None:
    fd = memfd(size=4096)
    try:
        with pytest.raises(ProtocolError, match="bad blob table"):
            parse_payload(frame_payload({"blobs": [entry]}), OutputRegion(fd, 4096), 1 << 20)
    finally:
        os.close(fd)


def test_shared_blobs_need_a_region_and_count_against_the_frame_cap() -> None:
    with pytest.raises(ProtocolError, match="does not have"):
        parse_payload(frame_payload({"blobs": [[0, 8]]}))
    fd = memfd(size=OUTPUT_REGION_BYTES)
    try:
        # Within the file, but more than one result may carry: too large, not copied.
        with pytest.raises(ProtocolError, match="exceeds"):
            parse_payload(frame_payload({"blobs": [[0, 2 << 20]]}), OutputRegion(fd, OUTPUT_REGION_BYTES), 1 << 20)
        header, blobs = parse_payload(
            frame_payload({"blobs": [3, [64, 16]]}, b"abc"), OutputRegion(fd, OUTPUT_REGION_BYTES), 1 << 20
        )
        assert bytes(blobs[0]) == b"abc" and bytes(blobs[1]) == bytes(16)
    finally:
        os.close(fd)


def test_large_arguments_go_to_the_input_region_and_small_ones_inline() -> None:
    small = np.arange(10.0)
    region = InputRegion()
    frame = encode_job("x = 1\n", [(0, "f", [small, X, [W]])], {}, region)
    assert region.size == -X.nbytes % 64 + X.nbytes + W.nbytes
    assert len(frame) < 4096  # the megabytes are not in the pipe
    fds = [memfd(), memfd()]
    try:
        region.install(*fds)
        data = os.pread(fds[0], region.size, 0)
        assert data[: X.nbytes] == X.tobytes()
        assert data[-W.nbytes :] == W.tobytes()
        assert os.fstat(fds[1]).st_size == OUTPUT_REGION_BYTES
        # Sealed: nobody can write, resize or unseal the arguments; the results file can
        # be written but never resized.
        for attempt in (lambda: os.pwrite(fds[0], b"x", 0), lambda: os.ftruncate(fds[0], 0),
                        lambda: os.ftruncate(fds[1], 0), lambda: os.ftruncate(fds[1], 1 << 30),
                        lambda: fcntl.fcntl(fds[0], fcntl.F_ADD_SEALS, 0)):
            with pytest.raises(PermissionError):
                attempt()
        # Only fresh files are used: never one that already holds something or is sealed.
        with pytest.raises(ValueError, match="not fresh"):
            InputRegion().install(*fds)
    finally:
        for fd in fds:
            os.close(fd)


# --- the real sandbox ----------------------------------------------------------------


@pytest.fixture(scope="module")
def runner():
    if not HAS_SANDBOX:
        pytest.skip("the sandbox's layers are not available on this host")
    sandbox = SandboxRunner()
    yield sandbox
    sandbox.close()


def run(runner: SandboxRunner, source: str, calls: list[tuple[str, list]], wall: float = 3.0, cpu: float = 2.0) -> list:
    job = Job(textwrap.dedent(source), [Call(name, args, wall, cpu) for name, args in calls])
    report = runner.run(job)
    assert report.load.status == "ok", report.load
    return report.calls


def check_healthy(runner: SandboxRunner) -> None:
    """The next submission, with large arrays both ways, is unharmed."""
    (result,) = run(runner, "def f(x, w):\n    return x @ w\n", [("f", [X, W])])
    assert result.status == "ok"
    np.testing.assert_array_equal(result.value.array, X @ W)


ROUND_TRIP = """
import numpy as np

def grads(x, w):
    return x + 1.0, w.T, x[:, ::3], {"k": np.asfortranarray(w)}, x.astype(np.float32), x[:2]

def echo(x):
    return x

def scale_in_place(x, w):
    x *= 2.0
    return None
"""


@needs_sandbox
def test_large_arrays_round_trip_exactly(runner: SandboxRunner) -> None:
    x, w = X.copy(), W.copy()
    results = run(runner, ROUND_TRIP, [("grads", [x, w]), ("scale_in_place", [x, w]), ("echo", [x])])
    grads, scaled, echo = results
    assert [r.status for r in results] == ["ok"] * 3
    value = grads.value
    for got, want in zip(value[:3], (X + 1.0, W.T, X[:, ::3])):
        assert isinstance(got, Returned) and got.array.dtype == want.dtype and got.array.shape == want.shape
        np.testing.assert_array_equal(got.array, want)
    np.testing.assert_array_equal(value[3]["k"].array, W)
    assert value[4].array.dtype == np.float32
    np.testing.assert_array_equal(value[4].array, X.astype(np.float32))
    np.testing.assert_array_equal(value[5].array, X[:2])
    assert grads.args_after == [UNCHANGED, UNCHANGED]
    # A change made in place is seen (and sent back whole), and it stays in the child:
    # the next call gets the argument as the parent sent it.
    np.testing.assert_array_equal(scaled.args_after[0].array, 2.0 * X)
    assert scaled.args_after[1] is UNCHANGED
    np.testing.assert_array_equal(echo.value.array, X)
    np.testing.assert_array_equal(x, X)
    # Arguments laid out in other ways arrive as the same values, in C order.
    odd = [X[:, ::2], np.asfortranarray(W), X.astype(np.float32), X.astype(">f8")]
    results = run(runner, ROUND_TRIP, [("echo", [a]) for a in odd])
    for result, want in zip(results, odd):
        assert result.status == "ok" and result.value.array.dtype == want.dtype
        np.testing.assert_array_equal(result.value.array, want)


@needs_sandbox
def test_results_beyond_the_shared_file_take_the_pipe(runner: SandboxRunner) -> None:
    big = RNG.standard_normal((1024, 512))  # 4 MiB: five of them overflow the results file
    assert 5 * big.nbytes > OUTPUT_REGION_BYTES
    results = run(runner, "def echo(x):\n    return x + 0.0\n", [("echo", [big])] * 6)
    for result in results:
        assert result.status == "ok"
        np.testing.assert_array_equal(result.value.array, big)


@needs_sandbox
def test_a_vjp_submission_scores_in_full() -> None:
    source = (ROOT / "tests" / "submissions" / "vjp" / "correct_plain.py").read_bytes()
    sandbox = SandboxRunner()
    try:
        result = grade_bytes(load_builtin("vjp"), source, seed=1, runner=sandbox)
    finally:
        sandbox.close()
    assert result["score"] == result["max_score"], result["messages"]


INPUT_ATTACK = """
import fcntl, mmap, os, stat

def attack(x):
    tried = []
    for fd in range(3, 64):
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            continue
        if not seals & fcntl.F_SEAL_WRITE:
            continue
        attempts = {
            "pwrite": lambda: os.pwrite(fd, b"hacked", 0),
            "shrink": lambda: os.ftruncate(fd, 0),
            "grow": lambda: os.ftruncate(fd, 1 << 30),
            "map-shared": lambda: mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE),
            "unseal": lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                tried.append(name + ":WORKED")
            except OSError:
                tried.append(name + ":denied")
    try:
        os.memfd_create("mine")
        tried.append("memfd_create:WORKED")
    except OSError:
        tried.append("memfd_create:denied")
    x[:] = 7.0  # a private copy of the pages: the file, and the next call's view, keep the real x
    return " ".join(sorted(set(tried)))

def first(x):
    return x[0, :4].copy()
"""


@needs_sandbox
def test_the_sealed_input_file_cannot_be_changed(runner: SandboxRunner) -> None:
    attack, first = run(runner, INPUT_ATTACK, [("attack", [X]), ("first", [X])])
    assert attack.status == "ok", attack
    words = attack.value.split()
    assert "pwrite:denied" in words and "memfd_create:denied" in words, words
    assert not [w for w in words if w.endswith("WORKED")], words
    np.testing.assert_array_equal(first.value.array, X[0, :4])
    check_healthy(runner)


def forged(entries: list, shape: list, count: int = 1) -> str:
    """A submission whose `f` writes its own result frame with this blob table, first."""
    value = {"t": [{"a": i, "d": "<f8", "s": shape} for i in range(count)]}
    head = {"kind": "call", "index": 0, "status": "ok", "seconds": 0.0, "value": value,
            "args_after": "=", "blobs": entries}
    return f"""
import json, os, stat, struct

def f(x):
    head = json.dumps({head!r}).encode()
    payload = struct.pack('<I', len(head)) + head
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, struct.pack('<Q', len(payload)) + payload)
        except OSError:
            pass
    return x

def g(x):
    return x * 3.0
"""


@needs_sandbox
@pytest.mark.parametrize(
    ("entries", "shape", "count", "words"),
    [
        ([[-64, 800]], [100], 1, "outside"),
        ([[OUTPUT_REGION_BYTES - 8, 800]], [100], 1, "outside"),
        ([[0, 2**62]], [2**59], 1, "exceeds"),
        ([[0, 800]], [10**6, 10**6], 1, "does not match"),  # a shape larger than the file
        ([[0, 800], [0, 800]], [100], 2, "outside"),  # the same bytes twice
        ([[True, 800]], [100], 1, "bad blob table"),
    ],
    ids=["negative", "past-end", "huge", "shape-too-large", "twice", "bool"],
)
def test_forged_shared_blob_tables_are_refused(
    runner: SandboxRunner, entries: list, shape: list, count: int, words: str
) -> None:
    results = run(runner, forged(entries, shape, count), [("f", [X]), ("g", [X])])
    assert results[0].status in ("protocol", "too_large") and words in results[0].detail, results[0]
    assert results[1].status == "ok"  # another function keeps its marks
    np.testing.assert_array_equal(results[1].value.array, 3.0 * X)
    check_healthy(runner)


SCRIBBLER = """
import fcntl, os, threading, time

def _scribble():
    fds = []
    for fd in range(3, 64):
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if seals & fcntl.F_SEAL_GROW and not seals & fcntl.F_SEAL_WRITE:  # the results file
                fds.append(os.dup(fd))  # kept open after returning, too
        except OSError:
            pass
    junk = b"\\xff" * (1 << 20)
    while True:
        for fd in fds:
            for offset in range(0, 16 << 20, 1 << 20):
                try:
                    os.pwrite(fd, junk, offset)
                except OSError:
                    pass
        time.sleep(0)

def f(x):
    if not threading.active_count() > 1:
        threading.Thread(target=_scribble, daemon=True).start()
        time.sleep(0.05)
    return x + 1.0
"""


@needs_sandbox
def test_writing_into_the_results_file_after_reporting_spoils_only_ones_own_results(runner: SandboxRunner) -> None:
    results = run(runner, SCRIBBLER, [("f", [X])] * 4)
    for result in results:
        # Garbage values at worst (copied before they were looked at), never a fault of
        # the grader; the NaN pattern 0xff.. is a perfectly valid float64.
        assert result.status == "ok", result
        assert result.value.array.shape == X.shape and result.value.array.dtype == X.dtype
    check_healthy(runner)


@needs_sandbox
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("real = os.pwritev\n"
         "def half(fd, bufs, offset):\n"
         "    real(fd, [memoryview(bufs[0])[:4096]], offset)\n"
         "    os.kill(os.getpid(), 9)\n"
         "os.pwritev = half", "crashed"),
        ("os.pwritev = lambda *args: time.sleep(100)", "timeout"),
    ],
    ids=["dies", "hangs"],
)
def test_dying_or_hanging_mid_write_is_a_verdict(runner: SandboxRunner, body: str, status: str) -> None:
    source = "import os, time\n\ndef f(x):\n" + textwrap.indent(body, "    ")
    source += "\n    return x + 1.0\n\ndef g(x):\n    return x - 1.0\n"
    results = run(runner, source, [("f", [X]), ("g", [X])], wall=1.0)
    assert results[0].status == status, results[0]
    assert results[1].status == "ok"
    np.testing.assert_array_equal(results[1].value.array, X - 1.0)
    check_healthy(runner)


@needs_sandbox
def test_a_closed_results_file_falls_back_to_the_pipe(runner: SandboxRunner) -> None:
    source = """
import fcntl, os

def f(x):
    for fd in range(3, 64):
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            os.close(fd)
        except OSError:
            pass
    return x * 5.0
"""
    (result,) = run(runner, source, [("f", [X])])
    assert result.status == "ok"
    np.testing.assert_array_equal(result.value.array, X * 5.0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@needs_sandbox
def test_no_memfd_is_left_behind(runner: SandboxRunner) -> None:
    check_healthy(runner)
    zygote = runner._zygote
    assert zygote is not None

    def zygote_fds() -> int:
        assert zygote.settle(5.0)
        zygote.send({"op": "ping"})
        pong = zygote.receive(5.0, "pong")
        assert pong is not None
        return pong[0]["fds"]

    before, zygote_before = open_fds(), zygote_fds()
    assert zygote_before > 0
    for _ in range(6):
        check_healthy(runner)
        run(runner, SCRIBBLER, [("f", [X])])  # keeps a copy of its results file open
    assert runner._zygote is zygote, "the zygote was replaced"
    assert open_fds() == before
    # The zygote reports a child's exit before it has forked the replacement spare, whose
    # pipes and memfds are then still to come: wait for its steady state. A leak never
    # gets back to it (it only ever adds fds).
    deadline = time.monotonic() + 10.0
    now = zygote_fds()
    while now != zygote_before and time.monotonic() < deadline:
        time.sleep(0.05)
        now = zygote_fds()
    assert now == zygote_before
    memfds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:"):
                memfds.append(name)
        except FileNotFoundError:  # the listing's own fd
            pass
    assert memfds == []


@needs_sandbox
def test_small_jobs_do_not_use_the_input_file(runner: SandboxRunner) -> None:
    region = InputRegion()
    encode_job("", [(0, "f", [np.ones(SHARED_MIN_BYTES // 8)])], {}, region)
    assert region.size == 0  # exactly at the threshold: the pipe
    source = """
import fcntl, os

def f(x):
    found = 0
    for fd in range(3, 64):
        try:
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE:
                found += 1
        except OSError:
            pass
    return found
"""
    (result,) = run(runner, source, [("f", [np.ones(10)])])
    assert result.value == 0


@needs_sandbox
def test_spares_reserve_the_input_memory_the_last_job_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Allocating a large job's input pages cost the parent about a millisecond while the
    # student waited. Spares forked after such a job allocate them while they wait; the
    # files stay empty and unsealed, as the parent requires of a fresh pair. And the parent
    # lets go of the sealed input as soon as it is filled: its pages are then freed by the
    # child's exit, off the clock.
    import grader.sandbox as sandbox_module

    seen: list[list[tuple[int, int, int]]] = []
    input_fds: list[int] = []
    still_open: list[str] = []
    connect, sealed = sandbox_module._ZygoteChild.connect, sandbox_module._ZygoteChild.input_sealed

    def recording_connect(self) -> None:  # type: ignore[no-untyped-def]
        connect(self)
        input_fds.append(self.input_fd)
        seen.append([(st.st_size, st.st_blocks * 512, fcntl.fcntl(fd, fcntl.F_GET_SEALS))
                     for fd in (self.input_fd, self.output_fd) for st in [os.fstat(fd)]])

    def recording_sealed(self, input_bytes: int) -> None:  # type: ignore[no-untyped-def]
        sealed(self, input_bytes)
        try:
            still_open.append(os.readlink(f"/proc/self/fd/{input_fds[-1]}"))
        except FileNotFoundError:
            pass

    monkeypatch.setattr(sandbox_module._ZygoteChild, "connect", recording_connect)
    monkeypatch.setattr(sandbox_module._ZygoteChild, "input_sealed", recording_sealed)
    sandbox = SandboxRunner()
    try:
        for _ in range(5):
            (result,) = run(sandbox, "def f(x, w):\n    return x @ w\n", [("f", [X, W])])
            np.testing.assert_array_equal(result.value.array, X @ W)
            time.sleep(0.2)  # the replacement spare gets ready
        assert sandbox._zygote is not None and sandbox._zygote.input_bytes == X.nbytes + W.nbytes
    finally:
        sandbox.close()
    assert not any("job-input" in target for target in still_open), still_open
    assert all(size == 0 and seals == 0 for pair in seen for size, _, seals in pair)
    # The two spares forked before the zygote heard of the first job have nothing
    # reserved; the fourth job's spare was forked after it. Results are never reserved.
    assert [blocks for _, blocks, _ in seen[0]] == [0, 0]
    assert seen[-1][0][1] >= X.nbytes + W.nbytes and seen[-1][1][1] == 0


@needs_sandbox
def test_a_submission_cannot_see_how_much_an_earlier_one_returned() -> None:
    # A results file the previous submission filled must not leave a trace that the next
    # one can read (here: pages allocated in its own, still empty, results file).
    probe = """
import fcntl, os

def blocks():
    found = []
    for fd in range(3, 64):
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            continue
        found.append(os.fstat(fd).st_blocks)
    return repr(found)
"""
    sandbox = SandboxRunner()
    try:
        for _ in range(3):
            (big,) = run(sandbox, "import numpy as np\ndef f():\n    return np.ones((1024, 1024))\n", [("f", [])])
            assert big.status == "ok"
            time.sleep(0.2)
        for _ in range(3):
            (seen,) = run(sandbox, probe, [("blocks", [])])
            assert seen.status == "ok" and seen.value == "[0]", seen  # its own results file, empty
    finally:
        sandbox.close()
