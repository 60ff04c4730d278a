"""The Celery tasks: grade one submission, and sweep for submissions whose message was lost.

The task is a thin shell around the grading core. It claims the submission's row with a
lease (so a redelivered message never grades twice), runs `grade_bytes` in the sandbox,
and writes the result only while it still holds the lease. Everything that can go wrong
ends in one of four states, each logged as one structured line by grader.store.submissions
(`submission.graded`, `.error`, `.failed`/`.released`, `.skipped`; see the README):

- graded: the submission ran; whatever it did (crash, loop, garbage) is a graded outcome;
- error: grading cannot happen (a broken spec, or a submission that ended every one of
  MAX_ATTEMPTS attempts without a result): a reason for staff, no score for the student;
- queued again (released): this worker could not grade now (its sandbox failed, a time
  limit hit); the sweeper re-enqueues it after `stuck_seconds`;
- skipped: someone else holds it, or it is already graded (a duplicate message).

The grading functions take a sessionmaker and a runner, so the tests drive them without
Celery; `register(app)` wraps them as the Celery tasks the web app sends by name.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Iterable, Optional, TypeVar

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from grader.config import Settings
from grader.grade import GradingError, default_runner, grade_bytes
from grader.runner.base import Runner
from grader.runner.session import SandboxFailure
from grader.sandbox import FIXES, SandboxUnavailable, probe_host, required_layers
from grader.spec import Assignment as LoadedSpec
from grader.spec import SpecError
from grader.store import specs
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.models import AssignmentVersion
from grader.store import submissions as store
from grader.store.submissions import LEASE_SECONDS, MAX_ATTEMPTS, Work, log_event, stuck
from grader.web.queue import GRADE_TASK, SWEEP_TASK
from worker.app import SOFT_FRACTION, make_celery

log = logging.getLogger("grader.worker")

# Outcomes of one delivery (returned by grade_submission, for logs and tests).
GRADED, ERROR, RELEASED, SKIPPED, LEASE_LOST = "graded", "error", "released", "skipped", "lease-lost"


# --- per-process database state ----------------------------------------------------------
# One engine per worker process, made on first use. A pool process is forked from the
# worker's main process; a connection inherited across fork would be shared by two
# processes, so anything the parent opened is dropped (not closed: it is the parent's).
# Its sessions run in autocommit mode: every step below is one statement that commits on
# its own (the claim's UPDATE, the result's UPDATE; a read only to recognise a retried
# step), and autocommit sends that statement alone, where a transaction costs a BEGIN and a
# COMMIT round trip around it. The sweeper's read and re-stamp need no transaction either:
# the read takes no lock, and the re-stamp only moves `enqueued_at`.

_engine_lock = threading.Lock()
_engines: dict[str, tuple[Engine, sessionmaker[Session]]] = {}


def sessions_for(database_url: str) -> sessionmaker[Session]:
    with _engine_lock:
        made = _engines.get(database_url)
        if made is None:
            engine = make_engine(database_url)
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
            made = _engines[database_url] = (engine, make_sessionmaker(autocommit))
        return made[1]


def dispose_engines(close: bool = True) -> None:
    """Forget this process's engines; `close=False` after fork leaves the parent's
    connections alone instead of closing sockets the parent still uses."""
    with _engine_lock:
        for engine, _ in _engines.values():
            engine.dispose(close=close)
        _engines.clear()


# Celery's own INFO lines for every task ("Task ... received" in the main process, "Task
# ... succeeded in" in the pool process) say what `submission.claimed` and `.graded` say,
# and formatting them was a sixth of Celery's CPU per task (0.3 of 1.9 ms). They are
# kept for a worker started with --loglevel=DEBUG; a task's failure is logged at ERROR.
_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@signals.setup_logging.connect(weak=False)
def _keep_our_logging(loglevel: Optional[int] = None, **_kwargs: object) -> None:
    # `grader worker` has configured logging (grader.logs) before Celery starts; a receiver
    # here tells Celery to add no handlers of its own, so every line has one format.
    if loglevel is None or loglevel > logging.DEBUG:
        for name in _PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_process_init.connect(weak=False)
def _after_fork(**_kwargs: object) -> None:
    dispose_engines(close=False)


@signals.worker_process_shutdown.connect(weak=False)
def _on_exit(**_kwargs: object) -> None:
    dispose_engines()


# --- the row's state changes, through a database restart ---------------------------------
# A database restart or failover takes seconds. Without waiting for it, a claim that fails
# drops its message (the row waits for the sweeper, GRADER_STUCK_SECONDS), and a result that
# cannot be written leaves the row `running` until its lease ends (GRADER_LEASE_SECONDS),
# when it is graded again from scratch. Each step is one conditional UPDATE that commits, so
# trying it again is safe: a step that did commit before the connection broke matches
# nothing the second time, and is recognised as our own by its lease token (a claim) or by
# the timestamp every try shares (finish, fail, release), so it is neither repeated nor
# reported as a lost lease.

DATABASE_WAIT_SECONDS = 30.0
_DATABASE_DOWN = (OperationalError, InterfaceError)
_T = TypeVar("_T")


def _waits_for_the_database(step: Callable[..., _T]) -> Callable[..., _T]:
    takes_now = "now" in inspect.signature(step).parameters

    @functools.wraps(step)
    def retried(session: Session, *args: Any, **kwargs: Any) -> _T:
        if takes_now:
            # One moment for every try: a write that committed unheard is recognised by it.
            kwargs.setdefault("now", utcnow())
        deadline = time.monotonic() + DATABASE_WAIT_SECONDS
        pause = 0.25
        while True:
            try:
                return step(session, *args, **kwargs)
            except _DATABASE_DOWN as exc:
                try:
                    session.rollback()
                except _DATABASE_DOWN:
                    pass
                if time.monotonic() + pause > deadline:
                    raise
                # The class only: the driver's text quotes the SQL's parameters (results).
                log.warning("the database is unreachable (%s) in %s; trying again in %.2g s",
                            type(exc.orig or exc).__name__, step.__name__, pause)
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

    return retried


claim = _waits_for_the_database(store.claim)
finish = _waits_for_the_database(store.finish)
fail = _waits_for_the_database(store.fail)
release = _waits_for_the_database(store.release)


# --- grading ------------------------------------------------------------------------------


def grade_submission(
    sessions: sessionmaker[Session],
    submission_id: int,
    runner: Optional[Runner] = None,
    lease_seconds: float = LEASE_SECONDS,
) -> str:
    """Grade one submission if it is ours to grade; returns the outcome (GRADED, ...)."""
    with sessions() as session:
        # One token for every try of the claim, so a try that committed unheard is recognised.
        held = claim(session, submission_id, lease_seconds=lease_seconds, token=str(uuid.uuid4()))
        if held is None:
            log_event("skipped", submission_id, reason="already-graded-or-held")
            return SKIPPED
        work = held.work
        if held.attempt > MAX_ATTEMPTS:
            last = work.last_error
            fail(
                session,
                held,
                f"grading stopped after {MAX_ATTEMPTS} attempts: the worker died each time "
                f"(or timed out, or its sandbox failed) before it could write a result"
                + (f"; the last problem seen: {last}" if last else "")
                + ". Check the worker logs for this submission id, then regrade it.",
                kind="attempts-exhausted",
            )
            return ERROR
        try:
            spec = _spec(session, work)
        except SpecError as exc:
            fail(
                session, held, f"the assignment's spec (version {work.version_number}) does not load: {exc}", kind="spec-broken"
            )
            return ERROR
        if spec is None:  # the version was deleted (with its assignment) since the claim
            return SKIPPED

        active: Optional[Runner] = runner
        try:
            active = active or default_runner()  # one sandbox zygote per worker process
            result = grade_bytes(spec, work.source, seed=work.seed, runner=active)
        except GradingError as exc:
            # A spec whose trials cannot be generated: staff must fix the spec and regrade.
            fail(session, held, f"the assignment's spec cannot grade this submission: {exc}", kind="spec-cannot-grade")
            return ERROR
        except SandboxUnavailable as exc:
            # The host lost a sandbox layer: not the submission's fault, and not counted.
            # The reason names a missing host layer (never student text): the operator needs it.
            log.error("submission=%s the worker's sandbox is unavailable: %s", submission_id, exc)
            release(session, held, note=f"the worker's sandbox was unavailable: {exc}", kind="sandbox-unavailable")
            return RELEASED
        except SandboxFailure as exc:
            # The runner broke (it retries once on a fresh zygote before giving up). Counted,
            # so a submission that manages to break the sandbox every time cannot loop forever;
            # after MAX_ATTEMPTS it ends as an error for staff, never as a score for the student.
            release(session, held, count_attempt=True, note=f"the sandbox failed: {exc}", kind="sandbox-failure")
            return RELEASED
        except SoftTimeLimitExceeded:
            # Grading has its own budget (job_seconds); running into Celery's limit means the
            # grader itself is stuck. Start the next grading on a fresh sandbox.
            if active is not None:
                _close_quietly(active)
            if held.attempt >= MAX_ATTEMPTS:
                fail(
                    session,
                    held,
                    f"grading ran past the worker's time limit on all {MAX_ATTEMPTS} attempts "
                    f"({lease_seconds * SOFT_FRACTION:g} s each)",
                    kind="time-limit",
                )
                return ERROR
            release(session, held, count_attempt=True, note="grading ran past the worker's time limit", kind="time-limit")
            return RELEASED
        except Exception as exc:  # noqa: BLE001 - a grader bug must not lose the row
            # The exception's type and the grader's frames only: its text may quote the
            # submission or its output, which never reach the logs (staff read the note).
            log.error(
                "submission=%s internal grader error %s, at:\n%s",
                submission_id,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            release(
                session,
                held,
                count_attempt=True,
                note=f"internal grader error: {type(exc).__name__}: {exc}",
                kind=f"grader-crash:{type(exc).__name__}",
            )
            return RELEASED
        return GRADED if finish(session, held, result) else LEASE_LOST


@_waits_for_the_database
def _spec(session: Session, work: Work) -> Optional[LoadedSpec]:
    """The claimed row's spec; None when its version is gone. The version's files are read
    only the first time this process meets its digest, and that read's transaction ends
    here (nothing is held open in the database while grading). Waits out a database restart
    like the claim: otherwise the row would stay running, claimed, until its lease ends."""
    spec = specs.cached(work.version_digest)
    if spec is not None:
        return spec
    files = session.execute(select(AssignmentVersion.files).where(AssignmentVersion.id == work.version_id)).scalar()
    session.commit()
    return None if files is None else specs.load_files(files, known_digest=work.version_digest)


def _close_quietly(runner: Runner) -> None:
    try:
        runner.close()
    except Exception:  # noqa: BLE001
        log.exception("event=sandbox-close-failed")


# --- sweeping -----------------------------------------------------------------------------


def sweep(sessions: sessionmaker[Session], stuck_seconds: float, send: Callable[[Iterable[int]], None]) -> list[int]:
    """Re-enqueue submissions whose message may have been lost (queued too long, or running
    past their lease). The rows are re-stamped and committed before anything is sent."""
    with sessions() as session:
        ids = stuck(session, stuck_seconds)  # logs `submission.requeued` for each, with why
        session.commit()
    if ids:
        send(ids)
    return ids


# --- Celery wiring ------------------------------------------------------------------------


def register(app: Celery) -> Celery:
    """Register the tasks on an app made by worker.app.make_celery(settings)."""
    settings: Settings = app.conf.grader_settings

    def send(ids: Iterable[int]) -> None:
        for sid in ids:
            try:
                app.send_task(GRADE_TASK, args=[int(sid)], queue=settings.queue)
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log_event("enqueue_failed", int(sid), logging.ERROR, by="sweeper", error=type(exc).__name__)
            else:
                log_event("enqueued", int(sid), queue=settings.queue, by="sweeper")

    @app.task(name=GRADE_TASK, ignore_result=True)
    def grade_submission_task(submission_id: int) -> str:
        return grade_submission(sessions_for(settings.database_url), int(submission_id), lease_seconds=settings.lease_seconds)

    @app.task(name=SWEEP_TASK, ignore_result=True, acks_late=False)
    def sweep_task() -> int:
        return len(sweep(sessions_for(settings.database_url), settings.stuck_seconds, send))

    return app


def create_worker_app(settings: Optional[Settings] = None) -> Celery:
    """The worker's Celery app: make_celery(settings) with the tasks registered."""
    return register(make_celery(settings or Settings.from_env()))


# --- start-up -----------------------------------------------------------------------------


def sandbox_preflight() -> str:
    """Fail closed before the worker takes any message: SandboxUnavailable, saying which
    layer is missing and how to fix it, unless the insecure development mode is chosen
    (logged loudly). Returns a one-line description for the start-up log."""
    mode = os.environ.get("GRADER_SANDBOX", "bwrap")
    if mode == "insecure-subprocess":
        log.warning(
            "GRADER_SANDBOX=insecure-subprocess: this worker runs student code WITHOUT a sandbox. "
            "Development only; never use it with real submissions."
        )
        return "NO SANDBOX (GRADER_SANDBOX=insecure-subprocess, development only)"
    if mode != "bwrap":
        raise SandboxUnavailable(f"GRADER_SANDBOX={mode!r} is not a sandbox mode (use 'bwrap' or 'insecure-subprocess')")
    required = required_layers()
    probe = probe_host()
    missing = probe.missing(required)
    if missing:
        fixes = "\n".join(f"  - {layer}: {FIXES[layer]}" for layer in missing)
        raise SandboxUnavailable(
            f"refusing to start the worker: the sandbox needs {', '.join(missing)}, which this host lacks.\n"
            f"{probe.describe()}\nTo fix:\n{fixes}"
        )
    extra = [layer for layer, (ok, _) in probe.layers.items() if ok and layer not in required]
    return f"sandbox: {', '.join(required)} required and present" + (f" (also: {', '.join(extra)})" if extra else "")
