"""The operators' endpoints: /healthz (public, ok or which dependency is down) and /metrics,
/metrics.json (a token or a site instructor; figures that match the rows, on SQLite and on
the machine's PostgreSQL), and the migration that supports them."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from grader.config import ConfigError, Settings
from grader.store import metrics, migrate
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.models import Assignment, Base, Submission, User
from grader.store.submissions import create_submission
from grader.web.ops import PROMETHEUS_TYPE, prometheus_text
from service_fixtures import REDIS_URL, Enqueued, login
from service_fixtures import test_settings as settings_for  # (not collected as a test)

TOKEN = "metrics-token-" + "t" * 32
CODE = b"def f(x):\n    return x\n"


def make_app(database_url: str, tmp_path: Path, **overrides: Any) -> Any:
    from grader.web import create_app

    overrides.setdefault("metrics_token", TOKEN)
    return create_app(settings_for(database_url, tmp_path, **overrides), enqueue=Enqueued())


@pytest.fixture
def ops_app(db_url: str, tmp_path: Path) -> Iterator[Any]:
    app = make_app(db_url, tmp_path)
    yield app
    app.extensions["grader.engine"].dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- /healthz -------------------------------------------------------------------------------


def test_healthz_ok_when_database_and_broker_answer(sqlite_url, tmp_path):
    app = make_app(sqlite_url, tmp_path)
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "down": []}
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_503_names_an_unreachable_broker(sqlite_url, tmp_path):
    app = make_app(sqlite_url, tmp_path, broker_url="redis://127.0.0.1:1/0")
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "down": ["broker"]}


def test_healthz_503_names_an_unreachable_database(tmp_path):
    app = make_app("postgresql://postgres@127.0.0.1:1/nothing", tmp_path)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body == {"status": "unavailable", "down": ["database"]}
    assert "127.0.0.1" not in response.get_data(as_text=True)  # no details for the public


def test_healthz_with_a_broker_that_is_not_redis(sqlite_url, tmp_path):
    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert make_app(sqlite_url, tmp_path, broker_url=broker).test_client().get("/healthz").status_code == 200
    unreachable = "sqla+postgresql://postgres@127.0.0.1:1/nothing"
    assert make_app(sqlite_url, tmp_path, broker_url=unreachable).test_client().get("/healthz").status_code == 503


# --- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/metrics.json"])
def test_metrics_are_not_public(app, path):
    anonymous = app.test_client()
    assert anonymous.get(path).status_code == 404
    for role in ("student", "ta"):  # course staff, but not site instructors
        client = app.test_client()
        login(client, role)
        assert client.get(path).status_code == 404, role


@pytest.mark.parametrize("path", ["/metrics", "/metrics.json"])
def test_metrics_token(sqlite_url, tmp_path, path):
    client = make_app(sqlite_url, tmp_path).test_client()
    assert client.get(path, headers=bearer(TOKEN)).status_code == 200
    for wrong in (TOKEN[:-1], TOKEN + "x", "", TOKEN.upper()):
        response = client.get(path, headers=bearer(wrong))
        assert response.status_code == 401, wrong
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


def test_without_a_configured_token_no_token_opens_the_metrics(sqlite_url, tmp_path):
    client = make_app(sqlite_url, tmp_path, metrics_token="").test_client()
    for token in ("", "anything", TOKEN):
        assert client.get("/metrics", headers=bearer(token)).status_code == 401


def test_a_wrong_token_is_not_rescued_by_an_instructors_session(app):
    client = app.test_client()
    login(client, "instructor")
    assert client.get("/metrics.json").status_code == 200
    assert client.get("/metrics.json", headers=bearer("guess")).status_code == 401


def test_metrics_token_must_be_long():
    with pytest.raises(ConfigError, match="GRADER_METRICS_TOKEN"):
        Settings.from_env(environ={"GRADER_METRICS_TOKEN": "short"}, env="testing", instance_path="/tmp/x")
    long = "y" * 40
    assert Settings.from_env(environ={"GRADER_METRICS_TOKEN": long}, env="testing", instance_path="/tmp/x").metrics_token == long


# --- the figures ----------------------------------------------------------------------------


def seed(session: Session, now: dt.datetime) -> dict[str, Any]:
    """Rows in every state the metrics count, with known times."""
    vjp = session.scalar(select(Assignment).where(Assignment.slug == "vjp"))
    gates = session.scalar(select(Assignment).where(Assignment.slug == "gates"))
    student = session.scalar(select(User).where(User.email == "student@example.com"))
    assert vjp is not None and gates is not None and student is not None

    def row(assignment: Assignment, submitted_ago: float, **values: Any) -> int:
        at = now - dt.timedelta(seconds=submitted_ago)
        sub = create_submission(session, assignment, student, CODE, "x.py", now=at, enforce=False)
        if values:
            session.execute(update(Submission).where(Submission.id == sub.id).values(**values))
        return sub.id

    def graded(assignment: Assignment, ago_min: float, took_s: float, **values: Any) -> int:
        at = now - dt.timedelta(minutes=ago_min)
        values.setdefault("grade_count", 1)
        return row(assignment, ago_min * 60 + took_s, status="graded", graded_at=at, started_at=at, score=1.0,
                   claimed_by="host-a:1", **values)

    row(vjp, 50)  # queued, 50 s
    row(vjp, 400)  # queued, the oldest first grading
    row(vjp, 9000, grade_count=1)  # a regrade queued: not the oldest *first* grading
    row(gates, 10)
    row(vjp, 30, status="running", started_at=now - dt.timedelta(seconds=20), claimed_by="host-b:7", attempts=2)
    # Graded in the last 5 minutes: latencies 10, 20, 30, 40 s.
    for i, took in enumerate((10, 20, 30, 40)):
        graded(vjp, 1 + i * 0.5, took)
    # Graded 5-60 minutes ago: latencies 100 and 200 s (one retried).
    graded(gates, 20, 100, attempts=2)
    graded(gates, 50, 200)
    graded(vjp, 90, 5)  # older than an hour: in no window
    graded(vjp, 2, 7777, grade_count=2)  # a regrade: not a submit-to-graded latency
    # Errors: one within the hour, one before it.
    row(vjp, 600, status="error", graded_at=now - dt.timedelta(minutes=10), attempts=3, started_at=now - dt.timedelta(minutes=10))
    row(vjp, 9000, status="error", graded_at=now - dt.timedelta(minutes=120), attempts=3)
    session.commit()
    return {"now": now}


def test_snapshot_matches_the_seeded_rows(db_url):
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            now = utcnow().replace(microsecond=0)
            seed(session, now)
            snap = metrics.snapshot(session, now=now)
    finally:
        engine.dispose()
    depth = {(q.course, q.assignment): (q.queued, q.running) for q in snap.queue}
    assert depth == {("demo", "vjp"): (3, 1), ("demo", "gates"): (1, 0)}
    assert (snap.queued_total, snap.running_total) == (4, 1)
    assert snap.oldest_queued_age_seconds == pytest.approx(400)
    five, sixty = snap.latency
    assert (five.window_minutes, five.count, sixty.window_minutes, sixty.count) == (5, 4, 60, 6)
    assert five.p50 == pytest.approx(25) and five.p99 == pytest.approx(39.7)
    assert sixty.p95 == pytest.approx(175) and not sixty.truncated
    assert five.graded_per_minute == pytest.approx(4 / 5) and sixty.graded_per_minute == pytest.approx(6 / 60)
    assert snap.errors_last_hour == 1
    assert snap.retried_last_hour == 3  # the running row, the retried grading, the error
    assert snap.workers_seen == ["host-a:1", "host-b:7"]


def test_latency_sample_is_bounded_and_says_so(sqlite_url):
    engine = make_engine(sqlite_url)
    try:
        with make_sessionmaker(engine)() as session:
            now = utcnow().replace(microsecond=0)
            seed(session, now)
            five, sixty = metrics.latency(session, now, sample=3)
    finally:
        engine.dispose()
    assert (five.count, five.truncated, sixty.count, sixty.truncated) == (3, True, 3, True)


def test_percentile():
    assert metrics.percentile([], 50) is None
    assert metrics.percentile([5.0], 99) == 5.0
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    with pytest.raises(ValueError):
        metrics.percentile([1.0], 101)


def test_empty_database_gives_zeros_and_nulls(sqlite_url, tmp_path):
    client = make_app(sqlite_url, tmp_path).test_client()
    body = client.get("/metrics.json", headers=bearer(TOKEN)).get_json()
    assert body["queue"]["queued"] == 0 and body["queue"]["oldest_queued_age_seconds"] is None
    assert body["latency_seconds"]["5m"] == {"count": 0, "p50": None, "p95": None, "p99": None, "truncated": False}
    families = parse_prometheus(client.get("/metrics", headers=bearer(TOKEN)).get_data(as_text=True))
    assert families["grader_queue_oldest_age_seconds"][()] == 0.0


# --- the formats ----------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_prometheus(body: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Each sample by family and label set; fails on any line that is not valid 0.0.4 text,
    on a sample whose family was not declared, and on a family declared twice."""
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    typed: set[str] = set()
    assert body.endswith("\n")
    for line in body.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter", "summary", "histogram", "untyped"), line
            assert name not in typed, f"{name} declared twice"
            typed.add(name)
            families[name] = {}
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        assert name in typed, f"{name} has no TYPE line before it"
        key = tuple(sorted(LABEL.findall(labels or "")))
        assert key not in families[name], f"{line!r} repeats a series"
        families[name][key] = float(value)
    return families


def test_prometheus_format(ops_app):
    with make_sessionmaker(ops_app.extensions["grader.engine"])() as session:
        now = utcnow()
        seed(session, now)
    response = ops_app.test_client().get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == PROMETHEUS_TYPE
    assert response.headers["Cache-Control"] == "private, no-store"
    families = parse_prometheus(response.get_data(as_text=True))
    assert families["grader_submissions_queued"][()] == 4
    assert families["grader_submissions_queued_by_assignment"][(("assignment", "vjp"), ("course", "demo"))] == 3
    assert families["grader_submissions_running_by_assignment"][(("assignment", "gates"), ("course", "demo"))] == 0
    assert families["grader_graded"][(("window", "60m"),)] == 6
    assert families["grader_grading_latency_seconds"][(("quantile", "0.5"), ("window", "5m"))] == pytest.approx(25, abs=1)
    assert families["grader_errors_last_hour"][()] == 1
    assert families["grader_workers_seen"][()] == 2
    assert families["grader_broker_queue_length"][()] == 0  # the test's own, empty queue


def test_label_values_are_escaped():
    now = utcnow()
    snap = metrics.Snapshot(
        at=now,
        queue=[metrics.QueueDepth('we"ird\\code\n', "vjp", 1, 2, 0)],
        queued_total=2,
        running_total=0,
        oldest_queued_age_seconds=None,
        latency=[metrics.Latency(5, 0, None, None, None, 0.0, False)],
        errors_last_hour=0,
        retried_last_hour=0,
    )
    families = parse_prometheus(prometheus_text(snap))
    assert families["grader_submissions_queued_by_assignment"] == {
        (("assignment", "vjp"), ("course", 'we\\"ird\\\\code\\n')): 2.0
    }
    assert "grader_broker_queue_length" not in families  # not Redis: left out, not zero


def test_metrics_json_keys_are_stable(ops_app):
    """Benchmarks read these keys (README, "Metrics"): a rename must fail here first."""
    client = ops_app.test_client()
    login(client, "instructor")
    body = client.get("/metrics.json").get_json()
    assert set(body) == {"at", "queue", "latency_seconds", "graded_per_minute", "last_hour", "workers"}
    assert set(body["queue"]) == {"queued", "running", "oldest_queued_age_seconds", "broker_length", "by_assignment"}
    assert set(body["latency_seconds"]) == set(body["graded_per_minute"]) == {"5m", "60m"}
    assert set(body["latency_seconds"]["5m"]) == {"count", "p50", "p95", "p99", "truncated"}
    assert set(body["last_hour"]) == {"errors", "retried"}
    assert set(body["workers"]) == {"window_minutes", "seen", "ids"}


def test_broker_queue_length_counts_the_configured_queue(sqlite_url, tmp_path):
    queue = f"grader-test-ops-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.rpush(queue, "a", "b")
        client.rpush(f"{queue}\x06\x163", "c")  # a priority-3 message, kept apart by kombu
        app = make_app(sqlite_url, tmp_path, queue=queue)
        body = app.test_client().get("/metrics.json", headers=bearer(TOKEN)).get_json()
        assert body["queue"]["broker_length"] == 3
    finally:
        client.delete(queue, f"{queue}\x06\x163")
        client.close()


# --- the schema -----------------------------------------------------------------------------


def test_models_match_the_migrations(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'schema.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def test_migration_0002_goes_down_and_up(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'schema.db'}"
    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), "0001")
    migrate.upgrade(url)
    assert migrate.is_current(url)


def test_a_database_host_that_never_answers_is_given_up_on(monkeypatch):
    # A host that accepts TCP but never speaks (or drops packets) must not hang /healthz,
    # a page or a worker's retry for the minutes TCP would wait.
    import socket
    import time

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from grader.store import db

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever answers
    monkeypatch.setattr(db, "PG_CONNECT_TIMEOUT", 2)
    engine = db.make_engine(f"postgresql://grader@127.0.0.1:{silent.getsockname()[1]}/grader")
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert time.monotonic() - started < 10
    finally:
        engine.dispose()
        silent.close()
