"""The worker's database steps when the connection breaks at the worst moment: after the
server committed but before the worker heard so (the acknowledgement is lost), and between
the claim and the grading. On SQLite and on the machine's PostgreSQL. Each case must end
with the row graded exactly once, promptly, never left `running` until its lease expires,
and logged as what happened (not as a lost lease)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from grader.store import specs
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.models import Assignment, User
from grader.store.submissions import create_submission, requeue_for_regrade
from worker import tasks

from test_worker import CORRECT, a_result, row


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.time, "sleep", lambda _s: None)


@pytest.fixture(autouse=True)
def _no_sandbox(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    graded: list[int] = []

    def grade_bytes(spec: Any, source: bytes, seed: int, runner: Any) -> dict[str, Any]:
        graded.append(seed)
        return a_result()

    monkeypatch.setattr(tasks, "grade_bytes", grade_bytes)
    monkeypatch.setattr(tasks, "default_runner", lambda: object())
    return graded


def submit(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        assignment = s.scalar(select(Assignment).where(Assignment.slug == "vjp"))
        student = s.scalar(select(User).where(User.email == "student@example.com"))
        assert assignment is not None and student is not None
        sid = create_submission(s, assignment, student, CORRECT, "mine.py").id
        s.commit()
        return sid


def dropped() -> OperationalError:
    return OperationalError("COMMIT", None, Exception("server closed the connection unexpectedly"))


def breaking(
    sessions: sessionmaker[Session], after_commit_of: str = "", before: str = ""
) -> Callable[[], Session]:
    """Sessions whose connection breaks once: right after the server commits a transaction
    whose last statement contains `after_commit_of` (the worker never hears the COMMIT
    succeed), or instead of the first statement that contains `before` (the database went
    away after the claim)."""
    armed = {"commit": bool(after_commit_of), "before": bool(before)}

    def make() -> Session:
        session = sessions()
        real_execute, real_commit = session.execute, session.commit
        last = {"sql": ""}

        def execute(statement: Any, *args: Any, **kwargs: Any) -> Any:
            last["sql"] = str(statement)
            if armed["before"] and before in last["sql"]:
                armed["before"] = False
                raise dropped()
            return real_execute(statement, *args, **kwargs)

        def commit() -> None:
            real_commit()
            if armed["commit"] and after_commit_of in last["sql"]:
                armed["commit"] = False
                raise dropped()

        session.execute = execute  # type: ignore[method-assign]
        session.commit = commit  # type: ignore[method-assign]
        return session

    return make


def test_a_claim_whose_commit_was_not_acknowledged_is_still_graded_now(sessions, _no_sandbox):
    sid = submit(sessions)
    outcome = tasks.grade_submission(breaking(sessions, after_commit_of="lease_token="), sid)
    got = row(sessions, sid)
    # Before: the retried claim found the row running (under the token its first try wrote)
    # and skipped it; the row stayed running until the lease ended, an attempt spent.
    assert outcome == tasks.GRADED, (outcome, got.status)
    assert (got.status, got.grade_count, got.attempts, got.lease_token) == ("graded", 1, 1, None)
    assert len(_no_sandbox) == 1


def test_a_retried_claim_does_not_take_a_row_another_worker_holds(sessions):
    sid = submit(sessions)
    with sessions() as s:
        theirs = tasks.claim(s, sid)
        assert theirs is not None
    with sessions() as s:
        assert tasks.claim(s, sid) is None
        assert tasks.claim(s, sid, token=str(uuid.uuid4())) is None
    got = row(sessions, sid)
    assert (got.status, got.lease_token, got.attempts) == ("running", theirs.token, 1)


def test_a_result_whose_commit_was_not_acknowledged_is_graded_once(sessions, _no_sandbox, caplog):
    sid = submit(sessions)
    with caplog.at_level(logging.INFO, logger="grader.submissions"):
        outcome = tasks.grade_submission(breaking(sessions, after_commit_of="grade_count="), sid)
    got = row(sessions, sid)
    # The retry matches nothing (the row is no longer running under this lease): no second
    # write, no fail or release that would send it round again.
    assert (got.status, got.grade_count, got.attempts, got.lease_token, got.score) == ("graded", 1, 1, None, 8.0)
    assert len(_no_sandbox) == 1
    # Before: the worker's own result, written once, was reported as a lost lease (a warning)
    # and the `submission.graded` line, with its timings, never appeared.
    events = [getattr(r, "event", None) for r in caplog.records]
    assert outcome == tasks.GRADED, (outcome, events)
    assert events.count("submission.graded") == 1 and "submission.lease_lost" not in events, events


def test_a_result_is_not_taken_for_ours_when_someone_else_graded_the_row(sessions):
    sid = submit(sessions)
    with sessions() as s:
        stale = tasks.claim(s, sid)
        assert stale is not None
        requeue_for_regrade(s, [sid])
        s.commit()
        fresh = tasks.claim(s, sid)
        assert fresh is not None
        when = utcnow()
        assert tasks.finish(s, fresh, a_result(6.0), now=when)
        assert not tasks.finish(s, stale, a_result(8.0), now=when + dt.timedelta(microseconds=1))
    got = row(sessions, sid)
    assert (got.status, got.grade_count, got.score) == ("graded", 1, 6.0)


def test_a_database_restart_between_the_claim_and_grading_is_waited_out(sessions, _no_sandbox, monkeypatch, caplog):
    sid = submit(sessions)
    # A worker that has not loaded this spec yet reads its files after the claim.
    monkeypatch.setattr(specs, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="grader.worker"):
        outcome = tasks.grade_submission(breaking(sessions, before="assignment_versions.files"), sid)
    assert "the database is unreachable (Exception) in _spec" in caplog.text
    got = row(sessions, sid)
    # Before: OperationalError escaped the task and the row stayed running, claimed, until
    # its lease ended (300 s by default).
    assert outcome == tasks.GRADED, (outcome, got.status)
    assert (got.status, got.grade_count, got.attempts) == ("graded", 1, 1)


def test_a_duplicate_message_for_a_running_row_is_a_cheap_skip(sessions, _no_sandbox):
    sid = submit(sessions)
    with sessions() as s:
        held = tasks.claim(s, sid)
        assert held is not None
    assert tasks.grade_submission(sessions, sid) == tasks.SKIPPED
    got = row(sessions, sid)
    assert (got.status, got.lease_token, got.attempts) == ("running", held.token, 1)
    assert _no_sandbox == []


@pytest.mark.parametrize(
    "step, marker, event, status",
    [
        (lambda s, held: tasks.release(s, held, note="n", kind="sandbox-unavailable"), "enqueued_at=", "submission.released", "queued"),
        (lambda s, held: tasks.fail(s, held, "broken", kind="spec-broken"), "error=", "submission.error", "error"),
    ],
    ids=["release", "fail"],
)
def test_a_state_change_whose_commit_was_not_acknowledged_is_reported_as_done(sessions, caplog, step, marker, event, status):
    sid = submit(sessions)
    with breaking(sessions, after_commit_of=marker)() as s:
        held = tasks.claim(s, sid)
        assert held is not None
        with caplog.at_level(logging.INFO, logger="grader.submissions"):
            done = step(s, held)
    got = row(sessions, sid)
    events = [getattr(r, "event", None) for r in caplog.records]
    assert (got.status, got.lease_token, got.attempts) == (status, None, 0 if status == "queued" else 1)
    # Before: the retry matched nothing and the change was logged as a lost lease.
    assert done and events.count(event) == 1 and "submission.lease_lost" not in events, events
