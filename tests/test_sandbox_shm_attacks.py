"""Hostile submissions against the sandbox's shared-memory path, beyond test_sandbox_shm.

Each submission here tries, from inside a confined child, what a student who wants to
change a job's inputs, leak data into or out of a later job, or hold memory outside its
limits would try: other ways to write the sealed input file (a reopened descriptor,
fallocate, a read-only shared mapping made writable, splice-like copies), ways to grow the
results file, other processes' descriptors through /proc, and new processes. The probe
reports what it tried; any "WORKED" is a hole.
"""

from __future__ import annotations

import numpy as np

from grader.sandbox import SandboxRunner
from test_sandbox_shm import needs_sandbox, runner  # noqa: F401 - runner is a fixture
from test_sandbox_shm import run as run_job

RNG = np.random.default_rng(11)
X = RNG.standard_normal((256, 384))


def run(runner: SandboxRunner, source: str, calls: list[tuple[str, list]]) -> list:
    # A probe makes many system calls: more time than the shared-memory tests give.
    return run_job(runner, source, calls, wall=5.0, cpu=4.0)


def words_of(result) -> list[str]:
    assert result.status == "ok", result
    assert isinstance(result.value, list) and all(isinstance(w, str) for w in result.value), result.value
    return result.value


PROBE_LIB = r'''
import ctypes, fcntl, os, tempfile

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int)
libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
MAP_FAILED = ctypes.c_void_p(-1).value
PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1
KEEP_SIZE, PUNCH_HOLE = 1, 2

out = []

def note(name, ok):
    out.append(name + (":WORKED" if ok else ":denied"))

def attempt(name, fn):
    try:
        result = fn()
    except OSError:
        note(name, False)
        return
    note(name, result is not False)

def sys_ok(value):
    return value == 0

RESULTS_BYTES = 16 << 20

def memfds(results):
    """The fds of the input file (results=False) or of the results file: told apart by
    size, not by their seals, which are what is under test."""
    found = []
    for fd in range(3, 256):
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)  # shared memory, not a pipe
            size = os.fstat(fd).st_size
        except OSError:
            continue
        if size and (size == RESULTS_BYTES) == results:
            found.append(fd)
    assert found, "no such file found"
    return found
'''


INPUT_PROBE = PROBE_LIB + r'''
def attack(x):
    for fd in memfds(results=False):
        size = os.fstat(fd).st_size
        before = os.pread(fd, size, 0)
        attempt("pwrite", lambda: os.pwrite(fd, b"hacked", 0))
        attempt("ftruncate", lambda: os.ftruncate(fd, size + 4096))
        attempt("fallocate-punch", lambda: sys_ok(libc.fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 0, 4096)))
        attempt("fallocate-grow", lambda: sys_ok(libc.fallocate(fd, 0, size, 1 << 20)))
        attempt("fallocate-keep-size", lambda: sys_ok(libc.fallocate(fd, KEEP_SIZE, size, 1 << 20)))
        attempt("add-future-write-off", lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0x0010))  # F_SEAL_FUTURE_WRITE
        def reopen():
            new = os.open("/proc/self/fd/%d" % fd, os.O_RDWR)
            try:
                os.pwrite(new, b"hacked", 0)
            finally:
                os.close(new)
        attempt("reopen-write", reopen)
        def mprotect_shared():
            addr = libc.mmap(None, 4096, PROT_READ, MAP_SHARED, fd, 0)
            if addr in (None, MAP_FAILED):
                raise OSError(ctypes.get_errno(), "mmap")
            if libc.mprotect(addr, 4096, PROT_READ | PROT_WRITE) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")
            ctypes.memmove(addr, b"hacked", 6)
        attempt("mprotect-shared", mprotect_shared)
        def mremap_shared():
            addr = libc.mmap(None, 4096, PROT_READ, MAP_SHARED, fd, 0)
            if addr in (None, MAP_FAILED):
                raise OSError(ctypes.get_errno(), "mmap")
            grown = libc.mremap(addr, 4096, size + (1 << 20), 1)  # MREMAP_MAYMOVE
            if grown in (None, MAP_FAILED):
                raise OSError(ctypes.get_errno(), "mremap")
            return libc.mprotect(grown, 4096, PROT_READ | PROT_WRITE) == 0 or False
        attempt("mremap-shared", mremap_shared)
        def proc_mem():
            addr = libc.mmap(None, 4096, PROT_READ, MAP_SHARED, fd, 0)
            if addr in (None, MAP_FAILED):
                raise OSError(ctypes.get_errno(), "mmap")
            with open("/proc/self/mem", "r+b", buffering=0) as mem:
                mem.seek(addr)
                mem.write(b"hacked")
        attempt("proc-self-mem", proc_mem)
        def copy_in():
            with tempfile.TemporaryFile(dir=".") as src:
                src.write(b"hacked" * 100)
                src.flush()
                return os.copy_file_range(src.fileno(), fd, 600, 0, 0) > 0 or False
        attempt("copy-file-range", copy_in)
        def sendfile_in():
            with tempfile.TemporaryFile(dir=".") as src:
                src.write(b"hacked" * 100)
                src.flush()
                os.lseek(fd, 0, os.SEEK_SET)
                return os.sendfile(fd, src.fileno(), 0, 600) > 0 or False
        attempt("sendfile", sendfile_in)
        def map_files():
            for name in os.listdir("/proc/self/map_files"):
                try:
                    new = os.open("/proc/self/map_files/" + name, os.O_RDWR)
                except OSError:
                    continue
                try:
                    os.pwrite(new, b"hacked", 0)
                finally:
                    os.close(new)
        attempt("map-files", map_files)
        note("file-changed", os.pread(fd, size, 0) != before)
    x[:] = 7.0
    return sorted(set(out))  # a list: each str is clipped to 200 characters

def first(x):
    return x[0, :4].copy()
'''


@needs_sandbox
def test_no_way_around_the_input_seals(runner: SandboxRunner) -> None:
    attack, first = run(runner, INPUT_PROBE, [("attack", [X]), ("first", [X])])
    words = words_of(attack)
    assert "file-changed:denied" in words, words
    assert not [w for w in words if w.endswith("WORKED")], words
    np.testing.assert_array_equal(first.value.array, X[0, :4])


OUTPUT_PROBE = PROBE_LIB + r'''
def attack(x):
    for fd in memfds(results=True):
        size = os.fstat(fd).st_size
        attempt("ftruncate-grow", lambda: os.ftruncate(fd, size * 4))
        attempt("ftruncate-shrink", lambda: os.ftruncate(fd, 0))
        attempt("pwrite-past-end", lambda: os.pwrite(fd, b"x", size))
        attempt("fallocate-grow", lambda: sys_ok(libc.fallocate(fd, 0, size, 1 << 20)))
        attempt("fallocate-keep-size", lambda: sys_ok(libc.fallocate(fd, KEEP_SIZE, size, 1 << 20)))
        attempt("add-seal", lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE))
        def reopen_grow():
            new = os.open("/proc/self/fd/%d" % fd, os.O_RDWR)
            try:
                os.ftruncate(new, size * 4)
            finally:
                os.close(new)
        attempt("reopen-grow", reopen_grow)
        note("size-changed", os.fstat(fd).st_size != size)
    return sorted(set(out))  # a list: each str is clipped to 200 characters
'''


@needs_sandbox
def test_the_results_file_cannot_grow_or_shrink(runner: SandboxRunner) -> None:
    (attack,) = run(runner, OUTPUT_PROBE, [("attack", [X])])
    words = words_of(attack)
    assert "size-changed:denied" in words, words
    assert not [w for w in words if w.endswith("WORKED")], words


PROCESS_PROBE = PROBE_LIB + r'''
import signal

def attack(x):
    attempt("proc-listing", lambda: bool(os.listdir("/proc")))
    me = os.getpid()
    pids = set()
    try:
        pids.update(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        pass
    # Unlisted, guessed: the zygote (our parent) and the spares forked around us.
    pids.update([1, os.getppid(), *range(max(2, me - 40), me + 40)])
    pids.discard(me)
    for pid in sorted(pids):
        def guess():
            for n in range(64):
                try:
                    os.close(os.open("/proc/%d/fd/%d" % (pid, n), os.O_RDONLY))
                    return True
                except FileNotFoundError:
                    continue
            return False
        attempt("proc-fd-guess", guess)
    for pid in sorted(pids):
        for what in ("fd", "map_files"):
            def look():
                for name in os.listdir("/proc/%d/%s" % (pid, what)):
                    new = os.open("/proc/%d/%s/%s" % (pid, what, name), os.O_RDONLY)
                    os.close(new)
                    return True
                return False
            attempt("proc-%s" % what, look)
        attempt("proc-mem", lambda: open("/proc/%d/mem" % pid, "rb").close())
    # New processes, which could carry a memfd past this job: all but threads are denied.
    SIGCHLD, CLONE_VM, CLONE_VFORK, CLONE_FILES = 17, 0x100, 0x4000, 0x400
    for name, nr, args in (
        ("clone-process", 56, (SIGCHLD, 0, 0, 0, 0)),
        ("clone-shared-files", 56, (SIGCHLD | CLONE_FILES, 0, 0, 0, 0)),
        ("clone-vfork", 56, (SIGCHLD | CLONE_VM | CLONE_VFORK, 0, 0, 0, 0)),
        ("fork", 57, ()),
        ("vfork", 58, ()),
        ("clone3", 435, ()),
    ):
        if nr == 435:
            # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, ...
            cargs = (ctypes.c_uint64 * 11)(0, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
            pid = libc.syscall(ctypes.c_long(nr), ctypes.byref(cargs), ctypes.c_size_t(88))
        else:
            pid = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        if pid == 0:
            os._exit(0)  # the new process: never run on
        note(name, pid > 0)
    return sorted(set(out))  # a list: each str is clipped to 200 characters
'''


@needs_sandbox
def test_no_other_process_or_new_process_is_reachable(runner: SandboxRunner) -> None:
    (attack,) = run(runner, PROCESS_PROBE, [("attack", [X])])
    words = words_of(attack)
    assert not [w for w in words if w.endswith("WORKED")], words


LEAVE_BEHIND = r'''
import fcntl, os, threading, time

MARK = b"LEFT-BEHIND-BY-AN-EARLIER-JOB!!!" * 2048  # 64 KiB

def _keep(fds):
    while True:
        for fd in fds:
            for offset in range(0, 16 << 20, len(MARK)):
                try:
                    os.pwrite(fd, MARK, offset)
                except OSError:
                    pass
        time.sleep(0.001)

def leave(x):
    fds = []
    for fd in range(3, 256):
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            fds.append(os.dup(fd))
        except OSError:
            pass
    threading.Thread(target=_keep, args=(fds,), daemon=True).start()
    time.sleep(0.05)
    return x + 1.0
'''

LOOK = r'''
import fcntl, os

def look(x):
    seen = []
    for fd in range(3, 256):
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            continue
        size = os.fstat(fd).st_size
        for offset in range(0, size, 1 << 20):
            if b"LEFT-BEHIND" in os.pread(fd, 1 << 20, offset):
                seen.append(fd)
                break
    return " ".join(map(str, seen)) or "clean"
'''


@needs_sandbox
def test_a_later_job_never_sees_an_earlier_jobs_shared_memory(runner: SandboxRunner) -> None:
    for _ in range(3):
        (left,) = run(runner, LEAVE_BEHIND, [("leave", [X])])
        assert left.status == "ok"
        (looked,) = run(runner, LOOK, [("look", [X])])
        assert looked.status == "ok" and looked.value == "clean", looked
