"""The sandbox: a zygote inside bubblewrap that forks one confined child per submission.

Layers, outside in: bubblewrap namespaces (no network, own PIDs, uid 65534 with no
capabilities, an empty environment, only /usr, the interpreter, NumPy, the harness and a
tmpfs scratch mounted); a pids/memory cgroup around it where the host allows one; in each
child rlimits, PR_SET_NO_NEW_PRIVS, Landlock and a seccomp filter (`runner/confine.py`);
from outside, a wall-clock deadline per call enforced with SIGKILL.

Configuration (environment variables):
  GRADER_SANDBOX          "bwrap" (default) or "insecure-subprocess" (development only:
                          a plain subprocess, logged loudly at every start)
  GRADER_SANDBOX_REQUIRE  layers that must be present or grading is refused; default
                          "bwrap,userns,landlock,seccomp"; add "cgroup" in production
  GRADER_LANDLOCK_MIN_ABI lowest acceptable Landlock ABI (default 1)
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy

from grader.runner import confine
from grader.runner.base import Job, RunReport
from grader.runner.session import SandboxFailure, run_job
from grader.runner.subprocess_runner import SubprocessRunner, describe_exit

log = logging.getLogger("grader.sandbox")

HARNESS = Path(__file__).parent / "runner"
HARNESS_FILES = ("child.py", "confine.py", "zygote.py")
SANDBOX_SITE = "/sandbox/site"
SANDBOX_HARNESS = "/sandbox/harness"
SCRATCH_ROOT = "/tmp"
SCRATCH_BYTES = 64 << 20
DEFAULT_REQUIRE = ("bwrap", "userns", "landlock", "seccomp")
LAYERS = ("bwrap", "userns", "landlock", "seccomp", "cgroup")
START_TIMEOUT = 20.0
PIDS_MAX = 64
CGROUP_MEMORY_SLACK_MB = 256  # the zygote and NumPy, on top of one child's limit


class SandboxUnavailable(RuntimeError):
    """The host lacks a required layer; the message says which and how to fix it."""


@dataclass
class Probe:
    """What the host provides, layer by layer, with a sentence each."""

    layers: dict[str, tuple[bool, str]] = field(default_factory=dict)
    landlock_abi: int = 0

    def ok(self, layer: str) -> bool:
        return self.layers.get(layer, (False, ""))[0]

    def missing(self, required: tuple[str, ...]) -> list[str]:
        return [layer for layer in required if not self.ok(layer)]

    def describe(self) -> str:
        return "\n".join(f"  {name:<9} {'ok ' if ok else 'NO '} {detail}" for name, (ok, detail) in self.layers.items())


FIXES = {
    "bwrap": "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)",
    "userns": "allow user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 also "
    "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap)",
    "landlock": "boot a kernel with Landlock enabled (5.13+, CONFIG_SECURITY_LANDLOCK=y, 'landlock' in the lsm= list)",
    "seccomp": "use an x86_64 kernel with CONFIG_SECCOMP_FILTER=y",
    "cgroup": "delegate a writable cgroup to the worker's user (systemd: Delegate=yes), or run the worker as root",
}


def minimum_landlock_abi() -> int:
    raw = os.environ.get("GRADER_LANDLOCK_MIN_ABI", "1")
    try:
        value = int(raw)
    except ValueError:
        raise SandboxUnavailable(f"GRADER_LANDLOCK_MIN_ABI must be a whole number, not {raw!r}") from None
    if value < 1:
        raise SandboxUnavailable("GRADER_LANDLOCK_MIN_ABI must be at least 1")
    return value


def required_layers() -> tuple[str, ...]:
    raw = os.environ.get("GRADER_SANDBOX_REQUIRE")
    if raw is None:
        return DEFAULT_REQUIRE
    layers = tuple(x.strip() for x in raw.split(",") if x.strip())
    unknown = [x for x in layers if x not in LAYERS]
    if unknown:
        raise SandboxUnavailable(f"GRADER_SANDBOX_REQUIRE names unknown layers: {', '.join(unknown)} (known: {', '.join(LAYERS)})")
    return layers


def probe_host() -> Probe:
    result = Probe()
    bwrap = shutil.which("bwrap")
    if not bwrap:
        result.layers["bwrap"] = (False, "bwrap is not installed")
        result.layers["userns"] = (False, "not tested without bwrap")
    else:
        result.layers["bwrap"] = (True, bwrap)
        try:
            proc = subprocess.run(
                [bwrap, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--die-with-parent",
                 "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                 "--symlink", "usr/lib64", "/lib64", "/usr/bin/true"],
                env={}, capture_output=True, text=True, timeout=30,
            )
            ok, detail = proc.returncode == 0, proc.stderr.strip()[:200]
        except (subprocess.TimeoutExpired, OSError) as exc:
            ok, detail = False, str(exc)
        if ok:
            result.layers["userns"] = (True, "bwrap can create user, PID, network and mount namespaces")
        else:
            result.layers["userns"] = (False, f"bwrap failed: {detail}")
    abi = confine.landlock_abi()
    result.landlock_abi = abi
    minimum = minimum_landlock_abi()
    if abi >= minimum:
        result.layers["landlock"] = (True, f"ABI {abi}" + ("" if abi >= 6 else " (no signal scoping; seccomp covers it)"))
    else:
        result.layers["landlock"] = (False, f"ABI {abi}, need {minimum}" if abi else "not available in this kernel")
    status = Path("/proc/self/status").read_text()
    if platform.machine() == "x86_64" and "Seccomp_filters:" in status:
        result.layers["seccomp"] = (True, "filter mode available")
    else:
        result.layers["seccomp"] = (False, f"seccomp filters unavailable or unsupported machine {platform.machine()}")
    group = Cgroup.create("probe")
    if group is None:
        result.layers["cgroup"] = (False, "no writable pids+memory cgroup")
    else:
        result.layers["cgroup"] = (True, f"cgroup {group.version} at {group.paths[0].parent}")
        group.remove()
    return result


class Cgroup:
    """A pids+memory cgroup for one sandbox (v2, or v1 pids and memory hierarchies)."""

    def __init__(self, version: str, paths: list[Path]) -> None:
        self.version = version
        self.paths = paths

    @staticmethod
    def sweep(parent: Path) -> None:
        """Remove groups left by grader processes that died without cleaning up."""
        try:
            entries = list(parent.glob("grader-*-*"))
        except OSError:
            return
        for entry in entries:
            try:
                pid = int(entry.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                try:
                    entry.rmdir()
                except OSError:
                    pass

    @classmethod
    def create(cls, tag: str, memory_mb: int = 1024, pids: int = PIDS_MAX) -> Optional["Cgroup"]:
        name = f"grader-{os.getpid()}-{tag}"
        try:
            own = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        v1 = {}
        v2_path = None
        for line in own:
            hid, controllers, path = line.split(":", 2)
            if hid == "0" and controllers == "":
                v2_path = path
            for c in controllers.split(","):
                v1[c] = path
        root = Path("/sys/fs/cgroup")
        attempts: list[tuple[str, list[tuple[Path, dict[str, str]]]]] = []
        if "pids" in v1 and "memory" in v1:
            attempts.append((
                "v1",
                [
                    (root / "pids" / v1["pids"].lstrip("/") / name, {"pids.max": str(pids)}),
                    (root / "memory" / v1["memory"].lstrip("/") / name, {"memory.limit_in_bytes": str(memory_mb << 20)}),
                ],
            ))
        if v2_path is not None and (root / "cgroup.controllers").exists():
            attempts.append(("v2", [(root / v2_path.lstrip("/") / name, {"pids.max": str(pids), "memory.max": str(memory_mb << 20)})]))
        for version, dirs in attempts:
            made: list[Path] = []
            for path, _ in dirs:
                cls.sweep(path.parent)
            try:
                for path, settings in dirs:
                    path.mkdir()
                    made.append(path)
                    for key, value in settings.items():
                        (path / key).write_text(value)
                return cls(version, made)
            except OSError:
                for path in reversed(made):
                    try:
                        path.rmdir()
                    except OSError:
                        pass
        return None

    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in self.paths]

    def remove(self) -> None:
        for path in self.paths:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # its last processes are still exiting


def _site_dirs_to_hide() -> list[str]:
    """The base interpreter's own site-packages (other libraries, maybe secrets in .pth files)."""
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    hide = {
        paths["purelib"], paths["platlib"], "/usr/lib/python3/dist-packages",
        f"/usr/lib/{version}/dist-packages", f"/usr/local/lib/{version}/dist-packages",
    }
    return sorted(p for p in hide if os.path.isdir(p))


def bwrap_command(bwrap: str, control_fd: int, config: dict[str, Any]) -> list[str]:
    python = os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable)
    np_dir = Path(numpy.__file__).resolve().parent
    cmd = [
        bwrap, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
        "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr",
    ]
    for link in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / link
        if host.is_symlink():
            cmd += ["--symlink", os.readlink(host), f"/{link}"]
        elif host.is_dir():
            cmd += ["--ro-bind", str(host), f"/{link}"]
    hide_local = not Path(sys.base_prefix).is_relative_to("/usr/local") and not np_dir.is_relative_to("/usr/local")
    if hide_local:
        cmd += ["--tmpfs", "/usr/local"]  # site-wide configuration and packages of the host
    if not Path(sys.base_prefix).is_relative_to("/usr"):
        cmd += ["--ro-bind", sys.base_prefix, sys.base_prefix]
    for hidden in _site_dirs_to_hide():
        if not (hide_local and Path(hidden).is_relative_to("/usr/local")):
            cmd += ["--tmpfs", hidden]
    cmd += ["--ro-bind", str(np_dir), f"{SANDBOX_SITE}/numpy"]
    libs = np_dir.parent / "numpy.libs"
    if libs.is_dir():
        cmd += ["--ro-bind", str(libs), f"{SANDBOX_SITE}/numpy.libs"]
    for name in HARNESS_FILES:
        cmd += ["--ro-bind", str(HARNESS / name), f"{SANDBOX_HARNESS}/{name}"]
    cmd += [
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(SCRATCH_BYTES), "--tmpfs", SCRATCH_ROOT, "--chdir", SCRATCH_ROOT,
        "--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "OMP_NUM_THREADS", "1",
        "--setenv", "MKL_NUM_THREADS", "1", "--setenv", "LANG", "C.UTF-8",
        python, "-I", "-S", "-B", "-u", "-c",
        f"import sys; sys.path[:0] = [{SANDBOX_HARNESS!r}, {SANDBOX_SITE!r}]; import zygote; zygote.main()",
        str(control_fd), json.dumps(config),
    ]
    return cmd


class _Zygote:
    """One running bwrap + zygote, talked to over a SOCK_SEQPACKET socket."""

    def __init__(self, memory_mb: int, probe: Probe, use_cgroup: bool) -> None:
        bwrap = shutil.which("bwrap")
        assert bwrap
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = parent_sock
        self.exited: dict[int, int] = {}
        self.cgroup = Cgroup.create(f"z{time.monotonic_ns()}", memory_mb + CGROUP_MEMORY_SLACK_MB) if use_cgroup else None
        # No /proc: after confinement a child has no use for it, and it would show the
        # bwrap command line and the zygote's configuration (host paths) to the student.
        read_only = ["/usr", "/sandbox"]
        for link in ("bin", "lib", "lib64"):
            if (Path("/") / link).is_dir():
                read_only.append(f"/{link}")
        if not Path(sys.base_prefix).is_relative_to("/usr"):
            read_only.append(sys.base_prefix)
        config = {
            "scratch_root": SCRATCH_ROOT,
            "read_only": read_only,
            "minimum_landlock_abi": minimum_landlock_abi(),
        }
        cmd = bwrap_command(bwrap, child_sock.fileno(), config)
        if self.cgroup is not None:
            # Join the cgroup before exec, so bwrap and everything under it is inside.
            joins = " && ".join(f'echo $$ > "{p}"' for p in self.cgroup.procs_files())
            cmd = ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *cmd]
        try:
            self.proc = subprocess.Popen(
                cmd, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(child_sock.fileno(),), start_new_session=True,
            )
        except OSError as exc:
            parent_sock.close()
            if self.cgroup is not None:
                self.cgroup.remove()
            raise SandboxFailure(f"cannot start bwrap: {exc}") from None
        finally:
            child_sock.close()
        ready = self.receive(START_TIMEOUT, want="ready")
        if ready is None:
            err = self._stderr()
            self.stop()
            raise SandboxFailure(f"the sandbox did not start: {err or 'no ready message'}")
        self.next_id = 0
        self.outstanding: set[int] = set()  # children whose exit has not been reported yet
        self.input_bytes = 0  # what the last job sent through its input memfd

    def settle(self, timeout: float, allow: int = 0) -> bool:
        """Collect the exit reports of finished children, oldest first, until at most
        `allow` are missing; False if one is overdue."""
        deadline = time.monotonic() + timeout
        while True:
            reported = self.outstanding & set(self.exited)
            for job_id in reported:
                self.exited.pop(job_id)
            self.outstanding -= reported
            if len(self.outstanding) <= allow:
                return True
            remaining = deadline - time.monotonic()
            job_id = min(self.outstanding)
            if remaining <= 0 or self.receive(remaining, "exited", job_id) is None:
                return False
            self.outstanding.discard(job_id)

    def _stderr(self) -> str:
        try:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            return err.decode("utf-8", "replace").strip()[-500:]
        except Exception:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)

    def receive(
        self, timeout: float, want: str, job_id: Optional[int] = None
    ) -> Optional[tuple[dict[str, Any], list[int]]]:
        """Read control messages until one of kind `want` (for `job_id`) arrives; exit
        reports met on the way are kept. Returns the message and any fds it carried."""
        deadline = time.monotonic() + timeout
        while True:
            if want == "exited" and job_id in self.exited:
                return {"op": "exited", "id": job_id, "status": self.exited.pop(job_id)}, []
            remaining = deadline - time.monotonic()
            if remaining < 0:
                return None
            self.sock.settimeout(max(remaining, 0.0))
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 4)
            except (socket.timeout, BlockingIOError, OSError):
                return None
            if not data:
                return None
            message = json.loads(data)
            if message.get("op") == "exited":
                if isinstance(message.get("id"), int):
                    self.exited[message["id"]] = int(message.get("status", 0))
                continue
            if message.get("op") == want and (job_id is None or message.get("id") == job_id):
                return message, fds
            for fd in fds:
                os.close(fd)

    def stop(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stderr:
            os.set_blocking(self.proc.stderr.fileno(), False)
            try:
                said = (self.proc.stderr.read(4096) or b"").decode("utf-8", "replace").strip()
            except OSError:
                said = ""
            if said:
                log.warning("sandbox zygote said: %s", said[-1000:])
            self.proc.stderr.close()
        if self.cgroup is not None:
            self.cgroup.remove()


class _ZygoteChild:
    """A ChildHandle for one job: the zygote's pre-forked, already confined spare. The
    request goes out at once; its answer (the spare's pipes) is collected in `connect`,
    so the zygote's round trip overlaps encoding the job. The request carries how many
    bytes of arguments the previous job sent through its input memfd, which spares forked
    from now on reserve."""

    reports_confinement = True
    shared_memory = True  # hands over the child's two memfds (see protocol.InputRegion)

    def __init__(self, zygote: _Zygote) -> None:
        self.zygote = zygote
        zygote.next_id += 1
        self.id = zygote.next_id
        self.diagnostic_fds: list[int] = []
        self.status: Optional[int] = None
        self.fds: list[int] = []
        try:
            zygote.send({"op": "run", "id": self.id, "expect": zygote.input_bytes})
        except OSError as exc:
            raise SandboxFailure(f"the sandbox zygote is gone: {exc}") from None
        zygote.outstanding.add(self.id)

    def connect(self) -> None:
        reply = self.zygote.receive(START_TIMEOUT, "started", self.id)
        if reply is None or len(reply[1]) != 4:
            for fd in reply[1] if reply else []:
                os.close(fd)
            raise SandboxFailure("the sandbox zygote did not hand over a child")
        self.fds = reply[1]
        self.job_fd, self.result_fd, self.input_fd, self.output_fd = self.fds

    def input_sealed(self, input_bytes: int) -> None:
        # The child holds the sealed input now: with the last reference its own, its pages
        # are freed when it exits, not while this submission waits.
        if len(self.fds) == 4 and self.fds[2] >= 0:
            os.close(self.fds[2])
            self.fds[2] = self.input_fd = -1
        self.zygote.input_bytes = input_bytes

    def kill(self) -> None:
        if self.status is None:
            try:
                self.zygote.send({"op": "kill", "id": self.id})
            except OSError:
                pass

    def wait(self, timeout: float) -> Optional[str]:
        if self.status is None:
            reply = self.zygote.receive(timeout, "exited", self.id)
            if reply is None:
                if self._sandbox_gone():
                    # The zygote's end takes its children with it: this one died with the
                    # sandbox, not of anything the submission did.
                    raise SandboxFailure("the sandbox zygote died while a child ran")
                return None
            self.status = reply[0]["status"]
            self.zygote.outstanding.discard(self.id)
        return describe_exit(-os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else os.WEXITSTATUS(self.status))

    def _sandbox_gone(self) -> bool:
        try:
            self.zygote.proc.wait(timeout=1.0)  # its socket closes a moment before it exits
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        # The exit report is collected later (SandboxRunner.run settles before each job),
        # keeping the child's teardown off this submission's critical path.
        for fd in self.fds:
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


class _Holder:
    """The runner's zygote, kept apart so a finalizer can stop it without the runner."""

    def __init__(self) -> None:
        self.zygote: Optional[_Zygote] = None

    def discard(self) -> None:
        if self.zygote is not None:
            self.zygote.stop()
            self.zygote = None


class SandboxRunner:
    """The production runner. One zygote per runner (per worker process); restarted when it
    dies or misbehaves. Construction probes the host and fails closed."""

    def __init__(self, memory_mb: int = 512, require: Optional[tuple[str, ...]] = None) -> None:
        self.require = required_layers() if require is None else require
        self.probe = probe_host()
        missing = self.probe.missing(self.require)
        if missing:
            fixes = "\n".join(f"  - {layer}: {FIXES[layer]}" for layer in missing)
            raise SandboxUnavailable(
                f"refusing to grade: the sandbox needs {', '.join(missing)}, which this host lacks.\n"
                f"{self.probe.describe()}\nTo fix:\n{fixes}"
            )
        self.memory_mb = memory_mb
        self.use_cgroup = self.probe.ok("cgroup")
        self._holder = _Holder()
        # A runner dropped without close() must not leave bwrap or a cgroup behind. The
        # finalizer holds only the holder: holding the runner would keep it alive forever.
        weakref.finalize(self, self._holder.discard)

    @property
    def _zygote(self) -> Optional[_Zygote]:
        return self._holder.zygote

    def _ensure(self, memory_mb: int) -> _Zygote:
        if memory_mb > self.memory_mb:
            # The cgroup around the zygote is sized for one child's limit; a spec that
            # allows more needs a bigger one, or the OOM killer would beat MemoryError.
            self.memory_mb = memory_mb
            self._discard()
        zygote = self._holder.zygote
        if zygote is None or not zygote.alive():
            if zygote is not None:
                log.warning("sandbox zygote died; restarting")
                zygote.stop()
            zygote = self._holder.zygote = _Zygote(self.memory_mb, self.probe, self.use_cgroup)
        return zygote

    def run(self, job: Job) -> RunReport:
        # One retry on a fresh zygote: a zygote retires (or dies) after a job that left its
        # scratch unusable, and the next, innocent submission must not pay for that.
        for attempt in (1, 2):
            zygote = self._ensure(job.memory_mb)
            # The previous child may still be exiting; waiting for that would put its
            # teardown on this submission's critical path. More than one unreported exit
            # is a fault.
            if len(zygote.outstanding) > 1 and not zygote.settle(5.0, allow=1):
                log.warning("sandbox zygote did not report earlier children's exits; restarting it")
                self._discard()
                zygote = self._ensure(job.memory_mb)
            try:
                return run_job(job, lambda: _ZygoteChild(zygote))
            except SandboxFailure as exc:
                log.warning("sandbox failure (attempt %d): %s", attempt, exc)
                self._discard()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _discard(self) -> None:
        self._holder.discard()

    def close(self) -> None:
        if self._zygote is not None:
            self._zygote.settle(5.0)
        self._discard()


class InsecureSubprocessRunner(SubprocessRunner):
    """GRADER_SANDBOX=insecure-subprocess: for a laptop without bubblewrap. Never the default."""

    def __init__(self) -> None:
        log.warning(
            "GRADER_SANDBOX=insecure-subprocess: student code runs WITHOUT a sandbox "
            "(no namespaces, Landlock or seccomp). Never use this with real submissions."
        )
        print("WARNING: grading WITHOUT a sandbox (GRADER_SANDBOX=insecure-subprocess)", file=sys.stderr)


def make_runner() -> Any:
    """The runner the configuration asks for; raises SandboxUnavailable rather than degrade."""
    mode = os.environ.get("GRADER_SANDBOX", "bwrap")
    if mode == "bwrap":
        return SandboxRunner()
    if mode == "insecure-subprocess":
        return InsecureSubprocessRunner()
    raise SandboxUnavailable(f"GRADER_SANDBOX={mode!r} is not a sandbox mode (use 'bwrap' or 'insecure-subprocess')")
