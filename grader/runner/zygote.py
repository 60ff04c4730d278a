"""The sandbox zygote: started once inside bubblewrap, forks one confined child per job.

Standalone (standard library, NumPy, and `child`/`confine` beside it). NumPy is imported
here once, so each child starts with it loaded; that is what makes a submission cost
milliseconds instead of a fresh interpreter's ~150 ms.

The zygote keeps SPARES children forked ahead of time. A spare closes every fd but its
two pipes, moves into its own session and scratch directory, confines itself (Landlock,
seccomp), warms up and then blocks reading its job pipe, so fork and confinement are off
the critical path. With two, a job that follows another at once still finds one ready:
the replacement for a used spare is forked once its child has exited, and only when no
control message is waiting, so it never delays handing over a spare. Spares run no
student code, and a running job cannot reach them (Landlock scopes signals and files,
seccomp denies ptrace and the like).

Control channel: a SOCK_SEQPACKET socket from the trusted parent, one JSON message per
packet. `run` answers `started` with the spare's pipe ends (SCM_RIGHTS): the write end of
its job pipe and the read end of its result pipe, so the child's data flows straight to
the parent and the zygote never handles it; and its two memfds, empty, for large arrays
(the parent fills and seals the input one, sizes and seals the output one; the zygote
keeps no copy). `run` may carry `expect`, the bytes of arguments the parent's previous job
put in its input memfd: spares forked from then on allocate that many pages of their own
input memfd, so that the parent filling it does not allocate them on the critical path.
`kill` SIGKILLs a child, `ping` checks health; the zygote reports `exited` with the raw
wait status. The child applies its job's rlimits after reading the job, before loading the
student's file.
"""

import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time

import numpy  # noqa: F401  (imported once, inherited by every child)

import child
import confine

MAX_MESSAGE = 65536
PIPE_BYTES = 1 << 20
JOB_BUFFER = 256 << 10  # a spare's receive buffer; a larger job gets one of its own
MIN_FREE_FRACTION = 0.5  # of scratch blocks and inodes; below it the zygote retires
SPARES = 2
CPU_PRESSURE = "/proc/pressure/cpu"
CONTENDED = 0.5  # share of the time some task waited for a CPU, above which CPUs are scarce
MAX_RESERVE = 8 << 20  # bytes a spare reserves of its input memfd, at most: the cgroup counts them
FALLOC_FL_KEEP_SIZE = 1

_fallocate = ctypes.CDLL(None, use_errno=True).fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
_fallocate.restype = ctypes.c_int


class Retire(Exception):
    """The zygote can no longer promise a clean child; it exits and the parent starts a
    fresh one (with a fresh tmpfs)."""


def remove_tree(path):
    """Delete a child's scratch whatever it did to it; Retire if anything survives."""

    def unlock(func, target, _exc):
        # Children cannot chmod (seccomp), but a mode must never keep a tree alive.
        try:
            os.chmod(os.path.dirname(target) or ".", 0o700)
            os.chmod(target, 0o700)
        except OSError:
            pass
        func(target)

    try:
        # Most jobs leave their scratch empty (the capture file is unnamed): one syscall
        # then, where rmtree's Python layers dirty ~10 pages of the zygote per job, each a
        # copy-on-write fault while spares share them.
        os.rmdir(path)
        return
    except OSError:
        pass
    import shutil  # only for a job that left files: kept out of what every child inherits

    try:
        shutil.rmtree(path, onerror=unlock)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Retire("cannot remove %s: %s" % (path, exc)) from None
    if os.path.lexists(path):
        raise Retire("%s survived its cleanup" % path)


def check_scratch(root):
    stats = os.statvfs(root)
    if stats.f_blocks and stats.f_bavail < MIN_FREE_FRACTION * stats.f_blocks:
        raise Retire("scratch space is low")
    if stats.f_files and stats.f_favail < MIN_FREE_FRACTION * stats.f_files:
        raise Retire("scratch inodes are low")


def send(ctl, message, fds=()):
    data = json.dumps(message).encode("utf-8")
    if fds:
        socket.send_fds(ctl, [data], list(fds))
    else:
        ctl.send(data)


class CpuPressure:
    """Whether tasks have been waiting for a CPU since the last look, from the kernel's
    pressure stall accounting (the share of wall time some runnable task was not running).
    Without it (no PSI in the kernel) nothing is ever called contended."""

    def __init__(self, path=CPU_PRESSURE):
        self.path = path
        self.last = self.sample()

    def sample(self):
        """(microseconds some task has waited for a CPU since boot, monotonic seconds)."""
        try:
            with open(self.path, "rb") as f:
                text = f.read(512)
        except OSError:
            return None
        for line in text.split(b"\n"):
            if line.startswith(b"some "):
                for field in line.split():
                    if field.startswith(b"total="):
                        try:
                            return int(field[6:]), time.monotonic()
                        except ValueError:
                            return None
        return None

    def contended(self):
        last, now = self.last, self.sample()
        self.last = now
        if last is None or now is None or now[1] <= last[1]:
            return False
        return (now[0] - last[0]) / ((now[1] - last[1]) * 1e6) >= CONTENDED


class Zygote:
    def __init__(self, ctl, config):
        self.ctl = ctl
        self.config = config
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.children = {}  # pid -> (job id or None for a spare, scratch dir)
        self.spares = []  # (pid, (job write end, result read end, input memfd, output memfd)), oldest first
        self.replenish = False  # a job's child has exited: fork spares up to SPARES
        self.serial = 0
        self.pressure = CpuPressure()
        self.reserve = 0  # bytes new spares reserve of their input memfd

    def make_spare(self):
        self.serial += 1
        scratch = os.path.join(self.config["scratch_root"], "job-%d" % self.serial)
        os.mkdir(scratch, 0o700)
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        # Made here, because a confined child may not make memfds (seccomp).
        input_fd = os.memfd_create("job-input", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        output_fd = os.memfd_create("job-results", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        # Objects the child inherits are frozen out of the garbage collector: otherwise its
        # first collection writes to every one of them, copying most of the zygote's pages.
        gc.freeze()
        # The full warm-up costs a spare several times the CPU it later saves its job: it
        # is worth it only on an otherwise idle CPU. A spare forked while a job runs (jobs
        # back to back), or while the machine's CPUs are contended (a grading burst, where
        # the spare would take the CPU from the worker's own work), does the cheap part only.
        full = not any(owner is not None for owner, _ in self.children.values()) and not self.pressure.contended()
        for fd in (job_w, result_w):
            # A whole job's arguments and results fit, so neither side stalls on the other.
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass
        inherited = listed_fds()  # what the child starts with: the zygote forks no threads
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = run_child(job_r, result_w, scratch, self.config, (input_fd, output_fd), full, inherited,
                                 self.reserve)
            finally:
                os._exit(code)
        os.close(job_r)
        os.close(result_w)
        self.children[pid] = (None, scratch)
        self.spares.append((pid, (job_w, result_r, input_fd, output_fd)))

    def expect(self, size):
        """Remember how many bytes of arguments the parent's last job sent through its
        input memfd (a malformed hint reserves nothing)."""
        self.reserve = min(size, MAX_RESERVE) if type(size) is int and size >= 0 else 0

    def run(self, job_id):
        if not self.spares:
            self.make_spare()
        pid, fds = self.spares.pop(0)
        self.children[pid] = (job_id, self.children[pid][1])
        send(self.ctl, {"op": "started", "id": job_id, "pid": pid}, fds)
        for fd in fds:
            os.close(fd)
        # The replacement is forked when this child exits (see loop), while the parent
        # compares results: forking now would compete with the job for the CPU.

    def kill(self, job_id):
        for pid, (owner, _) in self.children.items():
            if owner == job_id:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def reap(self):
        reaped = False
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            job_id, scratch = self.children.pop(pid, (None, None))
            if scratch:
                remove_tree(scratch)  # nothing a child wrote outlives it
                reaped = True
            if any(spare[0] == pid for spare in self.spares):
                # A spare dies unused only if it could not confine itself: forking more
                # would fail the same way, so stop and let the parent report it.
                raise Retire("a spare child exited before use (status %d)" % status)
            send(self.ctl, {"op": "exited", "id": job_id, "status": status})
            self.replenish = True
        if reaped and not any(owner is not None for owner, _ in self.children.values()):
            # Only with no job running: a job may still be filling its own scratch, and a
            # child that exited a moment ago may not be reaped (and its tree removed) yet.
            check_scratch(self.config["scratch_root"])

    def loop(self):
        # What every child does first, done once here: its lazily built state (the seccomp
        # program's template, caches of the compiler and of NumPy) is then inherited.
        child.warm_up()
        confine.filter_for(os.getpid())
        for _ in range(SPARES):
            self.make_spare()
        send(self.ctl, {"op": "ready", "landlock_abi": confine.landlock_abi(), "pid": os.getpid()})
        while True:
            if self.replenish and len(self.spares) >= SPARES:
                self.replenish = False
            # A missing spare is forked only when no message waits: a "run" comes first.
            readable, _, _ = select.select([self.ctl, self.wake_r], [], [], 0 if self.replenish else None)
            if not readable:
                self.make_spare()
                continue
            if self.wake_r in readable:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            self.reap()
            if self.ctl not in readable:
                continue
            try:
                data = self.ctl.recv(MAX_MESSAGE)
            except InterruptedError:
                continue
            if not data:
                break  # the parent is gone
            message = json.loads(data.decode("utf-8"))
            op = message.get("op")
            if op == "run":
                if "expect" in message:
                    self.expect(message["expect"])
                self.run(message["id"])
            elif op == "kill":
                self.kill(message.get("id"))
            elif op == "ping":
                jobs = sum(1 for owner, _ in self.children.values() if owner is not None)
                send(self.ctl, {"op": "pong", "children": len(self.children), "jobs": jobs, "spares": len(self.spares),
                                "fds": open_fds()})
        self.kill_all()

    def kill_all(self):
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def open_fds():
    """How many fds the zygote holds (a leak check for the tests), -1 if unknown."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd
    except OSError:
        return -1


def listed_fds():
    """The fds this process holds, from /proc/self/fd (None without /proc). The zygote lists
    them for a spare just before forking it: listing them in the child cost ~0.3 ms of
    copy-on-write faults."""
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return None


def close_all_but(keep, open_fds=None):
    """No fd of the zygote's (control socket, wake pipe, other pipes) may survive into
    student code. Closes `open_fds` (what the zygote held when it forked), else every fd
    below the limit: closerange over the whole fd space costs tens of milliseconds where
    the kernel offers no close_range fast path."""
    if open_fds is None:
        open_fds = range(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    for fd in open_fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def reserve_pages(fd, size):
    """Allocate the first `size` bytes of the input memfd without changing its size (it
    stays empty, as the parent expects it): the parent's writes then fill pages that exist.
    Only the input: the child closes it before any student code runs, so no submission can
    see what an earlier one sent (the results file stays open to student code, and what
    it held would have told the next submission how large another's results were). The
    hint comes from the parent's own encoding, never from a child. Best effort: a kernel
    without it, or a parent that has already sealed the file, leaves it as it was; a
    parent filling it meanwhile only waits for pages it would have allocated itself."""
    if size > 0:
        _fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size)


def run_child(job_fd, result_fd, scratch, config, regions, full_warm_up, inherited, reserve=0):
    """A spare's life: confine itself (closing `inherited`, the fds the zygote held when it
    forked, but its own), reserve the shared memory its job will likely need, warm up, then
    run the job it is given."""
    os.setsid()  # its own process group and session: a kill(0) can never reach the zygote
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    close_all_but({0, 1, 2, job_fd, result_fd, *regions}, inherited)
    os.chdir(scratch)
    try:
        confine.no_new_privs()
        confine.landlock(config["read_only"], [scratch], config.get("minimum_landlock_abi", 1))
        confine.seccomp_filter(os.getpid())
    except Exception as exc:  # fail closed: no student code runs unconfined
        child.write_frame(result_fd, {"kind": "confinement_failed", "detail": str(exc)[:500]}, [])
        return 3
    child.write_frame(result_fd, {"kind": "confined"}, [])
    output = child.Output(2048)  # the capture file, made while still a spare
    buffer = bytearray(JOB_BUFFER)  # zero-filled: its pages are faulted in now, not in the job
    reserve_pages(regions[0], reserve)
    # Copy-on-write faults of the harness's hot paths, off the critical path; cut short
    # when the job arrives (jobs back to back), which it must not delay.
    child.warm_up(stop=lambda: bool(select.select([job_fd], [], [], 0)[0]), full=full_warm_up)
    job = child.read_job(job_fd, buffer)
    os.close(job_fd)
    del buffer
    if job is None:
        return 2
    header, blobs = job
    try:
        originals = child.attach_regions(header, blobs, *regions)
    except Exception as exc:  # never the student's fault: no student code has run yet
        child.write_frame(result_fd, {"kind": "confinement_failed", "detail": "shared memory: %s" % exc}, [])
        return 3
    try:
        confine.set_rlimits_for(header.get("limits", {}))
    except Exception as exc:  # fail closed, and visibly: the parent treats this as a sandbox fault
        child.write_frame(result_fd, {"kind": "confinement_failed", "detail": "rlimits: %s" % exc}, [])
        return 3
    return child.serve(header, blobs, result_fd, output, originals)


def main():
    ctl = socket.socket(fileno=int(sys.argv[1]))
    zygote = Zygote(ctl, json.loads(sys.argv[2]))
    try:
        zygote.loop()
    except Exception as exc:  # Retire, or anything unexpected: never serve in doubt
        sys.stderr.write("zygote retiring: %s\n" % exc)
        zygote.kill_all()
        os._exit(1)


if __name__ == "__main__":
    main()
