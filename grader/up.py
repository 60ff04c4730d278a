"""`grader up`: the whole service on one machine, from one command.

Everything lives in an instance folder: the SQLite database, the broker's data, the secret
key and the demo accounts' passwords. The broker is a private `redis-server` started on a
free localhost port with a random password when one is installed, else kombu's SQLAlchemy
transport on a SQLite file (no server at all). Neither needs to persist anything: the
database is the source of truth, and the worker's sweeper re-enqueues whatever a broker
restart lost. The worker is a `grader worker --beat` subprocess; the web server (waitress)
runs in this process. Ctrl-C or SIGTERM stops the web server, then the worker (gradings
in progress get a few seconds to finish), then the broker; children also die if this
process is killed outright (PR_SET_PDEATHSIG), so nothing is left running.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

import click

DEMO_FILE = "demo-accounts.txt"
WORKER_GRACE_SECONDS = 10.0  # a grading in progress gets this long to finish on Ctrl-C
REDIS_START_SECONDS = 10.0


class UpError(RuntimeError):
    """`grader up` cannot start; the message says why and what to do."""


# Children get SIGTERM when this process dies, even by SIGKILL. Resolved here, once: the
# function that runs between fork and exec must not import or allocate.
try:
    _prctl: Optional[Callable[..., int]] = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


# --- the broker ---------------------------------------------------------------------------


@dataclass
class Broker:
    url: str
    description: str
    process: Optional[subprocess.Popen[bytes]] = None
    log_path: Optional[Path] = None

    def stop(self, timeout: float = 5.0) -> None:
        _stop_process(self.process, timeout)


def start_redis(data_dir: Path, redis_server: str = "redis-server", port: Optional[int] = None) -> Broker:
    """A private redis-server on a free localhost port, with a random password and no
    persistence, its files in `data_dir`. `port` reuses a given port (a restart)."""
    import redis

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    password_file = data_dir / "password"
    if port is not None and password_file.is_file():
        password = password_file.read_text().strip()
    else:
        password = _random_password()
        _write_private(password_file, password)
    log_path = data_dir / "redis.log"
    last_error = ""
    for _ in range(5):  # another process may take the free port between the probe and the bind
        chosen = port or free_port()
        config = "\n".join(
            [
                "bind 127.0.0.1",
                f"port {chosen}",
                "protected-mode yes",
                f'requirepass "{password}"',
                'save ""',
                "appendonly no",
                f'dir "{data_dir}"',
                f'logfile "{log_path}"',
                "daemonize no",
                "databases 1",
                "",
            ]
        )
        conf = data_dir / "redis.conf"
        _write_private(conf, config)
        proc = subprocess.Popen(
            [redis_server, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `grader up`, which stops things in order
            preexec_fn=_die_with_parent,
        )
        client = redis.Redis(host="127.0.0.1", port=chosen, password=password, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + REDIS_START_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if client.ping():
                    client.close()
                    return Broker(
                        url=f"redis://:{password}@127.0.0.1:{chosen}/0",
                        description=f"private redis-server on 127.0.0.1:{chosen} (pid {proc.pid}; log {log_path})",
                        process=proc,
                        log_path=log_path,
                    )
            except redis.RedisError:
                time.sleep(0.05)
        client.close()
        _stop_process(proc, 2.0)
        last_error = _tail(log_path)
        if port is not None:
            break
    raise UpError(f"redis-server did not start: {last_error or 'no log'}")


def _random_password() -> str:
    import secrets

    return secrets.token_hex(24)  # hex: no quoting questions in redis.conf or URLs


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def sqlite_broker(instance: Path) -> Broker:
    path = instance / "broker.sqlite"
    return Broker(
        url=f"sqla+sqlite:///{path}",
        description=f"SQLite queue {path} (no redis-server installed; no server needed)",
    )


def choose_broker(kind: str, instance: Path) -> Broker:
    redis_server = shutil.which("redis-server")
    if kind == "redis" or (kind == "auto" and redis_server):
        if not redis_server:
            raise UpError("--broker redis: redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        return start_redis(instance / "redis", redis_server)
    return sqlite_broker(instance)


# --- processes ----------------------------------------------------------------------------


def _stop_process(proc: Optional[subprocess.Popen[Any]], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Stop a child we started in its own session: `sig` to it, then SIGKILL to its whole
    process group (a Celery worker's pool processes and beat) after `timeout`."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def start_worker(env: dict[str, str], concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "grader.cli", "worker", "--beat", f"--concurrency={concurrency}"],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


# --- demo accounts ------------------------------------------------------------------------


def seed(database_url: str, instance: Path, out: Callable[[str], None]) -> None:
    """Migrate, load the demo course, and tell the person at the terminal how to log in."""
    from grader.store import migrate
    from grader.store.db import make_engine, make_sessionmaker
    from grader.store.demo import DEMO_COURSE, seed_demo

    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            accounts = seed_demo(session)
            session.commit()
    finally:
        engine.dispose()
    saved = instance / DEMO_FILE
    new = [a for a in accounts if a.password is not None]
    if new:
        lines = [f"{a.role:<11} {a.email:<26} {a.password}" for a in new]
        existing = saved.read_text() if saved.is_file() else f"# Demo accounts of `grader up` (course {DEMO_COURSE!r})\n"
        _write_private(saved, existing + "\n".join(lines) + "\n")
        out(f"Demo accounts (course {DEMO_COURSE!r}), log in with:")
        for line in lines:
            out("  " + line)
        out(f"(saved in {saved}, readable only by you)")
    old = [a for a in accounts if a.password is None]
    if old:
        names = ", ".join(a.email for a in old)
        if saved.is_file():
            out(f"Demo accounts {names} exist already; their passwords are in {saved}")
        else:
            out(f"Demo accounts {names} exist already; set a new password with `grader users set-password EMAIL`")


def recover(database_url: str) -> list[int]:
    """Submissions the previous run left behind: queued (a broker without persistence lost
    their messages) or running (its worker was stopped mid-grading). This process holds the
    instance lock, so no worker of that run is alive: their leases are ended now rather
    than after LEASE_SECONDS, and the ids are returned to be enqueued again."""
    import datetime as dt

    from sqlalchemy import update

    from grader.store.db import make_engine, make_sessionmaker, utcnow
    from grader.store.models import Submission
    from grader.store.submissions import stuck

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            now = utcnow()
            session.execute(
                update(Submission).where(Submission.status == "running").values(lease_expires_at=now)
            )
            ids = stuck(session, 0, now=now + dt.timedelta(seconds=1), by="startup")
            session.commit()
    finally:
        engine.dispose()
    return ids


# --- the launcher -------------------------------------------------------------------------


@dataclass
class _Stop:
    reason: str = ""
    code: int = 0
    requested: threading.Event = field(default_factory=threading.Event)


def _lock_instance(instance: Path) -> IO[str]:
    lock = open(instance / "up.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        other = lock.read().strip() or "?"
        lock.close()
        raise UpError(f"another `grader up` (pid {other}) is running with the instance folder {instance}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def run(
    port: int = 8000,
    host: str = "127.0.0.1",
    instance: Optional[str] = None,
    broker: str = "auto",
    concurrency: Optional[int] = None,
    out: Callable[[str], None] = click.echo,
) -> int:
    """Bring the service up and serve until Ctrl-C/SIGTERM; returns the exit status."""
    folder = Path(instance or os.environ.get("GRADER_INSTANCE") or "instance").resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UpError(f"cannot create the instance folder {folder}: {exc.strerror or exc}") from None
    lock = _lock_instance(folder)
    try:
        return _serve(folder, port, host, broker, concurrency, out)
    finally:
        lock.close()


def _serve(
    folder: Path, port: int, host: str, broker: str, concurrency: Optional[int], out: Callable[[str], None]
) -> int:
    from sqlalchemy.exc import OperationalError

    from grader.config import ConfigError, Settings, log_format_from
    from grader.sandbox import SandboxUnavailable
    from grader.store.migrate import head_revision
    from grader.service_cli import cpu_count, log_setup, redact
    from worker.tasks import sandbox_preflight

    try:
        # Everything here runs as development (its children too): text logs unless asked.
        log_setup(log_format_from(os.environ, "development"), "up")
    except ConfigError as exc:
        raise UpError(f"configuration: {exc}") from None

    try:
        sandbox = sandbox_preflight()
    except SandboxUnavailable as exc:
        raise UpError(str(exc)) from None
    if not _port_free(host, port):
        raise UpError(f"port {port} on {host} is in use: pass --port N (or --port 0 for any free port)")

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BROKER_URL", "DATABASE_URL")}
    env.update(GRADER_ENV="development", GRADER_INSTANCE=str(folder), DATABASE_URL=f"sqlite:///{folder / 'grader.db'}")
    try:
        Settings.from_env(environ=env)  # the configuration must be sound before anything starts
        seed(env["DATABASE_URL"], folder, out)
    except ConfigError as exc:
        raise UpError(f"configuration: {exc}") from None
    except OperationalError as exc:
        raise UpError(f"cannot use the database in {folder}: {exc.orig or exc}") from None

    stop = _Stop()
    the_broker: Optional[Broker] = None
    worker: Optional[subprocess.Popen[bytes]] = None
    server: Any = None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(signum: int, _frame: Any) -> None:
        if stop.requested.is_set():
            return  # already stopping; the cleanup below bounds every wait
        stop.reason = stop.reason or signal.Signals(signum).name
        stop.requested.set()
        raise KeyboardInterrupt  # ends waitress's loop (it catches this and returns)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        the_broker = choose_broker(broker, folder)
        env["BROKER_URL"] = the_broker.url
        settings = Settings.from_env(environ=env)
        workers = concurrency or cpu_count()
        worker = start_worker(env, workers)

        from waitress import create_server

        from grader.web import create_app

        app = create_app(settings)
        try:
            server = create_server(app, host=host, port=port, threads=8, ident="grader")
        except OSError as exc:
            raise UpError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        left = recover(settings.database_url)
        if left:
            app.extensions["grader.enqueue"](left)
            out(f"Re-enqueued {len(left)} submission(s) the previous run left ungraded.")
        actual_port = server.effective_port
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        url = f"http://{shown_host}:{actual_port}/"
        out("")
        out(f"grader up: {url}")
        out(f"  instance  {folder}")
        out(f"  database  {redact(settings.database_url)} (schema at revision {head_revision()})")
        out(f"  broker    {the_broker.description}")
        out(f"  worker    {workers} grading process(es), pid {worker.pid}, with the sweeper; {sandbox}")
        out(f"  web       waitress on {host}:{actual_port}")
        out(f"Open {url} and log in with a demo account. Ctrl-C stops everything.")
        out("")
        sys.stdout.flush()

        watched = [("worker", worker)] + ([("redis-server", the_broker.process)] if the_broker.process else [])
        threading.Thread(target=_watch, args=(watched, stop), daemon=True, name="grader-up-watch").start()
        if not stop.requested.is_set():
            server.run()  # returns on Ctrl-C/SIGTERM (KeyboardInterrupt inside its loop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.requested.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stop.reason:
            out(f"\ngrader up: stopping ({stop.reason})...")
        if server is not None:
            server.close()
        if worker is not None:
            # SIGTERM: Celery's warm shutdown lets a grading in progress finish; what does not
            # finish in time is re-graded by the sweeper on the next start (the row is leased).
            _stop_process(worker, WORKER_GRACE_SECONDS)
        if the_broker is not None:
            the_broker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    out("grader up: stopped")
    return stop.code


def _watch(children: list[tuple[str, subprocess.Popen[Any]]], stop: _Stop) -> None:
    """Stop everything if a child dies on its own: a half-running service is worse than none."""
    while not stop.requested.wait(0.5):
        for name, proc in children:
            code = proc.poll()
            if code is not None and not stop.requested.is_set():
                stop.reason = f"the {name} exited unexpectedly with status {code}"
                stop.code = 1
                os.kill(os.getpid(), signal.SIGTERM)
                return


def _port_free(host: str, port: int) -> bool:
    if port == 0:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
