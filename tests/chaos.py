"""Fault-injection runs, shared by tests/test_faults.py (small sizes) and
benchmarks/faults.py (larger ones): a burst of submissions through the real web API into a
whole private stack (a PostgreSQL cluster and a redis-server of its own, `grader worker`
subprocesses), while faults are injected on a fixed schedule:

- kill: SIGKILL a random worker process, its main process (the worker is then restarted,
  as its supervisor would) or the pool process grading under it (the worker replaces it);
- redis: the broker killed, and started again empty on the same port after an outage;
- postgres: the database server crashed (`pg_ctl stop -m immediate`) and started again.

The run then waits for every accepted submission to end and counts, from the database
and independently from the workers' logs: lost (accepted, never graded), double-scored
(graded more than once), misgraded (a correct file not at full marks, or a wrong one at
full marks), and the timings: recovery is the time from the end of the last fault to the
last grading. Nothing here touches the machine's own PostgreSQL or Redis."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from grader.config import Settings
from grader.store import accounts, migrate
from grader.store.db import make_engine, make_sessionmaker
from grader.store.demo import seed_demo
from grader.store.models import Submission, User
from grader.up import Broker, start_redis
from pg_private import PrivatePostgres
from service_procs import Proc, alive, children, cmdline, worker_env

SUBMISSIONS = Path(__file__).parent / "submissions"
KINDS = ("kill", "redis", "postgres")
# Lease 10 s (Celery's limits 8 s and 9 s), a sweep every second, a queued row re-sent
# after 4 s: recovery in seconds instead of the production minutes.
RECOVERY_ENV = {"GRADER_LEASE_SECONDS": "10", "GRADER_SWEEP_SECONDS": "1", "GRADER_STUCK_SECONDS": "4"}
OUTAGE_SECONDS = 3.0
SLEEP_LINE = b"    __import__('time').sleep(%.3f)\n"


def _slowed(data: bytes, function: str, seconds: float) -> bytes:
    """`data` with a sleep at the top of `function`: gradings long enough to be killed in
    the middle of (each call stays far under the 3 s per-call limit)."""
    header = f"def {function}(".encode()
    start = data.index(header)
    line_end = data.index(b":\n", start) + 2
    return data[:line_end] + SLEEP_LINE % seconds + data[line_end:]


# (assignment, file name, source, full marks expected). The vjp files call relu_backward on
# 14 trials, the gates files call mul_backward about 27 times: each grading takes ~0.3 s.
MIX: list[tuple[str, str, bytes, bool]] = [
    ("vjp", "correct_plain.py", _slowed((SUBMISSIONS / "vjp/correct_plain.py").read_bytes(), "relu_backward", 0.02), True),
    ("gates", "correct_plain.py", _slowed((SUBMISSIONS / "gates/correct_plain.py").read_bytes(), "mul_backward", 0.01), True),
    ("vjp", "wrong_transposed_dW.py", _slowed((SUBMISSIONS / "vjp/wrong_transposed_dW.py").read_bytes(), "relu_backward", 0.02), False),
    ("gates", "wrong_sign.py", _slowed((SUBMISSIONS / "gates/wrong_sign.py").read_bytes(), "mul_backward", 0.01), False),
]


@dataclass
class Fault:
    kind: str
    at: float  # seconds after the burst began, planned
    started: float = 0.0  # wall clock (time.time()), as it happened
    ended: float = 0.0
    what: str = ""
    pause_s: float = 0.0  # longest time with no grading finishing, from this fault to the next


@dataclass
class Outcome:
    scenario: str
    submissions: int  # accepted by the web API (202)
    refused: int  # answered 503 while the database was down (the client sent them again)
    other_errors: list[str]
    lost: list[int]
    double_scored: list[int]
    misgraded: list[int]
    interrupted: int  # gradings cut off by a fault and done again (attempts > 1)
    faults: list[Fault]
    faults_during_work: int  # faults that began while accepted submissions were still ungraded
    recovery_s: float  # end of the last fault to the last grading (0 without faults)
    longest_pause_s: float  # longest time with no grading finishing, from the first fault on (from the start without faults)
    total_s: float  # first submission to the last grading
    worker_restarts: int  # after a kill of a main process, or after exiting by itself
    exited: list[str]  # workers that exited by themselves (and were started again), why
    logs: dict[str, str] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "submissions": self.submissions,
            "lost": len(self.lost),
            "double-scored": len(self.double_scored),
            "misgraded": len(self.misgraded),
            "refused (503)": self.refused,
            "faults": len(self.faults),
            "interrupted": self.interrupted,
            "worker restarts": self.worker_restarts,
            "recovery (s)": round(self.recovery_s, 1),
            "longest pause (s)": round(self.longest_pause_s, 1),
            "total (s)": round(self.total_s, 1),
        }

    def problems(self) -> str:
        """What went wrong, with the tail of every log; '' when nothing did."""
        bad = []
        if self.lost:
            bad.append(f"lost: {self.lost}")
        if self.double_scored:
            bad.append(f"double-scored: {self.double_scored}")
        if self.misgraded:
            bad.append(f"misgraded: {self.misgraded}")
        if self.other_errors:
            bad.append(f"unexpected answers from the web API: {self.other_errors[:5]}")
        if not bad:
            return ""
        logs = "\n".join(f"--- {name}:\n{text[-2500:]}" for name, text in self.logs.items())
        return "; ".join(bad) + f"\nfaults: {self.faults}\n{logs}"


# --- the stack ----------------------------------------------------------------------------


class Stack:
    """A private PostgreSQL and redis-server, `workers` `grader worker` processes (the first
    with the sweeper), and the web app in this process, all on private ports and folders."""

    def __init__(self, workers: int = 2, root: Optional[Path] = None, env: Optional[dict[str, str]] = None) -> None:
        from grader.web import create_app
        from grader.web.queue import CeleryEnqueuer

        self.root = Path(tempfile.mkdtemp(prefix="grader-chaos-", dir=root))
        self.env = dict(RECOVERY_ENV if env is None else env)
        self.pg: Optional[PrivatePostgres] = None
        self.broker: Optional[Broker] = None
        self.workers: list[Proc] = []
        self.retired: list[Proc] = []
        self.restarts = 0
        self.exited: list[str] = []  # workers that exited by themselves, with their last line
        try:
            self.pg = PrivatePostgres.create()
            self.pg.start()
            self.pg.create_database()
            migrate.upgrade(self.pg.url)
            self.engine = make_engine(self.pg.url)
            self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
            with self.sessions() as s:
                seed_demo(s, passwords={"student": "student-pass-1"})
                student = s.scalar(select(User).where(User.email == "student@example.com"))
                assert student is not None
                self.token = accounts.create_token(s, student, "chaos")
                s.commit()
            self.broker = start_redis(self.root / "redis")
            self.redis_port = int(self.broker.url.rsplit(":", 1)[1].split("/")[0])
            self.settings = dataclasses.replace(
                Settings.from_env(
                    environ={**self.env, "GRADER_QUEUE": "chaos"},
                    env="testing",
                    database_url=self.pg.url,
                    broker_url=self.broker.url,
                    secret_key="chaos-secret-key-" + "x" * 32,
                    instance_path=self.root / "instance",
                ),
                submit_rate="100000 per minute",
            )
            self.settings.instance_path.mkdir(parents=True, exist_ok=True)
            self.app = create_app(self.settings, enqueue=CeleryEnqueuer(self.settings))
            for index in range(workers):
                self.workers.append(self._start_worker(index))
        except BaseException:
            self.close()
            raise

    def _start_worker(self, index: int) -> Proc:
        log = self.root / f"worker{index}-{self.restarts}.log"
        args = ["worker", "--concurrency=1"] + (["--beat"] if index == 0 else [])
        return Proc(args, worker_env(self.settings, **self.env), log)

    def wait_ready(self, timeout: float = 90.0) -> None:
        for worker in self.workers:
            worker.wait_for(r"ready\.", timeout=timeout)

    # --- faults -----------------------------------------------------------------------------

    def kill_random(self, rng: random.Random) -> str:
        """SIGKILL one worker process, chosen by `rng` among the workers that have graded: a
        main process (its pool dies with it, as in a crashed container, and the worker is
        restarted) or a pool process that has graded (the worker replaces it itself)."""
        # A worker that has graded, if any: one still starting up holds no work to lose.
        busy = [i for i, w in enumerate(self.workers) if any(alive(p) and _has_sandbox(p) for p in children(w.pid))]
        index = rng.choice(busy) if busy else rng.randrange(len(self.workers))
        worker = self.workers[index]
        # Alive only: a killed pool process stays a zombie until its worker reaps it (later,
        # while the worker is busy reconnecting to a restarted broker).
        pool = [pid for pid in children(worker.pid) if alive(pid) and _has_sandbox(pid)]
        if pool and rng.random() < 0.5:
            pid = rng.choice(pool)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return f"worker{index} pool process {pid}"
        worker.kill()
        self.retired.append(worker)
        self.restarts += 1
        self.workers[index] = self._start_worker(index)
        return f"worker{index} main process {worker.pid} (restarted as {self.workers[index].pid})"

    def supervise(self) -> None:
        """Start again any worker that exited by itself, as the deployment's supervisor does
        (docker-compose's `restart: unless-stopped`): a worker started while the database
        is down refuses to start and exits, with a one-line reason."""
        for index, worker in enumerate(self.workers):
            if worker.proc.poll() is not None:
                reason = (worker.text().strip().splitlines() or ["(no output)"])[-1]
                self.exited.append(f"{worker.log_path.name}: {reason[-300:]}")
                worker.stop(timeout=0)
                self.retired.append(worker)
                self.restarts += 1
                self.workers[index] = self._start_worker(index)

    def idle(self, seconds: float) -> None:
        """Wait, supervising the workers meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            self.supervise()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.2, left))

    def stop_redis(self) -> None:
        assert self.broker is not None and self.broker.process is not None
        os.kill(self.broker.process.pid, signal.SIGKILL)
        self.broker.process.wait(timeout=10)

    def start_redis(self) -> None:
        # Back on the same port and password, empty (no persistence): its messages are gone.
        self.broker = start_redis(self.root / "redis", port=self.redis_port)

    def crash_postgres(self) -> None:
        assert self.pg is not None
        self.pg.crash()

    def start_postgres(self) -> None:
        assert self.pg is not None
        self.pg.start()

    # --- submitting -------------------------------------------------------------------------

    def post(self, client: Any, slug: str, name: str, data: bytes) -> tuple[int, Any]:
        response = client.post(
            "/api/v1/submissions",
            headers={"Authorization": f"Bearer {self.token}"},
            data={"assignment": slug, "file": (io.BytesIO(data), name)},
        )
        return response.status_code, response.get_json(silent=True)

    def logs(self) -> dict[str, str]:
        found = {p.log_path.name: p.text() for p in [*self.retired, *self.workers]}
        if self.pg is not None:
            found["postgres.log"] = self.pg.log_tail(4000)
        return found

    def close(self) -> None:
        for worker in [*self.workers, *self.retired]:
            worker.stop(timeout=5)
        if getattr(self, "app", None) is not None:
            self.app.extensions["grader.engine"].dispose()
        if getattr(self, "engine", None) is not None:
            self.engine.dispose()
        if self.broker is not None:
            self.broker.stop(timeout=2)
        if self.pg is not None:
            self.pg.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


def _has_sandbox(pid: int) -> bool:
    """A pool process that has graded: it keeps a sandbox zygote (bwrap) as its child."""
    return any("bwrap" in cmdline(child) or "sh -c" in cmdline(child) for child in children(pid))


# --- a run --------------------------------------------------------------------------------


def schedule(kinds: Iterable[str], kills: int, kill_every: float = 1.0, start: float = 1.0) -> list[Fault]:
    """The faults of a run, in time order: `kills` kills `kill_every` s apart from `start`,
    a Redis restart a third of the way through them and a PostgreSQL crash two thirds."""
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    span = max(kills, 3) * kill_every
    faults = [Fault("kill", start + i * kill_every) for i in range(kills if "kill" in kinds else 0)]
    if "redis" in kinds:
        faults.append(Fault("redis", start + span / 3))
    if "postgres" in kinds:
        faults.append(Fault("postgres", start + 2 * span / 3))
    return sorted(faults, key=lambda f: f.at)


def run(
    kinds: Iterable[str],
    submissions: int,
    kills: int = 0,
    workers: int = 2,
    seed: int = 1,
    kill_every: float = 1.0,
    outage: float = OUTAGE_SECONDS,
    timeout: float = 120.0,
    name: str = "",
    root: Optional[Path] = None,
    spread: Optional[float] = None,
) -> Outcome:
    """One run: start a stack, submit `submissions` files through the web API, spread
    evenly over `spread` s (default: until a second after the last fault begins; a client
    that sends a refused file again after a short wait), inject the scheduled faults, wait up to `timeout` s for the last grading, and count."""
    kinds = list(kinds)
    faults = schedule(kinds, kills, kill_every)
    rng = random.Random(seed)
    stack = Stack(workers=workers, root=root)
    try:
        stack.wait_ready()
        if spread is None:  # submitting goes on until a second after the last fault has begun
            spread = max((f.at for f in faults), default=0.0) + 1.0
        return _run(stack, name or "+".join(kinds), faults, rng, submissions, spread, outage, timeout)
    finally:
        stack.close()


def _run(
    stack: Stack, name: str, faults: list[Fault], rng: random.Random, count: int, spread: float, outage: float, timeout: float
) -> Outcome:
    accepted: dict[int, bool] = {}  # id -> full marks expected
    refused: list[float] = []
    other: list[str] = []
    done_submitting = threading.Event()
    last_fault_began = threading.Event()
    if not faults:
        last_fault_began.set()

    def submitter() -> None:
        client = stack.app.test_client()
        try:
            for i in range(count):
                # Spread over `spread` s, so the faults meet the web app as well as the workers.
                planned = spread * i / count
                wait = began + planned - time.time()
                if wait > 0:
                    time.sleep(wait)
                if planned >= spread - 1.0:
                    # The last second's files go after the last fault has begun, however
                    # late it ran: some always meet it (a crashed database: a 503).
                    last_fault_began.wait(timeout=60)
                slug, filename, data, full = MIX[i % len(MIX)]
                while True:
                    status, body = stack.post(client, slug, filename, data)
                    if status == 202:
                        accepted[int(body["id"])] = full
                        break
                    if status == 503:
                        refused.append(time.time())
                        time.sleep(0.2)
                        continue
                    other.append(f"{status} {body}")
                    break
        except Exception as exc:  # noqa: BLE001 - reported as a failure of the run
            other.append(f"submitter crashed: {type(exc).__name__}: {exc}")
        finally:
            done_submitting.set()

    began = time.time()
    thread = threading.Thread(target=submitter, name="submitter", daemon=True)
    thread.start()
    faults_during_work = 0
    for fault in faults:
        stack.idle(began + fault.at - time.time())
        if not done_submitting.is_set() or _pending(stack, list(accepted)):
            faults_during_work += 1
        fault.started = time.time()
        if fault.kind == "kill":
            fault.what = stack.kill_random(rng)
        elif fault.kind == "redis":
            stack.stop_redis()
            fault.what = "redis-server killed"
        else:
            stack.crash_postgres()
            fault.what = "postgres stopped -m immediate"
        if fault is faults[-1]:
            last_fault_began.set()
        if fault.kind != "kill":
            stack.idle(outage)
            if fault.kind == "redis":
                stack.start_redis()
                fault.what += f", started again empty after {outage:g} s"
            else:
                stack.start_postgres()
                fault.what += f", started again after {outage:g} s"
        fault.ended = time.time()
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        stack.idle(0.25)
    while _pending(stack, list(accepted)) and time.monotonic() < deadline:
        stack.idle(0.25)
    return _count(stack, name, accepted, refused, other, faults, faults_during_work, began)


def _pending(stack: Stack, ids: list[int]) -> bool:
    try:
        with stack.sessions() as s:
            done = s.scalar(
                select(Submission.id).where(Submission.id.in_(ids), Submission.status.in_(("queued", "running"))).limit(1)
            )
            return done is not None
    except Exception:  # noqa: BLE001 - the database is down: still pending
        return True


# Both log styles: `submission=7 event=graded` and `submission.graded submission_id=7`.
def _longest_pause(finished: list[float], start: float, end: float) -> float:
    """The longest time without a grading finishing from `start` until `end` (or until
    the first grading after `end`, if the pause runs past it)."""
    marks = [start] + [t for t in finished if start < t <= end]
    later = [t for t in finished if t > end]
    if later:
        marks.append(later[0])
    return max((b - a for a, b in zip(marks, marks[1:])), default=0.0)


GRADED_LINE = re.compile(r"submission=(\d+) event=graded\b|submission\.graded\b[^\n]*?\bsubmission_id=(\d+)")


def _count(
    stack: Stack,
    name: str,
    accepted: dict[int, bool],
    refused: list[float],
    other: list[str],
    faults: list[Fault],
    faults_during_work: int,
    began: float,
) -> Outcome:
    with stack.sessions() as s:
        rows = {r.id: r for r in s.scalars(select(Submission).where(Submission.id.in_(list(accepted))))}
    logs = stack.logs()
    # Independent of the database's counter: how many times a worker said it wrote a grade.
    said = Counter(int(m.group(1) or m.group(2)) for text in logs.values() for m in GRADED_LINE.finditer(text))
    lost = sorted(sid for sid in accepted if sid not in rows or rows[sid].status != "graded")
    double = sorted(sid for sid, r in rows.items() if r.grade_count > 1 or said[sid] > 1)
    misgraded = sorted(
        sid
        for sid, r in rows.items()
        if r.status == "graded" and (r.score == r.max_score) != accepted[sid]
    )
    finished = sorted(r.graded_at.timestamp() for r in rows.values() if r.graded_at is not None)
    last = finished[-1] if finished else time.time()
    fault_end = max((f.ended for f in faults), default=began)
    first_fault = min((f.started for f in faults), default=began)
    pause = _longest_pause(finished, first_fault, float("inf"))
    for fault, following in zip(faults, [*faults[1:], None]):
        fault.pause_s = _longest_pause(finished, fault.started, following.started if following else float("inf"))
    return Outcome(
        scenario=name,
        submissions=len(accepted),
        refused=len(refused),
        other_errors=other,
        lost=lost,
        double_scored=double,
        misgraded=misgraded,
        interrupted=sum(1 for r in rows.values() if r.attempts > 1),
        faults=faults,
        faults_during_work=faults_during_work,
        recovery_s=max(0.0, last - fault_end) if faults else 0.0,
        longest_pause_s=pause,
        total_s=last - began,
        worker_restarts=stack.restarts,
        exited=list(stack.exited),
        logs=logs,
    )
