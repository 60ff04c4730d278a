"""Fault injection with real processes (tests/chaos.py): worker processes SIGKILLed at
random during a burst, the broker restarted empty, the database server crashed and
restarted, and all three in one run. Each run has a private PostgreSQL cluster and
redis-server (the machine's own servers are never touched), submits through the real web
API, and must end with every accepted submission graded exactly once: 0 lost, 0
double-scored, no misgraded file, every fault landing while there was still work.
`./dev bench-faults` runs the same scenarios at larger sizes and prints the timings."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from grader.up import free_port
from service_fixtures import login
from service_fixtures import test_settings as settings_for  # (not collected as a test)

SUBMISSIONS = Path(__file__).parent / "submissions"

# kombu's SQLAlchemy transport is not used here, but the worker app imports it lazily.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


# --- the web app while the database is down -----------------------------------------------


@pytest.fixture
def down_app(sqlite_url, tmp_path, enqueued):
    """The web app with a database that does not answer (nothing listens on its port), and
    a bearer token made while it did (on the SQLite copy the app would have used)."""
    from grader.store import accounts
    from grader.store.db import make_engine, make_sessionmaker
    from grader.store.models import User
    from grader.web import create_app

    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as s:
        student = s.scalar(select(User).where(User.email == "student@example.com"))
        token = accounts.create_token(s, student, "t")  # type: ignore[arg-type]
        s.commit()
    engine.dispose()
    app = create_app(settings_for(f"postgresql://postgres@127.0.0.1:{free_port()}/gone", tmp_path), enqueue=enqueued)
    yield app, token
    app.extensions["grader.engine"].dispose()


def test_a_submission_while_the_database_is_down_gets_a_clear_503(down_app, enqueued, caplog):
    app, token = down_app
    client = app.test_client()
    response = client.post(
        "/api/v1/submissions",
        headers={"Authorization": f"Bearer {token}"},
        data={"assignment": "vjp", "file": (io.BytesIO(b"def f():\n    pass\n"), "mine.py")},
    )
    assert response.status_code == 503, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["error"] == "Service Unavailable"
    assert "not completed" in body["detail"] and "try again" in body["detail"].lower()
    assert response.headers["Retry-After"].isdigit()
    assert enqueued.ids == []
    # One line for the operator, naming the failure without the SQL (whose parameters
    # could hold a student's file).
    lines = [r.getMessage() for r in caplog.records if "database" in r.getMessage()]
    assert lines and all("INSERT" not in line and "SELECT" not in line for line in lines), lines


def test_a_page_while_the_database_is_down_is_a_503_page_not_a_traceback(down_app, client):
    app, _ = down_app
    login(client, "student")  # on the working app with the same secret key
    browser = app.test_client()
    browser.set_cookie("session", client.get_cookie("session").value)  # the user loader runs first
    response = browser.get("/")
    page = response.get_data(as_text=True)
    assert response.status_code == 503, page[:500]
    assert "Traceback" not in page and "OperationalError" not in page
    assert "database is not reachable" in page


# --- processes starting at the same moment ------------------------------------------------


# Each process waits for the start file, then reads its settings: they all reach the
# missing key within a millisecond or so of each other.
_READ_KEY = """
import os, sys, time
from grader.config import Settings
go, give_up = sys.argv[1], time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > give_up:  # the test died before starting the race
        sys.exit(3)
    time.sleep(0.0005)
print(Settings.from_env(environ={}, env="testing", instance_path=sys.argv[2]).secret_key)
"""


def test_processes_starting_at_once_share_one_instance_secret(tmp_path):
    """Two workers started together (a supervisor bringing a stack up) both make the
    instance's secret key if it is missing: neither may fail, and both must use the same.
    Fresh interpreters, not fork: forking pytest (which holds threads and locks) can hang."""
    import subprocess
    import sys

    for round_ in range(3):
        instance = tmp_path / f"instance{round_}"
        go = tmp_path / f"go{round_}"
        procs = [
            subprocess.Popen([sys.executable, "-c", _READ_KEY, str(go), str(instance)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(8)
        ]
        try:
            time.sleep(1.0)  # let them all import and start polling
            go.touch()
            outputs = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
        keys = [out.strip() for out, _ in outputs]
        assert len(set(keys)) == 1 and len(keys[0]) > 32, keys


# --- the worker while the database restarts -----------------------------------------------


@pytest.fixture(scope="module")
def private_pg():
    """A private PostgreSQL cluster, migrated and seeded, that these tests crash at will."""
    from grader.store import migrate
    from grader.store.db import make_engine, make_sessionmaker
    from grader.store.demo import seed_demo
    from pg_private import PrivatePostgres, PrivatePostgresUnavailable, pg_bin_dir

    try:
        pg_bin_dir()
    except PrivatePostgresUnavailable as exc:
        pytest.skip(f"no private PostgreSQL cluster on this machine: {exc}")
    pg = PrivatePostgres.create()  # the binaries are here: any failure from now on is one
    try:
        pg.start()
        pg.create_database()
        migrate.upgrade(pg.url)
        engine = make_engine(pg.url)
        sessions = make_sessionmaker(engine)
        with sessions() as s:
            seed_demo(s)
            s.commit()
        yield pg, sessions
        engine.dispose()
    finally:
        pg.destroy()


def _store(sessions, data: bytes, slug: str = "gates") -> int:
    from grader.store.models import Assignment, User
    from grader.store.submissions import create_submission

    with sessions() as s:
        assignment = s.scalar(select(Assignment).where(Assignment.slug == slug))
        student = s.scalar(select(User).where(User.email == "student@example.com"))
        sid = create_submission(s, assignment, student, data, f"{slug}.py").id
        s.commit()
    return sid


def _restart_later(pg, seconds: float):
    import threading

    thread = threading.Timer(seconds, pg.start)
    thread.start()
    return thread


class CrashingRunner:
    """Grades for real, then crashes the database just before the worker writes the
    result, and starts it again `outage` seconds later."""

    def __init__(self, pg, outage: float) -> None:
        from grader.grade import default_runner

        self.pg, self.outage, self.inner = pg, outage, default_runner()
        self.restart = None

    def run(self, job):
        report = self.inner.run(job)
        self.pg.crash()
        self.restart = _restart_later(self.pg, self.outage)
        return report

    def close(self) -> None:
        self.inner.close()


GATES_RIGHT = (SUBMISSIONS / "gates" / "correct_plain.py").read_bytes()


def _graded_once(sessions, sid: int) -> None:
    from grader.store.models import Submission

    with sessions() as s:
        row = s.get(Submission, sid)
        assert (row.status, row.grade_count, row.lease_token, row.attempts) == ("graded", 1, None, 1), (row.status, row.error)
        assert row.score == row.max_score


@pytest.mark.slow
def test_a_worker_waits_out_a_database_restart_before_it_claims(private_pg):
    from grader.grade import default_runner
    from worker.tasks import GRADED, grade_submission

    pg, sessions = private_pg
    sid = _store(sessions, GATES_RIGHT)
    runner = default_runner()
    try:
        pg.crash()
        restart = _restart_later(pg, 2.0)
        # Before: the claim raised OperationalError; Celery dropped the message and the row
        # waited for the sweeper (GRADER_STUCK_SECONDS, two minutes by default).
        assert grade_submission(sessions, sid, runner=runner, lease_seconds=20) == GRADED
    finally:
        runner.close()
        restart.join()
    _graded_once(sessions, sid)


@pytest.mark.slow
def test_a_result_finished_during_a_database_restart_is_written_once(private_pg):
    from worker.tasks import GRADED, grade_submission

    pg, sessions = private_pg
    sid = _store(sessions, GATES_RIGHT)
    runner = CrashingRunner(pg, outage=2.0)
    try:
        # Before: writing the result raised; the row stayed `running` until its lease ran
        # out (five minutes by default) and was then graded again from scratch.
        assert grade_submission(sessions, sid, runner=runner, lease_seconds=20) == GRADED
    finally:
        runner.close()
        if runner.restart is not None:
            runner.restart.join()
    _graded_once(sessions, sid)


# --- bursts under faults, with real processes ---------------------------------------------


def _check(outcome) -> None:
    """What must hold after any run: every accepted submission graded exactly once, with
    the right marks, and every planned fault injected while there was still work."""
    assert not outcome.problems(), outcome.problems()
    assert outcome.submissions > 0
    assert outcome.faults_during_work == len(outcome.faults), [(f.kind, f.what) for f in outcome.faults]


def _survived(outcome) -> None:
    """No worker exited by itself: each one rode out the fault (killed ones were restarted)."""
    assert not outcome.exited, outcome.exited


@pytest.mark.slow
def test_workers_killed_at_random_during_a_burst_lose_nothing_and_grade_nothing_twice(tmp_path):
    import chaos

    outcome = chaos.run(["kill"], submissions=60, kills=4, seed=7, root=tmp_path)
    _check(outcome)
    _survived(outcome)
    assert [f.kind for f in outcome.faults] == ["kill"] * 4
    assert all(f.what for f in outcome.faults)
    # Some kills cut a grading off; those rows were graded again, once (attempts > 1).
    assert outcome.interrupted >= 1


@pytest.mark.slow
def test_a_redis_restart_during_a_burst_loses_nothing(tmp_path):
    import chaos

    outcome = chaos.run(["redis"], submissions=40, root=tmp_path)
    _check(outcome)
    _survived(outcome)
    # The broker came back empty: what it held was re-sent by the sweeper, once each.
    assert "requeued" in "".join(outcome.logs.values()) or "re-enqueued" in "".join(outcome.logs.values())


@pytest.mark.slow
def test_a_postgres_crash_during_a_burst_loses_nothing_and_the_web_answers_503(tmp_path):
    import chaos

    outcome = chaos.run(["postgres"], submissions=40, root=tmp_path)
    _check(outcome)
    # Submissions sent while the database was down were refused with a 503 (and sent again
    # by the client), never accepted and then lost; the workers waited for the database.
    assert outcome.refused > 0
    _survived(outcome)


@pytest.mark.slow
def test_kills_a_redis_restart_and_a_postgres_crash_in_one_burst(tmp_path):
    import chaos

    outcome = chaos.run(chaos.KINDS, submissions=60, kills=4, seed=11, root=tmp_path)
    _check(outcome)
    assert sorted({f.kind for f in outcome.faults}) == ["kill", "postgres", "redis"]
    # A worker restarted after a kill while the database is down refuses to start, saying
    # why; its supervisor starts it again (docker-compose: restart: unless-stopped).
    assert all("cannot use the database" in line for line in outcome.exited), outcome.exited
