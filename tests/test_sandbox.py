"""The adversarial suite: hostile submissions against the real sandbox.

Each attack goes into `double` of the probe assignment (tests/fixtures/probe); `add` is
correct and must keep its full marks. After every attack: the student got a verdict, the
grader still grades, no secret reached the result, nothing was written on the host and
no process was left behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import textwrap
import uuid
from pathlib import Path

import pytest

from grader.grade import grade_bytes
from grader.sandbox import SandboxRunner, SandboxUnavailable, make_runner, probe_host
from grader.spec import load_folder

PROBE = load_folder(Path(__file__).parent / "fixtures" / "probe")
SECRET = "s3cr3t-" + uuid.uuid4().hex
CANARY_DIR = Path("/tmp") / f"grader-canary-{uuid.uuid4().hex[:8]}"
ADD = "\n\ndef add(x, y):\n    return x + y\n"

pytestmark = pytest.mark.skipif(
    probe_host().missing(("bwrap", "userns", "landlock", "seccomp")) != [],
    reason="the sandbox's layers are not available on this host (.ci/run installs bubblewrap)",
)


@pytest.fixture(scope="module")
def runner():
    os.environ["GRADER_TEST_SECRET"] = SECRET  # must never reach a child
    CANARY_DIR.mkdir(exist_ok=True)
    (CANARY_DIR / "db.sqlite").write_text(SECRET)
    sandbox = SandboxRunner()
    yield sandbox
    sandbox.close()
    os.environ.pop("GRADER_TEST_SECRET", None)


def attack(runner: SandboxRunner, body: str, top: str = "") -> dict:
    """Grade a file whose `double` does `body`; check isolation and the grader's health."""
    source = "import numpy as np\nimport os, sys\n" + textwrap.dedent(top) + "\n\ndef double(x):\n"
    source += textwrap.indent(textwrap.dedent(body), "    ") + ADD
    result = grade_bytes(PROBE, source.encode(), seed=1, runner=runner)
    text = json.dumps(result)
    assert SECRET not in text, "a secret reached the result"
    add = next(p for p in result["parts"] if p["function"] == "add")
    if result["messages"] and "load" in result["messages"][0]:
        return result
    assert add["score"] == add["max_score"], f"add lost points: {add['feedback']}"
    healthy = grade_bytes(PROBE, b"def double(x):\n    return 2 * x\n" + ADD.encode(), seed=2, runner=runner)
    assert healthy["score"] == healthy["max_score"], "the sandbox did not recover"
    zygote = runner._zygote
    assert zygote is not None and zygote.alive()
    assert zygote.settle(5.0), "a child's exit was never reported"
    zygote.send({"op": "ping"})
    pong = zygote.receive(5.0, "pong")
    assert pong is not None, "the zygote did not answer"
    # Only spares are left (the zygote keeps up to two), no child of a job.
    assert pong[0]["jobs"] == 0 and pong[0]["children"] == pong[0]["spares"] <= 2, f"processes left behind: {pong}"
    assert sorted(p.name for p in CANARY_DIR.iterdir()) == ["db.sqlite"]
    return result


def double_part(result: dict) -> dict:
    return next(p for p in result["parts"] if p["function"] == "double")


def feedback(result: dict) -> str:
    part = double_part(result)
    return part["feedback"] + json.dumps(part["trials"]) + "\n".join(result["messages"])


# --- time ----------------------------------------------------------------------------


def test_infinite_loop_in_a_function(runner: SandboxRunner) -> None:
    result = attack(runner, "while True:\n    pass\n")
    assert double_part(result)["score"] == 0
    assert "exceeded the 1 s time limit" in feedback(result)


def test_infinite_loop_at_import(runner: SandboxRunner) -> None:
    result = attack(runner, "return 2 * x\n", top="while True:\n    pass\n")
    assert result["score"] == 0
    assert "did not finish loading within 2 s" in result["messages"][0]
    assert attack(runner, "return 2 * x\n")["score"] == 2  # and the next submission is fine


def test_sleeping_past_the_deadline(runner: SandboxRunner) -> None:
    result = attack(runner, "import time\ntime.sleep(30)\nreturn 2 * x\n")
    assert "time limit" in feedback(result)


def test_ignoring_signals_does_not_help(runner: SandboxRunner) -> None:
    body = """
    import signal
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    while True:
        pass
    """
    assert "time limit" in feedback(attack(runner, body))


# --- processes and threads -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "os.fork()\nreturn 2 * x\n",
        "while True:\n    os.fork()\n",
        "import subprocess\nsubprocess.run(['/bin/true'])\nreturn 2 * x\n",
        "return 2 * x + os.system('true')\n",  # 0 only if the program really ran
        "os.execv('/usr/bin/true', ['true'])\n",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()\nreturn 2 * x\n",
    ],
    ids=["fork", "fork-bomb", "subprocess", "system", "exec", "multiprocessing"],
)
def test_no_new_processes_or_programs(runner: SandboxRunner, body: str) -> None:
    result = attack(runner, body)
    assert double_part(result)["score"] == 0
    text = feedback(result)
    assert "PermissionError" in text or "Operation not permitted" in text or "wrong values" in text


def test_thread_bomb(runner: SandboxRunner) -> None:
    body = """
    import threading, time
    while True:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    """
    result = attack(runner, body)
    assert double_part(result)["score"] == 0
    assert "can't start new thread" in feedback(result) or "RuntimeError" in feedback(result)


def test_thread_left_running_after_return(runner: SandboxRunner) -> None:
    body = """
    import threading
    def spin():
        while True:
            pass
    threading.Thread(target=spin, daemon=False).start()
    return 2 * x
    """
    result = attack(runner, body)
    part = double_part(result)
    assert part["score"] == part["max_score"]  # returning is what counts; the thread dies with the child


# --- memory and disk -----------------------------------------------------------------


def test_one_huge_allocation(runner: SandboxRunner) -> None:
    result = attack(runner, "big = np.ones(10**10)\nreturn 2 * x\n")
    assert "ran out of memory (limit 512 MB)" in feedback(result)


def test_many_small_allocations(runner: SandboxRunner) -> None:
    result = attack(runner, "hoard = []\nwhile True:\n    hoard.append(bytearray(1 << 16))\n")
    # Filling 512 MB takes a good part of the probe's 1 s limit on a busy machine, so
    # either limit may stop it first; both are the contained outcome.
    assert "ran out of memory" in feedback(result) or "time limit" in feedback(result)


def test_disk_bomb_in_scratch(runner: SandboxRunner) -> None:
    body = """
    with open('fill', 'wb') as f:
        while True:
            f.write(b'x' * (1 << 20))
    """
    result = attack(runner, body)
    text = feedback(result)
    assert double_part(result)["score"] == 0
    assert "File too large" in text or "No space left" in text or "raised" in text


def test_flooding_stdout_and_stderr(runner: SandboxRunner) -> None:
    body = """
    for _ in range(200000):
        print('flood' * 20)
        print('err' * 20, file=sys.stderr)
    return 2 * x
    """
    result = attack(runner, body)
    printed = double_part(result).get("printed", "")
    assert len(printed) < 4096 and "more bytes of output dropped" in printed


def test_exhausting_file_descriptors(runner: SandboxRunner) -> None:
    body = """
    keep = []
    while True:
        keep.append(open('f%d' % len(keep), 'w'))
    """
    result = attack(runner, body)
    assert "Too many open files" in feedback(result) or "OSError" in feedback(result)


# --- file system and secrets ---------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [str(CANARY_DIR / "evil"), "/usr/evil", "/tmp/evil", "/evil", "/proc/self/evil", "/sandbox/harness/child.py"],
)
def test_writing_outside_scratch(runner: SandboxRunner, path: str) -> None:
    result = attack(runner, f"open({path!r}, 'w').write('x')\nreturn 2 * x\n")
    assert double_part(result)["score"] == 0
    assert not Path(path).exists() or path.startswith("/proc")


def test_reading_secrets_finds_nothing(runner: SandboxRunner) -> None:
    repo = Path(__file__).resolve().parents[1]
    body = f"""
    import glob
    found = [repr(dict(os.environ))]
    for pattern in ['/proc/*/environ', '/proc/*/cmdline', {str(CANARY_DIR / '*')!r}, {str(repo / 'grader' / '*.py')!r},
                    '/etc/*', '/root/*', '/home/*/*', '/tmp/*', '/var/lib/postgresql/*', '/run/*']:
        for name in glob.glob(pattern):
            try:
                found.append(name + ':' + open(name, 'rb').read(4096).decode('latin1'))
            except Exception as exc:
                found.append(name + ':' + type(exc).__name__)
    print('\\n'.join(found))
    return 2 * x
    """
    result = attack(runner, body)  # `attack` asserts the secret is nowhere in the result
    printed = double_part(result).get("printed", "")
    assert "GRADER_TEST_SECRET" not in printed
    assert "/etc/passwd" not in printed and str(repo) not in printed


def test_the_environment_is_empty_but_for_harmless_settings(runner: SandboxRunner) -> None:
    result = attack(runner, "print(sorted(os.environ))\nreturn 2 * x\n")
    printed = double_part(result).get("printed", "")
    names = set(json.loads(printed.splitlines()[0].replace("'", '"')))
    assert names <= {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LANG", "PWD"}


@pytest.mark.parametrize("port", [6379, 5432, 22, 80])
def test_no_network(runner: SandboxRunner, port: int) -> None:
    body = f"""
    import socket
    s = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)
    s.sendall(b'FLUSHALL\\r\\n')
    return 2 * x
    """
    result = attack(runner, body)
    assert double_part(result)["score"] == 0
    assert "PermissionError" in feedback(result) or "Operation not permitted" in feedback(result)


def test_no_unix_sockets_either(runner: SandboxRunner) -> None:
    body = "import socket\nsocket.socket(socket.AF_UNIX).connect('/var/run/postgresql/.s.PGSQL.5432')\nreturn 2 * x\n"
    assert double_part(attack(runner, body))["score"] == 0


# --- the grader and other processes ---------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "os.kill(os.getppid(), 9)\n",
        "os.kill(1, 9)\n",
        "os.kill(-1, 9)\n",
        "os.kill(0, 9)\n",
        "os.killpg(os.getpgid(0), 9)\n",
        "import signal\nfor pid in range(1, 50):\n    try:\n        os.kill(pid, signal.SIGKILL) if pid != os.getpid() else None\n    except OSError:\n        pass\n",
    ],
    ids=["parent", "init", "everyone", "group", "killpg", "scan"],
)
def test_killing_other_processes(runner: SandboxRunner, body: str) -> None:
    attack(runner, body + "return 2 * x\n")  # the health checks are the assertion


def test_killing_itself_is_a_crash_not_a_grader_failure(runner: SandboxRunner) -> None:
    result = attack(runner, "os.kill(os.getpid(), 9)\n")
    assert "died" in feedback(result) and "SIGKILL" in feedback(result)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("import ctypes\nctypes.string_at(0)\n", "SIGSEGV"),
        ("os._exit(3)\n", "exited with status 3"),
        ("sys.exit(0)\n", "SystemExit"),
        ("import faulthandler\nfaulthandler._sigsegv()\n", "SIGSEGV"),
        ("def r(n):\n    return r(n + 1)\nr(0)\n", "recursed too deeply"),
        ("sys.setrecursionlimit(10**7)\ndef r(n):\n    return r(n + 1)\nr(0)\n", ("died", "time limit", "memory")),
    ],
    ids=["segfault", "os-exit", "sys-exit", "faulthandler", "recursion", "stack-overflow"],
)
def test_crashes_are_verdicts(runner: SandboxRunner, body: str, words: "str | tuple[str, ...]") -> None:
    result = attack(runner, body)
    assert double_part(result)["score"] == 0
    alternatives = (words,) if isinstance(words, str) else words
    assert any(w in feedback(result) for w in alternatives), feedback(result)


def test_forging_result_frames(runner: SandboxRunner) -> None:
    body = """
    import json, struct
    fake = json.dumps({"kind": "call", "index": 0, "status": "ok", "value": {"n": None}, "blobs": []}).encode()
    payload = struct.pack('<I', len(fake)) + fake
    for fd in map(int, os.listdir('/proc/self/fd')):
        try:
            os.write(fd, struct.pack('<Q', len(payload)) + payload)
        except OSError:
            pass
    return 2 * x + 1
    """
    result = attack(runner, body)
    assert double_part(result)["score"] == 0


def test_monkeypatching_numpy_in_the_child_changes_nothing(runner: SandboxRunner) -> None:
    body = """
    np.allclose = np.array_equal = np.isclose = lambda *a, **k: True
    np.testing.assert_allclose = lambda *a, **k: None
    return 3 * x
    """
    assert double_part(attack(runner, body))["score"] == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("return np.array([object()] * x.size)\n", "dtype object"),
        ("import pickle\nreturn pickle.dumps(2 * x)\n", "return a NumPy array"),
        ("return np.asmatrix(2 * x)\n", "shape"),
        ("class Evil(np.ndarray):\n    def __reduce__(self):\n        return (os.system, ('true',))\nreturn (2 * x).view(Evil)\n", ""),
        ("class Evil:\n    def __array__(self, *a, **k):\n        while True:\n            pass\nreturn Evil()\n", "time limit"),
    ],
    ids=["object-array", "pickle", "matrix", "ndarray-subclass", "array-hook-hangs"],
)
def test_returning_strange_objects(runner: SandboxRunner, body: str, words: str) -> None:
    result = attack(runner, body)
    assert words in feedback(result)


def test_mutating_inputs_is_caught(runner: SandboxRunner) -> None:
    result = attack(runner, "x *= 2\nreturn x\n")
    assert double_part(result)["score"] == 0
    assert "modified its argument `x`" in feedback(result)


@pytest.mark.parametrize(
    "module", ["grader", "grader.engine", "torch", "jax", "autograd", "sympy", "scipy"]
)
def test_no_grader_or_autodiff_library(runner: SandboxRunner, module: str) -> None:
    result = attack(runner, f"import {module}\nreturn 2 * x\n")
    assert "ModuleNotFoundError" in feedback(result)


def test_no_fds_of_the_grader_are_open(runner: SandboxRunner) -> None:
    body = """
    import fcntl, stat
    fds = []
    for fd in range(1024):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)  # only a memfd has seals
        except OSError:
            seals = None
        fds.append([fd, "pipe" if stat.S_ISFIFO(mode) else "file" if stat.S_ISREG(mode) else "other", seals])
    print(json.dumps(fds))
    return 2 * x
    """
    result = attack(runner, body, top="import json")
    fds = json.loads(double_part(result)["printed"].splitlines()[0])
    # stdin (/dev/null), stdout and stderr (the capture file), the result pipe, and the
    # result memfd: sized and sealed by the parent (the probe's arrays are too small for
    # an input memfd, which the child then closes). Nothing else: no socket, no fd of the
    # zygote or of another child.
    assert [fd for fd, _, _ in fds[:3]] == [0, 1, 2], fds
    rest = sorted((kind, seals) for _, kind, seals in fds[3:])
    grow_shrink_seal = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    assert rest == [("file", grow_shrink_seal), ("pipe", None)], fds


def test_proc_is_out_of_reach(runner: SandboxRunner) -> None:
    result = attack(runner, "print(open('/proc/1/cmdline').read())\nreturn 2 * x\n")
    assert "PermissionError" in feedback(result)


# --- fail closed -----------------------------------------------------------------------


def test_the_seccomp_program_from_its_template_is_the_program_built_for_the_pid() -> None:
    from grader.runner import confine

    for pid in (1, 2, 57, 4096, 123456, (1 << 22) - 1):
        assert confine.filter_for(pid) == confine.build_filter(pid)


def test_refuses_to_grade_without_a_required_layer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(SandboxUnavailable) as info:
        SandboxRunner()
    message = str(info.value)
    assert "refusing to grade" in message and "bwrap" in message and "apt-get install bubblewrap" in message


def test_required_layers_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADER_SANDBOX_REQUIRE", "bwrap,teleport")
    with pytest.raises(SandboxUnavailable, match="unknown layers: teleport"):
        SandboxRunner()
    monkeypatch.setenv("GRADER_LANDLOCK_MIN_ABI", "99")
    monkeypatch.setenv("GRADER_SANDBOX_REQUIRE", "landlock")
    with pytest.raises(SandboxUnavailable, match="landlock"):
        SandboxRunner()


def test_insecure_mode_is_explicit_and_loud(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GRADER_SANDBOX", "insecure-subprocess")
    runner = make_runner()
    assert "WITHOUT a sandbox" in capsys.readouterr().err
    assert type(runner).__name__ == "InsecureSubprocessRunner"
    monkeypatch.setenv("GRADER_SANDBOX", "none")
    with pytest.raises(SandboxUnavailable, match="not a sandbox mode"):
        make_runner()


def test_the_zygote_is_restarted_when_it_dies(runner: SandboxRunner) -> None:
    zygote = runner._zygote
    assert zygote is not None
    os.killpg(zygote.proc.pid, 9)
    zygote.proc.wait(5)
    result = grade_bytes(PROBE, b"def double(x):\n    return 2 * x\n" + ADD.encode(), seed=3, runner=runner)
    assert result["score"] == result["max_score"]
    assert runner._zygote is not zygote


def test_a_sandbox_that_dies_under_a_running_call_is_retried_not_blamed_on_the_student() -> None:
    # The zygote dying (a crash, a retirement, the OOM killer) takes the running child with
    # it; the student's last call must not come back "crashed": the job is run again on a
    # fresh zygote.
    import signal
    import threading

    from grader.runner import Call, Job

    sandbox = SandboxRunner()
    try:
        sandbox.run(Job("def f():\n    return 1\n", [Call("f", [], 3.0, 2.0)]))  # the zygote is up
        zygote = sandbox._zygote
        assert zygote is not None
        source = "import time\n\ndef slow():\n    time.sleep(0.6)\n    return 7\n"
        killer = threading.Timer(0.3, lambda: os.killpg(zygote.proc.pid, signal.SIGKILL))
        killer.start()
        report = sandbox.run(Job(source, [Call("slow", [], 3.0, 2.0)]))
        killer.join()
        assert sandbox._zygote is not zygote, "the job did not run on a fresh zygote"
        assert report.load.status == "ok" and [c.status for c in report.calls] == ["ok"], report
        assert report.calls[0].value == 7
    finally:
        sandbox.close()


def test_sockets_cannot_be_made_in_the_child_at_all(runner: SandboxRunner) -> None:
    result = attack(runner, "import socket\nsocket.socketpair()\nreturn 2 * x\n")
    assert double_part(result)["score"] == 0
    assert socket  # the parent's own sockets are unaffected


# --- attacks on later submissions (found in review) -----------------------------------

VICTIM = b"import numpy as np, os\ndef double(x):\n    print(os.nice(0), os.sched_getaffinity(0))\n    return 2 * x\n" + ADD.encode()


def assert_next_submission_unharmed(runner: SandboxRunner) -> None:
    for seed in (11, 12):
        result = grade_bytes(PROBE, VICTIM, seed=seed, runner=runner)
        assert result["score"] == result["max_score"], result["parts"][0]["feedback"]
        assert result["parts"][0]["printed"].startswith(f"0 {set(range(os.cpu_count() or 1))}")


@pytest.mark.parametrize(
    "body",
    [
        # lowering the zygote's hard limits would break every later child
        "import ctypes\nlim = (ctypes.c_uint64 * 2)(0, 0)\nassert ctypes.CDLL(None).syscall(302, os.getppid(), 1, lim, None) != 0\n",
        "import ctypes\nassert ctypes.CDLL(None).syscall(141, 0, os.getppid(), 19) != 0\n",
        "import ctypes\np = ctypes.c_int(0)\nassert ctypes.CDLL(None).syscall(144, os.getppid(), 5, ctypes.byref(p)) != 0\n",
        "try:\n    os.sched_setaffinity(os.getppid(), {0})\nexcept PermissionError:\n    pass\nelse:\n    raise AssertionError('allowed')\n",
    ],
    ids=["prlimit-zygote", "renice-zygote", "idle-zygote", "pin-zygote"],
)
def test_cannot_change_the_zygote(runner: SandboxRunner, body: str) -> None:
    result = attack(runner, body + "return 2 * x\n")
    assert double_part(result)["score"] == double_part(result)["max_score"], feedback(result)
    assert_next_submission_unharmed(runner)


def test_own_priority_and_limits_are_the_students_business(runner: SandboxRunner) -> None:
    body = "import resource\nos.nice(1)\nresource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))\nreturn 2 * x\n"
    assert double_part(attack(runner, body))["score"] == 1
    assert_next_submission_unharmed(runner)


@pytest.mark.parametrize(
    "body",
    [
        "import ctypes\nassert ctypes.CDLL(None).syscall(29, 0, 1 << 20, 0o1000 | 0o600) == -1\n",  # shmget
        "import ctypes\nassert ctypes.CDLL(None).syscall(68, 0, 0o1000 | 0o600) == -1\n",  # msgget
        "from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=1 << 20)\n",
    ],
    ids=["shmget", "msgget", "posix-shm"],
)
def test_no_ipc_between_submissions(runner: SandboxRunner, body: str) -> None:
    result = attack(runner, body + "return 2 * x\n")
    assert_next_submission_unharmed(runner)
    if "shared_memory" in body:
        assert double_part(result)["score"] == 0


def test_a_locked_directory_cannot_outlive_its_job(runner: SandboxRunner) -> None:
    body = """
    os.mkdir('keep')
    with open('keep/f', 'wb') as f:
        f.write(b'x' * (8 << 20))
    os.chmod('keep', 0)
    os.chmod('.', 0o500)
    return 2 * x
    """
    result = attack(runner, body)
    assert "PermissionError" in feedback(result)
    assert_next_submission_unharmed(runner)


def test_filling_scratch_retires_the_zygote_not_the_next_student(runner: SandboxRunner) -> None:
    body = """
    for i in range(10):
        with open('f%d' % i, 'wb') as f:
            f.write(b'x' * (15 << 20))
    return 2 * x
    """
    attack(runner, body)  # the zygote retires once it sees its scratch this full
    assert_next_submission_unharmed(runner)


def test_a_forged_confinement_failure_is_the_students_problem(runner: SandboxRunner) -> None:
    body = """
    import json, struct
    head = json.dumps({"kind": "confinement_failed", "detail": "forged", "blobs": []}).encode()
    payload = struct.pack('<I', len(head)) + head
    for fd in range(3, 20):
        try:
            os.write(fd, struct.pack('<Q', len(payload)) + payload)
        except OSError:
            pass
    return 2 * x
    """
    result = attack(runner, body)  # no SandboxFailure escapes grade_bytes
    assert double_part(result)["score"] == 0


def test_host_site_configuration_is_hidden(runner: SandboxRunner) -> None:
    body = "print(os.listdir('/usr/local'))\nreturn 2 * x\n"
    assert double_part(attack(runner, body))["printed"].startswith("[]")


def test_one_submission_has_a_total_time_budget(tmp_path: Path) -> None:
    import shutil

    import yaml

    folder = tmp_path / "probe"
    shutil.copytree(Path(__file__).parent / "fixtures" / "probe", folder)
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec["limits"]["job_seconds"] = 2.5
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    budget = load_folder(folder)
    source = b"import time\ndef double(x):\n    time.sleep(0.9)\n    return 2 * x\n\ndef add(x, y):\n    time.sleep(0.9)\n    return x + y\n"
    sandbox = SandboxRunner()
    try:
        import time

        start = time.monotonic()
        result = grade_bytes(budget, source, seed=1, runner=sandbox)
        assert time.monotonic() - start < 5
    finally:
        sandbox.close()
    text = json.dumps(result)
    assert "total time budget (2.5 s)" in text
    assert result["score"] < result["max_score"]


def test_a_spare_that_cannot_confine_itself_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Landlock is below the zygote's minimum: no spare may serve, and grading stops.
    from grader.runner.session import SandboxFailure

    monkeypatch.setenv("GRADER_LANDLOCK_MIN_ABI", "99")
    sandbox = SandboxRunner(require=("bwrap", "userns"))
    try:
        with pytest.raises(SandboxFailure):
            grade_bytes(PROBE, b"def double(x):\n    return 2 * x\n" + ADD.encode(), seed=1, runner=sandbox)
    finally:
        sandbox.close()


def _zygote_module(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    harness = Path(__file__).parents[1] / "grader" / "runner"
    monkeypatch.syspath_prepend(str(harness))  # the zygote imports its neighbours by name
    spec = importlib.util.spec_from_file_location("zygote_under_test", harness / "zygote.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_pressure_tells_a_contended_machine_from_an_idle_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A spare runs its full warm-up only while tasks seldom wait for a CPU.
    import types

    zygote = _zygote_module(monkeypatch)
    clock = [100.0]
    monkeypatch.setattr(zygote, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    psi = tmp_path / "cpu"

    def stalled(total_us: int, after: float) -> None:
        clock[0] += after
        psi.write_text(f"some avg10=1.00 avg60=1.00 avg300=1.00 total={total_us}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")

    stalled(5_000_000, 0.0)
    pressure = zygote.CpuPressure(str(psi))
    stalled(5_400_000, 0.5)  # waited 80% of the last half second
    assert pressure.contended()
    stalled(5_410_000, 0.5)  # 2%
    assert not pressure.contended()
    psi.unlink()  # a kernel without PSI: never contended
    clock[0] += 0.5
    assert not pressure.contended()
    stalled(9_000_000, 0.5)
    assert not pressure.contended()  # no earlier sample to compare with
    assert pressure.contended() is False  # no time has passed


def test_spares_reserve_at_most_a_bounded_hint_and_never_touch_a_sealed_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the parent says its last job sent becomes what new spares reserve, capped (the
    # pages count against the sandbox's cgroup); a malformed hint reserves nothing.
    zygote = _zygote_module(monkeypatch)
    z = zygote.Zygote.__new__(zygote.Zygote)
    z.reserve = 0
    z.expect(3 << 20)
    assert z.reserve == 3 << 20
    z.expect(1 << 40)
    assert z.reserve == zygote.MAX_RESERVE
    for bad in (None, -1, "1", 1.5, True, [1, 2], {"a": 1}):
        z.expect(3 << 20)
        z.expect(bad)
        assert z.reserve == 0, bad
    # Reserving leaves a fresh file empty and unsealed; on a file the parent has already
    # filled and sealed (a job handed over early), it changes nothing and raises nothing.
    fresh = os.memfd_create("fresh", os.MFD_ALLOW_SEALING)
    sealed = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(sealed, 4096)
        os.pwrite(sealed, b"x" * 4096, 0)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, seals)
        zygote.reserve_pages(fresh, 1 << 20)
        zygote.reserve_pages(sealed, 1 << 20)
        assert os.fstat(fresh).st_size == 0 and os.fstat(fresh).st_blocks * 512 >= 1 << 20
        assert fcntl.fcntl(fresh, fcntl.F_GET_SEALS) == 0
        assert os.fstat(sealed).st_size == 4096 and os.pread(sealed, 8192, 0) == b"x" * 4096
        assert os.fstat(sealed).st_blocks * 512 < 1 << 20
    finally:
        os.close(fresh)
        os.close(sealed)


def test_scratch_cleanup_removes_empty_full_and_locked_trees(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty scratch takes the one-syscall path; anything else still goes, whatever its
    # modes, and a symlink in its place or a missing one behaves as before.
    zygote = _zygote_module(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    zygote.remove_tree(str(empty))
    full = tmp_path / "full"
    (full / "a" / "b").mkdir(parents=True)
    (full / "a" / "b" / "f").write_text("x")
    (full / "g").write_text("y")
    (full / "a" / "b").chmod(0o500)
    (full / "a").chmod(0)
    zygote.remove_tree(str(full))
    zygote.remove_tree(str(tmp_path / "missing"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(zygote.Retire):
        zygote.remove_tree(str(tmp_path / "link"))
    assert target.is_dir()


def test_what_a_call_prints_goes_to_a_file_with_no_name(runner: SandboxRunner) -> None:
    # The capture file is unnamed: nothing in scratch to find, rename or fill besides it.
    body = "print('listed', sorted(os.listdir('.')), os.fstat(1).st_nlink, os.fstat(1).st_ino == os.fstat(2).st_ino)\nreturn 2 * x\n"
    assert double_part(attack(runner, body))["printed"].startswith("listed [] 0 True")
