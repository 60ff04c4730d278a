"""The real service on this machine, for benchmarks and fault tests: a fresh PostgreSQL
database, a Redis queue of its own, the web app and the grading workers as real processes.

    from benchmarks.stack import Stack

    with Stack(students=50, workers=2) as stack:
        stack.url                  # http://127.0.0.1:PORT (the JSON API is under /api/v1)
        stack.students[0].token    # each student has an API token ("Authorization: Bearer ...")
        stack.sessions()           # a SQLAlchemy session on the benchmark's database
        stack.worker_pool_pids()   # the grading processes (Celery's pool), e.g. to kill one
        stack.restart("worker", hard=True)   # SIGKILL the worker, start a new one
    stack.orphans()                # after the block: processes left behind (none expected)

`Client(stack.url).submit(token, assignment, filename, data, Ticket(i, 0.0))` sends one
submission; `iter_rows(stack, ids)` reads their rows back.

On entry it creates the database `bench_<pid>_<random>` on the server (default
postgresql://postgres@127.0.0.1:5432), migrates it, seeds a course `bench` with the four
built-in assignments published (no submission limit, no deadline) and the students, then
starts the web app (gunicorn as in docker-compose.yml, or waitress as `grader web`) on a
free port and one `grader worker --concurrency=N` (`beat=True`: with the sweeper), and
waits until both answer. On exit (or `stop()`, also after a failed start) it stops them,
kills anything they left behind (the sandbox zygotes live in sessions of their own), drops
the database and deletes its own queue's keys from Redis. It never flushes Redis or
touches other databases.

The services run with GRADER_ENV=production. The web app's per-user submission rate limit
is raised (`GRADER_SUBMIT_RATE=100000 per minute`): a benchmark submits far faster than a
student may. `runner="subprocess"` grades with a fresh interpreter per submission
(`GRADER_SANDBOX=insecure-subprocess`, the project's loudly logged development mode): the
baseline of `./dev bench-burst --compare`, never for hostile code that forks.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# _die_with_parent: a benchmark killed outright must not leave its service running (resolved
# here, not between fork and exec, where nothing may be imported).
from grader.up import _die_with_parent, _stop_process, free_port  # noqa: E402

PG_SERVER = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COURSE = "bench"
BENCH_SUBMIT_RATE = "100000 per minute"
# Settings a caller may not override through `env`: they tie the processes to this stack.
_OWN = ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "GRADER_QUEUE", "GRADER_INSTANCE", "SECRET_KEY")


class StackError(RuntimeError):
    """The stack could not start; the message says which part and shows its log's end."""


@dataclass(frozen=True)
class Student:
    id: int
    email: str
    token: str


@dataclass
class _Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    # Every process seen under it (pid -> start time), so that what escaped its process
    # group (the sandbox zygotes call setsid) can be found and killed at the end.
    seen: dict[int, int] = field(default_factory=dict)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _start_time(pid: int) -> Optional[int]:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (children, their children, ...)."""
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


class Stack:
    """The service stack for one benchmark or test run (see the module's docstring)."""

    def __init__(
        self,
        students: int = 20,
        workers: int = 2,
        web: str = "gunicorn",
        web_processes: int = 2,
        web_threads: int = 4,
        runner: str = "sandbox",
        beat: bool = False,
        env: Optional[dict[str, str]] = None,
        pg_server: str = PG_SERVER,
        redis_url: str = REDIS_URL,
        log_dir: Optional[Path] = None,
        start_timeout: float = 60.0,
    ) -> None:
        if students < 1 or workers < 1:
            raise ValueError("a stack needs at least one student and one worker process")
        if web not in ("gunicorn", "waitress"):
            raise ValueError(f"web={web!r}: use gunicorn or waitress")
        if runner not in ("sandbox", "subprocess"):
            raise ValueError(f"runner={runner!r}: use sandbox or subprocess")
        clash = sorted(set(env or {}) & set(_OWN))
        if clash:
            raise ValueError(f"env may not set {', '.join(clash)}: the stack chooses them")
        self.n_students, self.workers, self.web = students, workers, web
        self.web_processes, self.web_threads, self.runner = web_processes, web_threads, runner
        self.extra_env = dict(env or {})
        self.beat = beat
        self.pg_server, self.redis_url = pg_server, redis_url
        self.start_timeout = start_timeout
        tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.db_name = f"bench_{tag}"
        self.queue = f"bench-{tag}"
        self.database_url = pg_server.rsplit("/", 1)[0] + "/" + self.db_name
        self._own_dir = log_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="grader-bench-")) if log_dir is None else Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.students: list[Student] = []
        self.assignments: dict[str, int] = {}  # slug -> assignment id
        self._services: list[_Service] = []
        self._stopped: list[_Service] = []
        self._engine: Any = None
        self._sessions: Optional[sessionmaker[Session]] = None
        self._db_created = False

    # --- the public API -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sessions(self) -> Session:
        if self._sessions is None:
            raise StackError("the stack is not started")
        return self._sessions()

    def worker_pool_pids(self) -> list[int]:
        """The Celery pool processes (the ones that grade), children of the worker."""
        worker = self._service("worker")
        beat = self._beat_pid(worker)
        return [pid for pid in children(worker.proc.pid) if pid != beat]

    def _beat_pid(self, worker: _Service) -> Optional[int]:
        # The embedded beat is a forked child like the pool's, with the same command line;
        # it is told apart by the pid in its start-up log line.
        if not self.beat:
            return None
        found = re.search(r'"message": "beat: Starting\.\.\."[^\n]*"pid": (\d+)', worker.tail(1 << 20))
        return int(found.group(1)) if found else -1

    def service_pid(self, name: str) -> int:
        """The main pid of 'web' or 'worker' (each leads its own process group)."""
        return self._service(name).proc.pid

    def restart(self, name: str, hard: bool = False) -> None:
        """Stop 'web' or 'worker' (SIGTERM and a grace period; `hard`: SIGKILL at once, as a
        crash) and start it again, waiting until it answers. Its old log is kept as
        NAME.log.N; rows it held stay as they are (for the sweeper or a test to find)."""
        service = self._service(name)
        self._stop_service(service, grace=0.0 if hard else 15.0)
        self._services.remove(service)
        self._stopped.append(service)
        kept = service.log.with_name(f"{name}.log.{len(self._stopped)}")
        service.log.rename(kept)
        service.log = kept
        if name == "web":
            self._start_web()
        else:
            self._start_worker()
        self._wait_ready()

    def log_text(self, name: str) -> str:
        return self._service(name).tail(1 << 20)

    @property
    def settings_env(self) -> dict[str, str]:
        """The environment the service processes run with."""
        # The sandbox's requirements pass through (CI's GRADER_SANDBOX_REQUIRE applies);
        # any other service setting of the calling shell does not.
        keep = ("GRADER_SANDBOX_", "GRADER_LANDLOCK_")
        env = {
            k: v for k, v in os.environ.items()
            if k not in _OWN and (not k.startswith("GRADER_") or k.startswith(keep))
        }
        env.update(
            GRADER_ENV="production",
            DATABASE_URL=self.database_url,
            BROKER_URL=self.redis_url,
            GRADER_QUEUE=self.queue,
            GRADER_INSTANCE=str(self.dir / "instance"),
            SECRET_KEY=self._secret,
            GRADER_SUBMIT_RATE=BENCH_SUBMIT_RATE,
            GRADER_SPEC_CACHE=str(self.dir / "specs"),
            GRADER_LOG_FORMAT="json",  # one object per line: the beat's pid is read from it
            PYTHONUNBUFFERED="1",
        )
        if self.runner == "subprocess":
            # The fresh-interpreter baseline: the project's own development mode, logged loudly.
            env["GRADER_SANDBOX"] = "insecure-subprocess"
        env.update(self.extra_env)
        return env

    def start(self) -> "Stack":
        self._secret = secrets.token_urlsafe(48)
        try:
            self._create_database()
            self._seed()
            self._start_web()
            self._start_worker()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything this stack started, whatever state it is in. Safe to call twice."""
        for service in reversed(self._services):
            self._stop_service(service)
        self._stopped += self._services
        self._services = []
        if self._engine is not None:
            self._engine.dispose()
            self._engine, self._sessions = None, None
        if self._db_created:
            self._drop_database()
        self._delete_queue()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- database -------------------------------------------------------------------------

    def _admin(self) -> Any:
        from grader.store.db import make_engine

        return make_engine(self.pg_server, isolation_level="AUTOCOMMIT")

    def _create_database(self) -> None:
        from grader.store import migrate
        from grader.store.db import make_engine, make_sessionmaker

        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        except Exception as exc:  # noqa: BLE001 - say which server, not a driver traceback
            said = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
            raise StackError(f"cannot create a database on {self.pg_server}: {said[0]}") from None
        finally:
            admin.dispose()
        self._db_created = True
        migrate.upgrade(self.database_url)
        self._engine = make_engine(self.database_url)
        self._sessions = make_sessionmaker(self._engine)

    def _drop_database(self) -> None:
        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            self._db_created = False
        finally:
            admin.dispose()

    def _seed(self) -> None:
        from grader.store import accounts, catalog

        with self.sessions() as session:
            course = catalog.create_course(session, COURSE, "Benchmark course")
            for assignment in catalog.install_builtins(session, course, published=True, due_at=None):
                assignment.max_submissions = None  # a deadline rush: nobody runs out
                self.assignments[assignment.slug] = assignment.id
            # Accounts without passwords: nobody logs in, and hashing many passwords would
            # only slow the set-up.
            made = []
            for i in range(self.n_students):
                user = accounts.create_user(session, f"student{i:05d}@bench.example", role="student", name=f"Student {i}")
                accounts.set_membership(session, course, user, "student")
                made.append((user, accounts.create_token(session, user, name="benchmark")))
            session.commit()
            self.students = [Student(u.id, u.email, t) for u, t in made]

    # --- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                env=self.settings_env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: one killpg stops it all
                preexec_fn=_die_with_parent,
            )
        self._services.append(_Service(name, proc, log))

    def _start_web(self) -> None:
        self.port = self.port or free_port()  # a restarted web app keeps its address
        if self.web == "gunicorn":
            args = [
                sys.executable, "-m", "gunicorn",
                f"--bind=127.0.0.1:{self.port}",
                f"--workers={self.web_processes}",
                "--worker-class=gthread",
                f"--threads={self.web_threads}",
                "--timeout=60",
                "--worker-tmp-dir=/dev/shm",
                "grader.web:create_app()",
            ]
        else:
            args = [sys.executable, "-m", "grader.cli", "web", f"--port={self.port}", f"--threads={self.web_threads}"]
        self._spawn("web", args)

    def _start_worker(self) -> None:
        self._spawn(
            "worker",
            [sys.executable, "-m", "grader.cli", "worker", f"--concurrency={self.workers}", "--loglevel=INFO"]
            + (["--beat"] if self.beat else []),
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        web_ok = worker_ok = False
        while time.monotonic() < deadline:
            for service in self._services:
                if service.proc.poll() is not None:
                    raise StackError(f"{service.name} exited with {service.proc.returncode}:\n{service.tail()}")
            if not web_ok:
                web_ok = self._answers()
            if not worker_ok:
                text = self._service("worker").tail(1 << 16)
                worker_ok = " ready." in text and len(self.worker_pool_pids()) >= self.workers
                worker_ok = worker_ok and (not self.beat or self._beat_pid(self._service("worker")) != -1)
            if web_ok and worker_ok:
                self._remember_processes()
                return
            time.sleep(0.2)
        which = [name for name, ok in (("web", web_ok), ("worker", worker_ok)) if not ok]
        raise StackError(
            f"{' and '.join(which)} not ready after {self.start_timeout:g} s:\n"
            + "\n".join(f"--- {n}:\n{self._service(n).tail()}" for n in which)
        )

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/api/v1/me", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # the API answers (without a token, 401)
        except OSError:
            return False
        return True

    def _service(self, name: str) -> _Service:
        for service in self._services:
            if service.name == name:
                return service
        raise StackError(f"no {name} process in this stack")

    def _remember_processes(self) -> None:
        for service in self._services:
            for pid in [service.proc.pid, *descendants(service.proc.pid)]:
                started = _start_time(pid)
                if started is not None:
                    service.seen.setdefault(pid, started)

    def _stop_service(self, service: _Service, grace: float = 15.0) -> None:
        self._remember_processes()
        proc = service.proc
        # grace 0 is a hard stop: SIGKILL at once, as a crashed host would.
        _stop_process(proc, grace, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        # What left the group (sandbox zygotes and their children): only the very processes
        # seen under this service, checked by start time so a reused pid is never hit.
        for pid, started in service.seen.items():
            if pid != proc.pid and _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def orphans(self) -> list[int]:
        """Processes seen under a service that are still alive (after stop: should be none)."""
        left = []
        for service in self._services + self._stopped:
            for pid, started in service.seen.items():
                if _start_time(pid) == started and _state(pid) not in ("Z", "X"):
                    left.append(pid)
        return left

    def _delete_queue(self) -> None:
        """Remove only this stack's keys: the queue and kombu's bindings for it."""
        try:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            keys = [self.queue, *client.scan_iter(match=f"*{self.queue}*", count=1000)]
            client.delete(*set(keys))
            client.close()
        except Exception:  # noqa: BLE001 - a leftover empty key harms nobody; the run's result stands
            pass


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


@dataclass
class Ticket:
    """What the client saw of one submission: when it was sent and answered, and the id."""

    index: int
    sent: float  # time.time() just before the request
    answered: float = 0.0
    status: int = 0
    id: Optional[int] = None
    error: str = ""


def multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with `fields` and one file field named 'file'."""
    boundary = "bench" + secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/x-python\r\n\r\n".encode() + data + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """One HTTP keep-alive connection to the stack's API (one per client thread)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import http.client
        import urllib.parse

        parsed = urllib.parse.urlsplit(url)
        self._make = lambda: http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
        self._conn = self._make()

    def submit(self, token: str, assignment: str, filename: str, data: bytes, ticket: Ticket) -> Ticket:
        """POST /api/v1/submissions; fills in `ticket` (a failed request is recorded, not raised)."""
        import json

        body, ctype = multipart({"assignment": assignment, "course": COURSE}, filename, data)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype}
        for attempt in (1, 2):
            try:
                ticket.sent = time.time()
                self._conn.request("POST", "/api/v1/submissions", body=body, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
                ticket.answered = time.time()
                ticket.status = response.status
                if response.status == 202:
                    ticket.id = int(json.loads(payload)["id"])
                else:
                    ticket.error = payload.decode(errors="replace")[:300]
                return ticket
            except (OSError, ValueError) as exc:
                # A keep-alive connection the server closed: reconnect once. Resending is safe
                # only if nothing was answered; a request that may have been accepted is not
                # sent twice (it would be an extra submission).
                self._conn.close()
                self._conn = self._make()
                if attempt == 2 or not isinstance(exc, (ConnectionResetError, BrokenPipeError)) or ticket.status:
                    ticket.answered = time.time()
                    ticket.error = f"{type(exc).__name__}: {exc}"
                    return ticket
        return ticket

    def close(self) -> None:
        self._conn.close()


def iter_rows(stack: Stack, ids: list[int]) -> Iterator[Any]:
    """The submissions rows with these ids (status, timestamps, score, grade_count)."""
    from sqlalchemy import select

    from grader.store.models import Submission

    with stack.sessions() as session:
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            yield from session.execute(
                select(
                    Submission.id, Submission.status, Submission.score, Submission.max_score,
                    Submission.submitted_at, Submission.started_at, Submission.graded_at,
                    Submission.grade_count, Submission.attempts, Submission.result,
                ).where(Submission.id.in_(chunk))
            )
