"""The operators' log lines: one per submission state change, JSON in production and
key=value text in development, with ids and timings and never a submission's text."""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from grader import logs
from grader.config import ConfigError, Settings
from grader.grade import default_runner
from grader.runner.session import SandboxFailure
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.models import Assignment, User
from grader.store.submissions import LEASE_SECONDS, create_submission, requeue_for_regrade, stuck
from grader.web.queue import CeleryEnqueuer
from service_fixtures import REDIS_URL
from service_fixtures import test_settings as settings_for  # (not collected as a test)
from worker import tasks

SUBMISSIONS = Path(__file__).parent / "submissions"
MARK = "LOGMARK" + uuid.uuid4().hex[:10]
# A correct submission that carries a marker in its source and prints another when run.
SOURCE = (
    (SUBMISSIONS / "vjp" / "correct_plain.py").read_text()
    + f"\n# secret-ish comment {MARK}-source\nprint('{MARK}-output')\n"
).encode()
PASSWORD = "student-pass-1"


class Lines:
    """The log lines written while a test runs, in one format, on the root logger."""

    def __init__(self, log_format: str) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(logs.formatter_for(log_format))

    def text(self) -> str:
        return self.buffer.getvalue()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def events(self, submission_id: int) -> list[dict[str, Any]]:
        return [line for line in self.json() if line.get("submission_id") == submission_id]


@pytest.fixture
def lines() -> Iterator[Lines]:
    got = Lines("json")
    root, grader_log = logging.getLogger(), logging.getLogger("grader")
    saved = grader_log.level
    grader_log.setLevel(logging.DEBUG)
    root.addHandler(got.handler)
    yield got
    root.removeHandler(got.handler)
    grader_log.setLevel(saved)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def runner() -> Any:
    made = default_runner()
    yield made
    made.close()


def submit(sessions: sessionmaker[Session], data: bytes = SOURCE) -> tuple[int, int, int, int]:
    with sessions() as s:
        assignment = s.scalar(select(Assignment).where(Assignment.slug == "vjp"))
        student = s.scalar(select(User).where(User.email == "student@example.com"))
        assert assignment is not None and student is not None
        sid = create_submission(s, assignment, student, data, "mine.py").id
        s.commit()
        return sid, student.id, assignment.id, assignment.course_id


def assert_no_student_text(text: str) -> None:
    assert MARK not in text, "a submission's source or output reached the logs"
    assert "def vjp" not in text and "import numpy" not in text
    assert PASSWORD not in text


def test_a_grading_logs_each_state_change_with_ids_and_timings(sessions, runner, lines):
    sid, user_id, assignment_id, course_id = submit(sessions)
    assert tasks.grade_submission(sessions, sid, runner) == tasks.GRADED
    assert tasks.grade_submission(sessions, sid, runner) == tasks.SKIPPED  # a duplicate delivery

    events = lines.events(sid)
    assert [e["event"] for e in events] == ["submission.created", "submission.claimed", "submission.graded", "submission.skipped"]
    created, claimed, graded, skipped = events
    assert (created["user_id"], created["assignment_id"], created["course_id"]) == (user_id, assignment_id, course_id)
    assert created["size"] == len(SOURCE) and created["via"] == "web"
    assert claimed["attempt"] == 1 and claimed["worker"] == logs.process_id()
    assert claimed["wait_ms"] >= 0
    assert graded["score"] == graded["max_score"] > 0
    for key in ("reference_ms", "run_ms", "compare_ms", "grading_ms", "total_ms"):
        assert isinstance(graded[key], (int, float)) and graded[key] >= 0, key
    assert graded["total_ms"] >= graded["grading_ms"] * 0.5
    assert skipped["reason"] == "already-graded-or-held"
    for line in events:
        assert set(line) >= {"ts", "level", "event", "submission_id", "instance", "pid", "logger"}
        assert line["ts"].endswith("Z")
    assert_no_student_text(lines.text())


def test_failures_log_a_reason_class_never_the_text(sessions, lines):
    class Broken:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def run(self, job: Any) -> Any:
            raise self.exc

        def close(self) -> None:
            pass

    sid, *_ = submit(sessions)
    assert tasks.grade_submission(sessions, sid, Broken(SandboxFailure(f"child said {MARK}"))) == tasks.RELEASED
    assert tasks.grade_submission(sessions, sid, Broken(ValueError(f"bad value {MARK}"))) == tasks.RELEASED
    assert tasks.grade_submission(sessions, sid, Broken(ValueError(f"again {MARK}"))) == tasks.RELEASED
    assert tasks.grade_submission(sessions, sid, Broken(ValueError("never run"))) == tasks.ERROR

    events = [(e["event"], e.get("reason"), e.get("attempt")) for e in lines.events(sid) if e["event"] != "submission.claimed"]
    assert events == [
        ("submission.created", None, None),
        ("submission.failed", "sandbox-failure", 1),
        ("submission.failed", "grader-crash:ValueError", 2),
        ("submission.failed", "grader-crash:ValueError", 3),
        ("submission.error", "attempts-exhausted", 4),
    ]
    assert [e["level"] for e in lines.events(sid) if e["event"] == "submission.failed"] == ["warning"] * 3
    assert_no_student_text(lines.text())
    with sessions() as s:  # staff still get the whole story on the row
        from grader.store.models import Submission

        row = s.get(Submission, sid)
        assert row is not None and MARK in (row.error or "")


def test_regrade_requeue_and_enqueue_are_logged(sessions, lines, tmp_path):
    sid, *_ = submit(sessions)
    with sessions() as s:
        assert requeue_for_regrade(s, [sid], by=42) == [sid]
        s.commit()
    with sessions() as s:
        later = utcnow().replace(year=utcnow().year + 1)
        assert stuck(s, 60, now=later) == [sid]
        s.commit()
    queue = f"grader-test-log-{uuid.uuid4().hex[:8]}"
    settings = settings_for("sqlite://", tmp_path, queue=queue)
    try:
        CeleryEnqueuer(settings)([sid])
    finally:
        redis.Redis.from_url(REDIS_URL).delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    events = {e["event"]: e for e in lines.events(sid)}
    assert events["submission.regrade"]["by_user_id"] == 42
    assert events["submission.requeued"]["why"] == "queued-too-long" and events["submission.requeued"]["by"] == "sweeper"
    assert events["submission.enqueued"]["queue"] == queue


def test_lease_expired_requeue_says_why(sessions, lines):
    from grader.store.submissions import claim

    sid, *_ = submit(sessions)
    with sessions() as s:
        assert claim(s, sid) is not None
        later = utcnow().replace(year=utcnow().year + 1)
        assert LEASE_SECONDS < 3600
        assert stuck(s, 60, now=later, by="startup") == [sid]
        s.commit()
    requeued = [e for e in lines.events(sid) if e["event"] == "submission.requeued"]
    assert [(e["why"], e["by"]) for e in requeued] == [("lease-expired", "startup")]


# --- formats and configuration -------------------------------------------------------------


def record(**fields: Any) -> logging.LogRecord:
    rec = logging.LogRecord("grader.submissions", logging.INFO, __file__, 1, "m %s", ("x",), None)
    rec.event = "submission.claimed"  # type: ignore[attr-defined]
    rec.fields = fields  # type: ignore[attr-defined]
    return rec


def test_text_format_is_key_value():
    line = logs.TextFormatter().format(record(submission_id=7, attempt=1, worker="h:1", why="two words"))
    assert line.split(" ", 2)[1:] == ["INFO", 'submission.claimed submission_id=7 attempt=1 worker=h:1 why="two words"']
    plain = logging.LogRecord("grader.web", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    assert logs.TextFormatter().format(plain).endswith("WARNING grader.web: hello there")


def test_json_format_of_an_ordinary_record():
    plain = logging.LogRecord("celery", logging.ERROR, __file__, 1, "broker %s", ("down",), None)
    line = json.loads(logs.JsonFormatter().format(plain))
    assert (line["event"], line["message"], line["level"], line["logger"]) == ("log", "broker down", "error", "celery")


def test_log_format_comes_from_the_environment(tmp_path):
    def fmt(environ: dict[str, str], env: str) -> str:
        base = {"SECRET_KEY": "k" * 40, "DATABASE_URL": "sqlite://", "REDIS_URL": "redis://x"}
        return Settings.from_env(environ={**base, **environ}, env=env, instance_path=tmp_path).log_format

    assert fmt({}, "production") == "json"
    assert fmt({}, "development") == "text"
    assert fmt({"GRADER_LOG_FORMAT": "text"}, "production") == "text"
    assert fmt({"GRADER_LOG_FORMAT": "JSON"}, "development") == "json"
    with pytest.raises(ConfigError, match="GRADER_LOG_FORMAT"):
        fmt({"GRADER_LOG_FORMAT": "xml"}, "production")


def test_configure_twice_writes_each_line_once():
    from grader.service_cli import log_setup

    root = logging.getLogger()
    before = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        log_setup("text", "web")
        logs.configure("text", "worker", stream=stream)
        logs.configure("text", "worker", stream=stream)
        logging.getLogger("grader.test").info("once")
        assert stream.getvalue().count("once") == 1
        assert logs.instance().startswith("worker@")
    finally:
        for handler in list(root.handlers):
            if handler not in before[0]:
                root.removeHandler(handler)
        root.setLevel(before[1])
