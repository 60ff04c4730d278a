"""The worker's delivery logic: leases, attempts, release, the sweeper, and the grading task's
outcomes, on SQLite and on the machine's PostgreSQL (the conditional UPDATEs must hold on
both). The task functions run here without Celery; tests/test_integration.py runs them in
real worker processes."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from celery import signals as celery_signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from grader.config import Settings
from grader.grade import GradingError, default_runner, grade_bytes
from grader.runner.session import SandboxFailure
from grader.sandbox import Probe, SandboxUnavailable
from grader.store import catalog
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.models import Assignment, Submission, User
from grader.store.submissions import (
    LEASE_SECONDS,
    MAX_ATTEMPTS,
    claim,
    create_submission,
    fail,
    finish,
    release,
    requeue_for_regrade,
    storable,
    storable_json,
    stuck,
)
from worker import tasks
from worker.app import make_celery, time_limits, visibility_timeout

SUBMISSIONS = Path(__file__).parent / "submissions"
CORRECT = (SUBMISSIONS / "vjp" / "correct_plain.py").read_bytes()
WRONG = (SUBMISSIONS / "vjp" / "wrong_transposed_dW.py").read_bytes()
LATER = dt.timedelta(seconds=LEASE_SECONDS + 1)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def submit(sessions: sessionmaker[Session], data: bytes = CORRECT, slug: str = "vjp") -> int:
    with sessions() as s:
        assignment = s.scalar(select(Assignment).where(Assignment.slug == slug))
        student = s.scalar(select(User).where(User.email == "student@example.com"))
        assert assignment is not None and student is not None
        sid = create_submission(s, assignment, student, data, "mine.py").id
        s.commit()
        return sid


def row(sessions: sessionmaker[Session], sid: int) -> Submission:
    with sessions() as s:
        found = s.get(Submission, sid)
        assert found is not None
        return found


def a_result(score: float = 8.0) -> dict[str, Any]:
    return {"score": score, "max_score": 8.0, "parts": [], "messages": [], "timing": {"total_ms": 1.0}}


class Runner:
    """A runner that must not be reached, or that raises what the test asks for."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.raises = raises
        self.runs = 0
        self.closed = 0

    def run(self, job: Any) -> Any:
        self.runs += 1
        if self.raises is not None:
            raise self.raises
        raise AssertionError("this runner must not be used")

    def close(self) -> None:
        self.closed += 1


# --- leases --------------------------------------------------------------------------------


def test_claim_twice_second_gets_nothing(sessions):
    sid = submit(sessions)
    with sessions() as s:
        first = claim(s, sid)
        second = claim(s, sid)
    assert first is not None and first.attempt == 1
    assert second is None
    got = row(sessions, sid)
    assert got.status == "running" and got.lease_token == first.token and got.attempts == 1


def test_finish_with_a_lost_lease_writes_nothing(sessions):
    sid = submit(sessions)
    now = utcnow()
    with sessions() as s:
        old = claim(s, sid, now=now)
        assert old is not None
        # The first worker went silent past its lease; another one takes the row over.
        new = claim(s, sid, now=now + LATER)
        assert new is not None and new.attempt == 2
        assert finish(s, old, a_result(1.0)) is False
        assert fail(s, old, "late news from a dead worker") is False
        assert release(s, old) is False
    got = row(sessions, sid)
    assert (got.status, got.score, got.result, got.error, got.grade_count) == ("running", None, None, None, 0)
    with sessions() as s:
        assert finish(s, new, a_result(8.0)) is True
    got = row(sessions, sid)
    assert (got.status, got.score, got.grade_count, got.lease_token) == ("graded", 8.0, 1, None)


def test_regrade_during_grading_discards_the_old_result(sessions):
    sid = submit(sessions)
    with sessions() as s:
        held = claim(s, sid)
        assert held is not None
        assert requeue_for_regrade(s, [sid]) == [sid]
        s.commit()
        assert finish(s, held, a_result(3.0)) is False  # graded against the old spec: dropped
    got = row(sessions, sid)
    assert (got.status, got.score, got.attempts, got.grade_count) == ("queued", None, 0, 0)
    with sessions() as s:
        again = claim(s, sid)
        assert again is not None and again.attempt == 1
        assert finish(s, again, a_result(8.0)) is True
    assert (row(sessions, sid).score, row(sessions, sid).grade_count) == (8.0, 1)


def test_an_expired_lease_can_be_claimed_again_a_live_one_cannot(sessions):
    sid = submit(sessions)
    now = utcnow()
    with sessions() as s:
        assert claim(s, sid, now=now) is not None
        assert claim(s, sid, now=now + dt.timedelta(seconds=LEASE_SECONDS - 1)) is None
        retaken = claim(s, sid, now=now + LATER)
    assert retaken is not None and retaken.attempt == 2


def test_the_lease_length_is_the_callers(sessions):
    sid = submit(sessions)
    now = utcnow()
    with sessions() as s:
        assert claim(s, sid, now=now, lease_seconds=5) is not None
        assert claim(s, sid, now=now + dt.timedelta(seconds=4)) is None
        assert claim(s, sid, now=now + dt.timedelta(seconds=6)) is not None


def test_a_graded_submission_is_never_claimed_again(sessions):
    sid = submit(sessions)
    with sessions() as s:
        held = claim(s, sid)
        assert held is not None and finish(s, held, a_result())
        assert claim(s, sid, now=utcnow() + LATER) is None


def test_release_gives_the_row_back_without_counting_the_attempt(sessions):
    sid = submit(sessions)
    with sessions() as s:
        held = claim(s, sid)
        assert held is not None
        assert release(s, held) is True
        assert release(s, held) is False  # the lease went with it
    got = row(sessions, sid)
    assert (got.status, got.attempts, got.lease_token, got.lease_expires_at) == ("queued", 0, None, None)


def test_release_can_count_the_attempt_and_keep_a_note(sessions):
    sid = submit(sessions)
    with sessions() as s:
        held = claim(s, sid)
        assert held is not None
        assert release(s, held, count_attempt=True, note="the sandbox failed: boom")
    got = row(sessions, sid)
    assert (got.status, got.attempts, got.error) == ("queued", 1, "the sandbox failed: boom")
    with sessions() as s:
        again = claim(s, sid)
        assert again is not None and again.attempt == 2
        assert finish(s, again, a_result())
    assert row(sessions, sid).error is None  # a result replaces the note


# --- the sweeper's selection ---------------------------------------------------------------


def test_stuck_selects_lost_rows_and_restamps_them(sessions):
    queued_long = submit(sessions)
    queued_now = submit(sessions)
    running_dead = submit(sessions)
    running_alive = submit(sessions)
    graded = submit(sessions)
    now = utcnow()
    long_ago = now - dt.timedelta(hours=1)
    with sessions() as s:
        s.execute(
            update(Submission)
            .where(Submission.id.in_([queued_long, running_dead, running_alive, graded]))
            .values(enqueued_at=long_ago)
        )
        s.commit()
        assert claim(s, running_dead, now=long_ago) is not None  # its worker died an hour ago
        assert claim(s, running_alive, now=now) is not None
        held = claim(s, graded, now=long_ago)
        assert held is not None and finish(s, held, a_result())
        found = stuck(s, 120, now=now)
        s.commit()
    assert found == [queued_long, running_dead]
    with sessions() as s:
        # Re-stamped: the next sweep leaves them alone until `stuck_seconds` pass again.
        assert stuck(s, 120, now=now + dt.timedelta(seconds=60)) == []
        assert stuck(s, 120, now=now + dt.timedelta(seconds=121)) == [queued_long, queued_now, running_dead]
    assert row(sessions, queued_now).status == "queued"


def test_sweep_commits_before_it_sends(sessions):
    sid = submit(sessions)
    with sessions() as s:
        s.execute(update(Submission).values(enqueued_at=utcnow() - dt.timedelta(hours=1)))
        s.commit()
    seen: list[tuple[int, Any]] = []

    def send(ids: Any) -> None:
        for i in ids:
            # Another connection sees the new stamp: the rows were committed first.
            seen.append((i, row(sessions, i).enqueued_at))

    assert tasks.sweep(sessions, 120, send) == [sid]
    assert len(seen) == 1 and seen[0][0] == sid
    assert seen[0][1] > utcnow() - dt.timedelta(minutes=1)
    assert tasks.sweep(sessions, 120, send) == []  # nothing stuck now


# --- the grading task ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> Any:
    return default_runner()


def test_the_task_grades_with_the_submissions_seed(sessions, runner):
    right, wrong = submit(sessions, CORRECT), submit(sessions, WRONG)
    assert tasks.grade_submission(sessions, right, runner) == tasks.GRADED
    assert tasks.grade_submission(sessions, wrong, runner) == tasks.GRADED
    got_right, got_wrong = row(sessions, right), row(sessions, wrong)
    assert (got_right.status, got_right.score, got_right.max_score, got_right.grade_count) == ("graded", 8.0, 8.0, 1)
    assert got_wrong.status == "graded" and got_wrong.score is not None and got_wrong.score < 8.0
    # The same result as `grader grade` with the recorded seed: the task adds nothing.
    with sessions() as s:
        spec = catalog.loaded_spec(s.get(Submission, wrong).version)  # type: ignore[union-attr]
    again = grade_bytes(spec, WRONG, seed=got_wrong.seed, runner=runner)
    assert again["score"] == got_wrong.score
    assert [p["status"] for p in again["parts"]] == [p["status"] for p in got_wrong.result["parts"]]  # type: ignore[index]
    assert got_wrong.result["seed"] == got_wrong.seed  # type: ignore[index]


def test_a_duplicate_delivery_is_skipped(sessions, runner):
    sid = submit(sessions)
    assert tasks.grade_submission(sessions, sid, runner) == tasks.GRADED
    assert tasks.grade_submission(sessions, sid, Runner()) == tasks.SKIPPED
    assert row(sessions, sid).grade_count == 1


def test_a_submission_that_broke_its_sandbox_is_graded_not_retried(sessions, runner):
    sid = submit(sessions, b"import os\nos._exit(3)\n")
    assert tasks.grade_submission(sessions, sid, runner) == tasks.GRADED
    got = row(sessions, sid)
    assert (got.status, got.score, got.attempts) == ("graded", 0.0, 1)
    assert "died" in got.result["messages"][0]  # type: ignore[index]


def test_after_max_attempts_the_submission_is_an_error_not_graded_again(sessions):
    sid = submit(sessions)
    start = utcnow() - dt.timedelta(hours=3)
    with sessions() as s:
        for n in range(MAX_ATTEMPTS):  # three workers took it and died
            assert claim(s, sid, now=start + n * dt.timedelta(hours=1)) is not None
    never = Runner()
    assert tasks.grade_submission(sessions, sid, never) == tasks.ERROR
    assert never.runs == 0
    got = row(sessions, sid)
    assert got.status == "error" and got.score is None and got.lease_token is None
    assert f"grading stopped after {MAX_ATTEMPTS} attempts" in (got.error or "")
    assert tasks.grade_submission(sessions, sid, never) == tasks.SKIPPED  # and it stays so


def test_a_spec_that_cannot_grade_is_an_error_for_staff(sessions, monkeypatch):
    sid = submit(sessions)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise GradingError("assignment vjp v1, seed 1: constraint cannot be met")

    monkeypatch.setattr(tasks, "grade_bytes", broken)
    assert tasks.grade_submission(sessions, sid, Runner()) == tasks.ERROR
    got = row(sessions, sid)
    assert got.status == "error" and "constraint cannot be met" in (got.error or "")


def test_a_sandbox_failure_releases_the_row_and_counts_the_attempt(sessions):
    sid = submit(sessions)
    broken = Runner(SandboxFailure("the sandbox zygote is gone"))
    assert tasks.grade_submission(sessions, sid, broken) == tasks.RELEASED
    got = row(sessions, sid)
    assert (got.status, got.attempts, got.score) == ("queued", 1, None)
    assert "zygote is gone" in (got.error or "")
    # A submission that breaks the sandbox every time ends as an error, not a loop.
    for _ in range(MAX_ATTEMPTS - 1):
        assert tasks.grade_submission(sessions, sid, broken) == tasks.RELEASED
    assert tasks.grade_submission(sessions, sid, broken) == tasks.ERROR
    got = row(sessions, sid)
    assert got.status == "error" and "zygote is gone" in (got.error or "")


def test_an_unavailable_sandbox_releases_without_blaming_the_submission(sessions):
    sid = submit(sessions)
    for _ in range(MAX_ATTEMPTS + 2):
        assert tasks.grade_submission(sessions, sid, Runner(SandboxUnavailable("no landlock"))) == tasks.RELEASED
    got = row(sessions, sid)
    assert (got.status, got.attempts) == ("queued", 0)


def test_a_soft_time_limit_releases_then_fails_on_the_last_attempt(sessions):
    sid = submit(sessions)
    slow = Runner(SoftTimeLimitExceeded())
    for n in range(1, MAX_ATTEMPTS):
        assert tasks.grade_submission(sessions, sid, slow) == tasks.RELEASED
        assert row(sessions, sid).attempts == n
    assert tasks.grade_submission(sessions, sid, slow) == tasks.ERROR
    assert slow.closed == MAX_ATTEMPTS  # each time the sandbox was replaced
    got = row(sessions, sid)
    assert got.status == "error" and "time limit" in (got.error or "")


def test_a_grader_crash_is_retried_a_bounded_number_of_times(sessions):
    sid = submit(sessions)
    buggy = Runner(ZeroDivisionError("oops"))
    outcomes = [tasks.grade_submission(sessions, sid, buggy) for _ in range(MAX_ATTEMPTS + 1)]
    assert outcomes == [tasks.RELEASED] * MAX_ATTEMPTS + [tasks.ERROR]
    assert "ZeroDivisionError: oops" in (row(sessions, sid).error or "")


def test_a_grading_is_two_statements_each_committing_alone(db_url, monkeypatch):
    # The claim returns what grading needs, a loaded spec is not read again, and the
    # worker's sessions autocommit: no read between the claim and the result, no
    # BEGIN/COMMIT around either (each was a round trip of its own).
    monkeypatch.setattr(tasks, "grade_bytes", lambda spec, source, seed, runner: a_result())
    sessions = tasks.sessions_for(db_url)
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((statement.split()[0], conn.get_execution_options().get("isolation_level")))

    try:
        first, second = submit(sessions), submit(sessions)
        assert tasks.grade_submission(sessions, first, Runner()) == tasks.GRADED  # loads the spec
        event.listen(Engine, "before_cursor_execute", record)
        try:
            assert tasks.grade_submission(sessions, second, Runner()) == tasks.GRADED
        finally:
            event.remove(Engine, "before_cursor_execute", record)
        assert seen == [("UPDATE", "AUTOCOMMIT"), ("UPDATE", "AUTOCOMMIT")]
        got = row(sessions, second)
        assert (got.status, got.score, got.grade_count, got.lease_token) == ("graded", 8.0, 1, None)
        assert got.result == a_result()
    finally:
        tasks.dispose_engines()


def test_a_claim_carries_the_work_but_never_shows_the_source(sessions):
    sid = submit(sessions)
    with sessions() as s:
        held = claim(s, sid)
        version = s.get(Submission, sid).version  # type: ignore[union-attr]
        assert held is not None
        assert (held.work.source, held.work.version_id, held.work.version_number, held.work.version_digest) == (
            CORRECT,
            version.id,
            version.number,
            version.digest,
        )
        assert held.work.seed == row(sessions, sid).seed
    assert "def " not in repr(held) and "def " not in repr(held.work)


@pytest.mark.parametrize(
    "result",
    [
        a_result(),
        {"score": 1.0, "t": ("a", 2), 3: "int key", "é≤→": "non-ascii", "emoji": "\U0001F600", "bs": "a\\ud800 \\u0000"},
        {"score": 0.0, "printed": "x\x00y", "keys": {"k\x00": ["\x00"]}},
        {"score": 0.0, "printed": "lone \udcff surrogate", "nested": [{"e": "\ud800"}]},
    ],
    ids=["plain", "no-replacement", "nul", "surrogate"],
)
def test_the_stored_json_is_that_of_the_storable_result(result):
    assert storable_json(result) == json.dumps(storable(result))


def test_engines_are_made_once_per_process_and_forgotten_after_fork(sqlite_url):
    first = tasks.sessions_for(sqlite_url)
    assert tasks.sessions_for(sqlite_url) is first
    tasks.dispose_engines(close=False)  # what worker_process_init does in a pool process
    assert tasks.sessions_for(sqlite_url) is not first
    tasks.dispose_engines()


# --- configuration and start-up ------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    base = {"database_url": "sqlite://", "broker_url": "redis://127.0.0.1:6379/0", "secret_key": "k" * 40}
    base.update(overrides)
    return Settings.from_env(environ={}, env="testing", instance_path=Path("/tmp"), **base)


def test_celery_is_configured_for_at_least_once_delivery():
    s = settings()
    app = tasks.register(make_celery(s))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result  # results live in the database
    assert conf.task_default_queue == s.queue
    soft, hard = time_limits(s)
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (soft, hard)
    assert soft < hard < s.lease_seconds < conf.broker_transport_options["visibility_timeout"]
    assert conf.beat_schedule["sweep-stuck-submissions"]["task"] == "grader.sweep"
    assert {"grader.grade_submission", "grader.sweep"} <= set(app.tasks)


@pytest.mark.parametrize("level,quiet", [(logging.INFO, True), (logging.WARNING, True), (logging.DEBUG, False)])
def test_celerys_own_line_per_task_is_left_out_unless_debugging(level, quiet, monkeypatch):
    loggers = [logging.getLogger(name) for name in ("celery.worker.strategy", "celery.app.trace")]
    for logger in loggers:
        monkeypatch.setattr(logger, "level", logging.NOTSET)
    celery_signals.setup_logging.send(sender=None, loglevel=level, logfile=None, format="", colorize=False)
    assert [logger.level for logger in loggers] == [logging.WARNING if quiet else logging.NOTSET] * 2


def test_time_limits_follow_the_lease():
    s = settings(lease_seconds=10.0)
    soft, hard = time_limits(s)
    assert soft < hard < 10.0
    assert visibility_timeout(s) >= 3600


def test_the_sqlite_broker_gets_no_redis_only_options():
    app = make_celery(settings(broker_url="sqla+sqlite:////tmp/broker.sqlite"))
    assert not app.conf.broker_transport_options  # kombu would pass them to create_engine


@pytest.mark.parametrize("name,value", [("GRADER_LEASE_SECONDS", "0"), ("GRADER_STUCK_SECONDS", "soon"), ("GRADER_SWEEP_SECONDS", "-1")])
def test_bad_timing_settings_are_refused(name, value):
    from grader.config import ConfigError

    with pytest.raises(ConfigError, match=name):
        Settings.from_env(environ={name: value}, env="testing", instance_path=Path("/tmp"))


def test_timing_settings_come_from_the_environment():
    s = Settings.from_env(
        environ={"GRADER_LEASE_SECONDS": "12", "GRADER_STUCK_SECONDS": "3", "GRADER_SWEEP_SECONDS": "1.5"},
        env="testing",
        instance_path=Path("/tmp"),
        secret_key="k" * 40,
    )
    assert (s.lease_seconds, s.stuck_seconds, s.sweep_seconds) == (12.0, 3.0, 1.5)


def test_the_worker_refuses_to_start_without_a_required_layer(monkeypatch):
    monkeypatch.delenv("GRADER_SANDBOX", raising=False)
    monkeypatch.setenv("GRADER_SANDBOX_REQUIRE", "bwrap,landlock")
    probe = Probe(layers={"bwrap": (True, "/usr/bin/bwrap"), "landlock": (False, "not available in this kernel")})
    monkeypatch.setattr(tasks, "probe_host", lambda: probe)
    with pytest.raises(SandboxUnavailable, match="refusing to start the worker: the sandbox needs landlock") as exc:
        tasks.sandbox_preflight()
    assert "Landlock enabled" in str(exc.value)  # and how to fix it


def test_the_worker_starts_when_the_sandbox_is_complete():
    assert "required and present" in tasks.sandbox_preflight()


def test_insecure_development_mode_is_allowed_but_loud(monkeypatch, caplog):
    monkeypatch.setenv("GRADER_SANDBOX", "insecure-subprocess")
    monkeypatch.setattr(tasks, "probe_host", lambda: pytest.fail("no probe in insecure mode"))
    assert "NO SANDBOX" in tasks.sandbox_preflight()
    assert "WITHOUT a sandbox" in caplog.text


def test_an_unknown_sandbox_mode_is_refused(monkeypatch):
    monkeypatch.setenv("GRADER_SANDBOX", "none")
    with pytest.raises(SandboxUnavailable, match="not a sandbox mode"):
        tasks.sandbox_preflight()
