"""Operator commands of the service: `grader db upgrade`, `grader users add`, `grader tokens
create`, `grader web`, `grader worker`, `grader sweep` and `grader up`.

All of them read their configuration from the environment (grader.config.Settings) and
end with one clear sentence, never a traceback, when the configuration is incomplete or
the database cannot be reached. Flask, Celery and SQLAlchemy are imported inside the
commands, so `grader grade` does not pay for them."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any, Callable, Optional, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("grader.service")

ROLE_CHOICE = click.Choice(["student", "ta", "instructor"], case_sensitive=False)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"grader: {message}", err=True)
    sys.exit(code)


def redact(url: str) -> str:
    """A database or broker URL fit to print: the password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def service_command(fn: F) -> F:
    """Turn configuration and connection problems into a message for the operator."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import DBAPIError, OperationalError

        from grader.config import ConfigError

        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(f"configuration: {exc}")
        except OperationalError as exc:
            fail(f"cannot use the database {redact(_used['database_url'])}: {_first_line(exc.orig or exc)}")
        except DBAPIError as exc:
            fail(f"database error: {_first_line(exc.orig or exc)}")

    return wrapper  # type: ignore[return-value]


# The database URL in use, for error messages raised far from where it was read.
_used: dict[str, str] = {"database_url": "(DATABASE_URL)"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _settings() -> Any:
    from grader.config import Settings

    settings = Settings.from_env()
    _used["database_url"] = settings.database_url
    return settings


# How long a starting worker waits for the database to answer. A worker restarted while
# PostgreSQL restarts (a host reboot, a failover) would otherwise exit and crash-loop
# under its supervisor; the fault benchmark showed exactly that.
STARTUP_DATABASE_WAIT_SECONDS = 60.0


def _require_current_schema(url: str, wait_seconds: float = 0.0) -> None:
    from sqlalchemy.exc import OperationalError

    from grader.store import migrate
    from grader.store.db import make_engine

    engine = make_engine(url)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                current = migrate.current_revision(engine)
                break
            except OperationalError as exc:
                if time.monotonic() + 1.0 > deadline:
                    raise
                log.warning(
                    "the database %s does not answer yet (%s); waiting up to %.0f s more",
                    redact(url), type(exc.orig or exc).__name__, deadline - time.monotonic(),
                )
                time.sleep(1.0)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    if current != head:
        state = "empty (never migrated)" if current is None else f"at revision {current}"
        fail(
            f"the database {redact(url)} is {state}, but this version of the grader needs revision {head}: "
            "run `grader db upgrade` first"
        )


def register(main: click.Group) -> None:
    """Add the service commands to the `grader` command group (grader/cli.py)."""
    for command in (db, users, tokens, web, worker, sweep, up):
        main.add_command(command)


# --- grader db ----------------------------------------------------------------------------


@click.group()
def db() -> None:
    """The service's database (DATABASE_URL)."""


@db.command("upgrade")
@service_command
def db_upgrade() -> None:
    """Create or migrate the database schema to the current version."""
    from grader.store import migrate

    settings = _settings()
    migrate.upgrade(settings.database_url)
    click.echo(f"database {redact(settings.database_url)} is at revision {migrate.head_revision()} (current)")


# --- grader users -------------------------------------------------------------------------


@click.group()
def users() -> None:
    """User accounts."""


def _ask_password(given: Optional[str]) -> tuple[str, bool]:
    """(password, generated): the given one, a typed one on a terminal, or a random one."""
    if given is not None:
        return given, False
    if sys.stdin.isatty():
        typed = click.prompt(
            "Password (leave empty to generate one)", default="", show_default=False, hide_input=True
        )
        if typed:
            again = click.prompt("Password again", default="", show_default=False, hide_input=True)
            if again != typed:
                fail("the two passwords differ")
            return typed, False
    from grader.store.accounts import initial_password

    return initial_password(), True


@users.command("add")
@click.argument("email")
@click.option("--role", type=ROLE_CHOICE, required=True, help="Site-wide role, and the role in --course.")
@click.option("--password", help="Initial password (default: prompt, or generate and print one). "
              "Visible in the shell history and process list: prefer the prompt.")
@click.option("--course", "course_code", help="Also add the user to this course (by code) with --role.")
@click.option("--name", default="", help="Display name.")
@service_command
def users_add(email: str, role: str, password: Optional[str], course_code: Optional[str], name: str) -> None:
    """Create a user EMAIL with a role (student, ta, instructor). For an existing user,
    --course adds (or changes) their membership of that course."""
    from sqlalchemy import select

    from grader.store import accounts
    from grader.store.models import Course

    role = role.lower()
    with _session() as session:
        course = None
        if course_code:
            course = session.scalar(select(Course).where(Course.code == course_code.strip().lower()))
            if course is None:
                fail(f"no course with code {course_code!r}")
        try:
            existing = accounts.find_user(session, accounts.normalize_email(email))
        except accounts.AccountError as exc:
            fail(str(exc))
        if existing is not None:
            if course is None:
                fail(f"a user with email {existing.email} already exists (add --course CODE to enrol them)")
            if password is not None:
                fail(f"{existing.email} already exists; this command does not change passwords "
                     "(use `grader users set-password`)")
            assert course is not None
            accounts.set_membership(session, course, existing, role)
            session.commit()
            click.echo(f"{existing.email} already exists; now {role} in course {course.code}")
            return
        chosen, generated = _ask_password(password)
        try:
            user = accounts.create_user(session, email, role=role, password=chosen, name=name)
        except accounts.AccountError as exc:
            fail(str(exc))
        if course is not None:
            accounts.set_membership(session, course, user, role)
        session.commit()
        where = f" in course {course.code}" if course is not None else ""
        click.echo(f"created {role} {user.email}{where}")
        if generated:
            click.echo(f"password: {chosen}")
            click.echo("(shown once; give it to the user, who can change it on the account page)", err=True)


@users.command("set-password")
@click.argument("email")
@click.option("--password", help="The new password (default: prompt, or generate and print one).")
@service_command
def users_set_password(email: str, password: Optional[str]) -> None:
    """Set a new password for EMAIL (a forgotten one, or a demo account's)."""
    from grader.store import accounts

    with _session() as session:
        user = accounts.find_user(session, email)
        if user is None:
            fail(f"no user with email {email!r}")
        assert user is not None
        chosen, generated = _ask_password(password)
        try:
            accounts.set_password(user, chosen)
        except accounts.AccountError as exc:
            fail(str(exc))
        session.commit()
        click.echo(f"password of {user.email} changed")
        if generated:
            click.echo(f"password: {chosen}")


# --- grader tokens ------------------------------------------------------------------------


@click.group()
def tokens() -> None:
    """API tokens (Authorization: Bearer TOKEN)."""


@tokens.command("create")
@click.argument("email")
@click.option("--name", default="", help="A name to tell the token apart (e.g. 'submit client').")
@service_command
def tokens_create(email: str, name: str) -> None:
    """Create an API token for EMAIL and print it (only its hash is stored, so it is shown
    once). The token alone is printed on stdout, for scripts."""
    from grader.store import accounts

    with _session() as session:
        user = accounts.find_user(session, email)
        if user is None:
            fail(f"no user with email {email!r}")
        assert user is not None
        if not user.active:
            fail(f"{user.email} is deactivated")
        token = accounts.create_token(session, user, name=name)
        session.commit()
    click.echo(token)
    click.echo(f"(token for {user.email}; shown once, only its hash is stored)", err=True)


def _session() -> Any:
    """A session on the configured database, checked to be at the current schema."""
    from grader.store.db import make_engine, make_sessionmaker

    settings = _settings()
    _require_current_schema(settings.database_url)
    engine = make_engine(settings.database_url)
    return _ClosingSession(make_sessionmaker(engine)(), engine)


class _ClosingSession:
    def __init__(self, session: Any, engine: Any) -> None:
        self.session, self.engine = session, engine

    def __enter__(self) -> Any:
        return self.session

    def __exit__(self, *exc: Any) -> None:
        self.session.close()
        self.engine.dispose()


# --- grader web / worker / sweep ----------------------------------------------------------


def log_setup(log_format: str, service: str, level: int = logging.INFO) -> None:
    """Configure logging once per process: `log_format` is Settings.log_format (json or text)."""
    from grader import logs

    logs.configure(log_format, service, level)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True, help="Request threads.")
@service_command
def web(host: str, port: int, threads: int) -> None:
    """Serve the web app with waitress (put a TLS-terminating proxy in front in production)."""
    settings = _settings()
    _require_current_schema(settings.database_url)
    log_setup(settings.log_format, "web")
    from waitress import serve

    from grader.web import create_app

    app = create_app(settings)
    click.echo(f"grader web on http://{host}:{port}/ (database {redact(settings.database_url)}, {settings.env})")
    try:
        serve(app, host=host, port=port, threads=threads, ident="grader")
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@click.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 512), default=None,
              help="Grading processes (default: the number of CPUs).")
@click.option("--beat", is_flag=True, help="Also run the sweeper's schedule in this worker (run it in one worker only).")
@click.option("--loglevel", default="INFO", show_default=True)
@service_command
def worker(concurrency: Optional[int], beat: bool, loglevel: str) -> None:
    """Run a Celery worker that grades submissions from the configured queue."""
    from grader.sandbox import SandboxUnavailable

    settings = _settings()
    log_setup(settings.log_format, "worker", getattr(logging, loglevel.upper(), logging.INFO))
    from worker.tasks import create_worker_app, sandbox_preflight

    try:
        sandbox = sandbox_preflight()
    except SandboxUnavailable as exc:
        fail(str(exc))
    _require_current_schema(settings.database_url, wait_seconds=STARTUP_DATABASE_WAIT_SECONDS)
    app = create_worker_app(settings)
    concurrency = concurrency or cpu_count()
    click.echo(
        f"grader worker: queue {settings.queue!r}, {concurrency} process(es), broker {redact(settings.broker_url)}, "
        f"database {redact(settings.database_url)}; {sandbox}" + ("; with the sweeper" if beat else ""),
        err=True,
    )
    argv = [
        "worker",
        f"--queues={settings.queue}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel.upper()}",
        f"--hostname=grader-{os.getpid()}@%h",
        # No remote control or gossip: nothing here uses them, and the no-server
        # transport (kombu's SQLAlchemy one) has no fanout to carry them.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if beat:
        # The sweeper's schedule is kept in memory: missing a sweep across a restart costs nothing.
        argv += ["--beat", "--scheduler=celery.beat:Scheduler"]
    app.worker_main(argv)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@click.command()
@service_command
def sweep() -> None:
    """Re-enqueue stuck submissions now (the worker started with --beat does it periodically)."""
    from grader.web.queue import CeleryEnqueuer
    from worker.tasks import sessions_for
    from worker.tasks import sweep as sweep_once

    settings = _settings()
    log_setup(settings.log_format, "sweep")
    _require_current_schema(settings.database_url)
    sent = sweep_once(sessions_for(settings.database_url), settings.stuck_seconds, CeleryEnqueuer(settings))
    if sent:
        click.echo(f"re-enqueued {len(sent)} submission(s): {', '.join(map(str, sent))}")
    else:
        click.echo("nothing stuck")


# --- grader up ----------------------------------------------------------------------------


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Web port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--instance", "instance", type=click.Path(file_okay=False), default=None,
              help="Instance folder for the database, broker and secrets (default: $GRADER_INSTANCE or ./instance).")
@click.option("--broker", type=click.Choice(["auto", "redis", "sqlite"]), default="auto", show_default=True,
              help="auto: a private redis-server if installed, else a SQLite-backed queue that needs no server.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 512), default=None,
              help="Grading processes (default: the number of CPUs).")
def up(port: int, host: str, instance: Optional[str], broker: str, concurrency: Optional[int]) -> None:
    """Run everything on this machine: database (SQLite), broker, worker and web server,
    with a demo course and accounts. Ctrl-C stops it all."""
    from grader.up import UpError, run

    try:
        code = run(port=port, host=host, instance=instance, broker=broker, concurrency=concurrency)
    except UpError as exc:
        fail(str(exc))
    sys.exit(code)
