"""The service end to end, with real processes: `grader worker` subprocesses on the
machine's PostgreSQL and Redis (127.0.0.1:6379, a unique queue per test), `grader up` with
its private redis-server and with the serverless SQLite broker, and the fault tests: a
worker SIGKILLed while it grades, a pool process killed under it, Redis restarted. Every
submission must end graded exactly once (grade_count == 1) with the score the grading core
gives for the submission's recorded seed."""

from __future__ import annotations

import http.cookiejar
import io
import json
import os
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from grader.config import Settings
from grader.grade import default_runner, grade_bytes
from grader.store import accounts, catalog
from grader.store.db import make_engine, make_sessionmaker
from grader.store.models import Assignment, Submission, User
from grader.store.submissions import claim, create_submission
from grader.up import start_redis
from grader.web.queue import CeleryEnqueuer
from service_fixtures import REDIS_URL, csrf_token, login
from service_fixtures import test_settings as settings_for  # (not collected as a test)
from service_procs import (  # noqa: F401 - procs is a fixture
    FAST_RECOVERY,
    TIMEOUT,
    Proc,
    alive,
    grading_process,
    procs,
    service_env,
    start_worker,
)

SUBMISSIONS = Path(__file__).parent / "submissions"
VJP_RIGHT = (SUBMISSIONS / "vjp" / "correct_plain.py").read_bytes()
VJP_WRONG = (SUBMISSIONS / "vjp" / "wrong_transposed_dW.py").read_bytes()
GATES_RIGHT = (SUBMISSIONS / "gates" / "correct_plain.py").read_bytes()
# Correct, but relu_backward sleeps on each of its 14 trials: about 4 s of grading, long
# enough to kill a worker in the middle of it (the per-call limit is 3 s, so each call is fine).
VJP_SLOW = VJP_RIGHT.replace(
    b"def relu_backward(dout, x):\n",
    b"def relu_backward(dout, x):\n    __import__('time').sleep(0.3)\n",
)
assert VJP_SLOW != VJP_RIGHT

# kombu's SQLAlchemy transport (the serverless broker) uses a loader SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


# --- the database side ---------------------------------------------------------------------


def submit(sessions: sessionmaker[Session], data: bytes, slug: str = "vjp") -> int:
    with sessions() as s:
        assignment = s.scalar(select(Assignment).where(Assignment.slug == slug))
        student = s.scalar(select(User).where(User.email == "student@example.com"))
        assert assignment is not None and student is not None
        sid = create_submission(s, assignment, student, data, f"{slug}.py").id
        s.commit()  # committed before the id is enqueued, as the web app does
    return sid


def wait_done(
    sessions: sessionmaker[Session], ids: Iterable[int], *procs: Proc, timeout: float = TIMEOUT
) -> dict[int, Submission]:
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            rows = {r.id: r for r in s.scalars(select(Submission).where(Submission.id.in_(ids)))}
        if all(r.status in ("graded", "error") for r in rows.values()) and len(rows) == len(ids):
            return rows
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log_path.name}:\n{p.text()[-2500:]}" for p in procs)
            pytest.fail(f"not graded after {timeout:g} s: {[(r.id, r.status) for r in rows.values()]}\n{logs}")
        time.sleep(0.2)


def wait_status(sessions: sessionmaker[Session], sid: int, status: str, *procs: Proc) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with sessions() as s:
            if s.scalar(select(Submission.status).where(Submission.id == sid)) == status:
                return
        time.sleep(0.05)
    logs = "\n".join(f"--- {p.log_path.name}:\n{p.text()[-2500:]}" for p in procs)
    pytest.fail(f"submission {sid} never became {status}\n{logs}")


def assert_graded_once(sessions: sessionmaker[Session], rows: dict[int, Submission]) -> None:
    """Each row graded exactly once, with the score the core gives for its seed."""
    runner = default_runner()
    for sid, row in rows.items():
        assert (row.status, row.grade_count, row.lease_token) == ("graded", 1, None), (sid, row.status, row.error)
        with sessions() as s:
            spec = catalog.loaded_spec(s.get(Submission, sid).version)  # type: ignore[union-attr]
        expected = grade_bytes(spec, row.source, seed=row.seed, runner=runner)
        assert row.score == expected["score"] and row.max_score == expected["max_score"], sid
        assert [p["status"] for p in row.result["parts"]] == [p["status"] for p in expected["parts"]]  # type: ignore[index]


def assert_still_running(sessions: sessionmaker[Session], sid: int) -> None:
    """The kill landed mid-grading (else the test would prove nothing)."""
    with sessions() as s:
        row = s.get(Submission, sid)
        assert row is not None and (row.status, row.grade_count) == ("running", 0), "the grading ended before the kill"


@pytest.fixture
def drop_queue() -> Iterator[list[str]]:
    """Remove the test's queues from the shared Redis afterwards, with the messages a
    killed worker left unacknowledged (kombu would restore them an hour later). Requested
    before `procs`, so the workers are stopped first."""
    queues: list[str] = []
    yield queues
    client = redis.Redis.from_url(REDIS_URL)
    for queue in queues:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    for tag, raw in client.hscan_iter("unacked"):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key in queues:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.close()


def pg_setup(pg_url: str, tmp_path: Path, drop_queue: list[str]) -> tuple[Settings, sessionmaker[Session]]:
    settings = settings_for(pg_url, tmp_path)
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    drop_queue.append(settings.queue)
    return settings, make_sessionmaker(make_engine(pg_url))


# --- PostgreSQL + Redis + a real worker -----------------------------------------------------


def test_submissions_from_the_store_the_api_and_the_web_form_get_graded(pg_url, tmp_path, drop_queue, procs):
    from grader.web import create_app

    settings, sessions = pg_setup(pg_url, tmp_path, drop_queue)
    worker = start_worker(settings, tmp_path / "worker.log")
    procs.append(worker)

    # Through the store and the real Celery enqueuer (what every entry point does).
    enqueue = CeleryEnqueuer(settings)
    ids = [submit(sessions, VJP_RIGHT), submit(sessions, VJP_WRONG)]
    enqueue(ids)

    # Through the app as `grader web` serves it: the real enqueuer, Redis, this worker.
    app = create_app(settings)
    client = app.test_client()
    with sessions() as s:
        student = s.scalar(select(User).where(User.email == "student@example.com"))
        token = accounts.create_token(s, student, "integration")  # type: ignore[arg-type]
        s.commit()
    api = client.post(
        "/api/v1/submissions",
        headers={"Authorization": f"Bearer {token}"},
        data={"assignment": "vjp", "file": (io.BytesIO(VJP_WRONG), "mine.py")},
    )
    assert api.status_code == 202, api.get_data(as_text=True)
    ids.append(api.get_json()["id"])

    login(client, "student")
    page = "/courses/demo/assignments/gates"
    form = client.post(
        page + "/submit",
        data={"csrf_token": csrf_token(client, page), "file": (io.BytesIO(GATES_RIGHT), "gates.py")},
        content_type="multipart/form-data",
    )
    assert form.status_code in (302, 303), form.get_data(as_text=True)[:500]
    ids.append(int(form.headers["Location"].rstrip("/").rsplit("/", 1)[1]))

    rows = wait_done(sessions, ids, worker)
    assert_graded_once(sessions, rows)
    assert rows[ids[0]].score == rows[ids[0]].max_score == 8.0
    assert rows[ids[1]].score < 8.0  # type: ignore[operator]
    assert rows[ids[3]].score == 8.0
    assert rows[ids[2]].via == "api"

    shown = client.get(f"/api/v1/submissions/{ids[2]}", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert (shown["status"], shown["score"]) == ("graded", rows[ids[2]].score)
    assert f"submission.graded submission_id={ids[0]} " in worker.text()  # one structured line per state change
    app.extensions["grader.engine"].dispose()


# --- `grader up` ---------------------------------------------------------------------------


class Browser:
    """Just enough of a browser for the served app: cookies, CSRF tokens, multipart."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, path: str, body: Optional[bytes] = None, content_type: str = "") -> tuple[int, str, str]:
        req = urllib.request.Request(self.base + path, data=body, headers={"Content-Type": content_type} if body else {})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, resp.read().decode(), resp.url
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), exc.url

    def csrf(self, path: str) -> str:
        _, page, _ = self.request(path)
        found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert found, f"no CSRF token on {path}"
        return found.group(1)

    def login(self, email: str, password: str) -> tuple[int, str, str]:
        body = urllib.parse.urlencode({"csrf_token": self.csrf("/login"), "email": email, "password": password})
        return self.request("/login", body.encode(), "application/x-www-form-urlencoded")

    def upload(self, path: str, form_page: str, data: bytes, filename: str) -> tuple[int, str, str]:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{self.csrf(form_page)}\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/x-python\r\n\r\n".encode() + data + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        return self.request(path, b"".join(parts), f"multipart/form-data; boundary={boundary}")



def start_up(instance: Path, log: Path, broker: str) -> Proc:
    return Proc(["up", "--port", "0", "--instance", str(instance), "--broker", broker, "--concurrency", "1"], service_env(), log)


def wait_banner(up: Proc) -> tuple[str, str]:
    """(URL, everything printed up to the end of the banner)."""
    up.wait_for(r"Ctrl-C stops everything")
    text = up.text()
    found = re.search(r"grader up: (http://127\.0\.0\.1:\d+/)", text)
    assert found, text
    return found.group(1), text


def demo_passwords(text: str) -> dict[str, str]:
    return {role: pw for role, pw in re.findall(r"^\s*(student|ta|instructor)\s+\S+@example\.com\s+(\S+)$", text, re.M)}


def test_grader_up_with_the_serverless_sqlite_broker(tmp_path, procs):
    instance = tmp_path / "instance"
    up = start_up(instance, tmp_path / "up.log", "sqlite")
    procs.append(up)
    url, banner = wait_banner(up)
    assert f"broker    SQLite queue {instance / 'broker.sqlite'}" in banner
    worker_pid = int(re.search(r"worker\s+1 grading process\(es\), pid (\d+)", banner).group(1))  # type: ignore[union-attr]

    # The demo logins are printed once and saved for their owner only.
    passwords = demo_passwords(banner)
    assert set(passwords) == {"student", "ta", "instructor"}
    saved = instance / "demo-accounts.txt"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert demo_passwords(saved.read_text()) == passwords

    browser = Browser(url)
    status, page, _ = browser.request("/login")
    assert status == 200 and 'name="password"' in page
    status, page, landed = browser.login("student@example.com", passwords["student"])
    assert status == 200 and landed == url, landed
    assert "demo" in page

    sessions = make_sessionmaker(make_engine(f"sqlite:///{instance / 'grader.db'}"))
    up.wait_for(r"ready\.")
    # A submission made through the store and the same broker the web app uses...
    settings = Settings.from_env(environ={"GRADER_INSTANCE": str(instance)}, env="development",
                                 database_url=f"sqlite:///{instance / 'grader.db'}",
                                 broker_url=f"sqla+sqlite:///{instance / 'broker.sqlite'}")
    ids = [submit(sessions, VJP_WRONG)]
    CeleryEnqueuer(settings)(ids)
    # ...and one through the web form, served by waitress.
    status, _, landed = browser.upload(
        "/courses/demo/assignments/gates/submit", "/courses/demo/assignments/gates", GATES_RIGHT, "gates.py"
    )
    assert status == 200 and "/submissions/" in landed, (status, landed)
    ids.append(int(landed.rstrip("/").rsplit("/", 1)[1]))
    rows = wait_done(sessions, ids, up)
    assert_graded_once(sessions, rows)

    # SIGTERM stops everything it started.
    assert up.stop() == 0
    assert "grader up: stopped" in up.text()
    assert not alive(worker_pid)


@pytest.mark.slow
def test_grader_up_with_a_private_redis_and_a_second_run(tmp_path, procs):
    instance = tmp_path / "instance"
    first = start_up(instance, tmp_path / "up1.log", "redis")
    procs.append(first)
    url, banner = wait_banner(first)
    found = re.search(r"private redis-server on 127\.0\.0\.1:(\d+) \(pid (\d+)", banner)
    assert found, banner
    redis_pid = int(found.group(2))
    assert (instance / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600  # it holds the password
    assert Browser(url).request("/login")[0] == 200
    assert first.stop() == 0
    assert not alive(redis_pid)

    # Left behind by the first run: a queued row whose message died with its Redis, and one
    # its worker was grading when it stopped (claimed, lease still live).
    sessions = make_sessionmaker(make_engine(f"sqlite:///{instance / 'grader.db'}"))
    left = [submit(sessions, VJP_RIGHT), submit(sessions, VJP_WRONG)]
    with sessions() as s:
        assert claim(s, left[1]) is not None

    # A second run keeps the accounts, says where their passwords are, and grades what
    # the first run left, once.
    second = start_up(instance, tmp_path / "up2.log", "redis")
    procs.append(second)
    _, banner = wait_banner(second)
    assert "exist already; their passwords are in" in banner
    assert not demo_passwords(banner)
    assert "Re-enqueued 2 submission(s) the previous run left ungraded" in banner
    rows = wait_done(sessions, left, second)
    assert_graded_once(sessions, rows)
    assert rows[left[1]].attempts == 2
    worker_pid = int(re.search(r"pid (\d+), with the sweeper", banner).group(1))  # type: ignore[union-attr]
    redis_pid = int(re.search(r"private redis-server on \S+ \(pid (\d+)", banner).group(1))  # type: ignore[union-attr]
    second.wait_for(r"ready\.")
    # Killed outright, it still leaves nothing behind (its children die with it).
    second.kill()
    deadline = time.monotonic() + 20
    while (alive(worker_pid) or alive(redis_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker_pid) and not alive(redis_pid)


# --- faults --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_while_grading_a_batch_loses_nothing_and_grades_nothing_twice(
    pg_url, tmp_path, drop_queue, procs
):
    settings, sessions = pg_setup(pg_url, tmp_path, drop_queue)
    first = start_worker(settings, tmp_path / "worker1.log", **FAST_RECOVERY)
    procs.append(first)
    first.wait_for(r"ready\.")
    ids = [submit(sessions, VJP_SLOW), submit(sessions, VJP_RIGHT), submit(sessions, VJP_WRONG), submit(sessions, GATES_RIGHT, "gates")]
    CeleryEnqueuer(settings)(ids)

    wait_status(sessions, ids[0], "running", first)
    time.sleep(1.0)  # well into its ~4 s of grading
    first.kill()
    assert_still_running(sessions, ids[0])

    # A new worker with the sweeper: the queued messages are still in Redis; the one being
    # graded was taken by the dead worker, so the sweeper re-sends it once its lease expires.
    second = start_worker(settings, tmp_path / "worker2.log", beat=True, **FAST_RECOVERY)
    procs.append(second)
    rows = wait_done(sessions, ids, first, second)
    assert_graded_once(sessions, rows)
    assert rows[ids[0]].attempts == 2 and rows[ids[0]].score == 8.0
    assert f"submission.requeued submission_id={ids[0]} " in second.text()


@pytest.mark.slow
def test_a_pool_process_killed_mid_grading_is_redelivered_and_swept(pg_url, tmp_path, drop_queue, procs):
    settings, sessions = pg_setup(pg_url, tmp_path, drop_queue)
    worker = start_worker(settings, tmp_path / "worker.log", beat=True, **FAST_RECOVERY)
    procs.append(worker)
    worker.wait_for(r"ready\.")
    sid = submit(sessions, VJP_SLOW)
    CeleryEnqueuer(settings)([sid])
    wait_status(sessions, sid, "running", worker)
    time.sleep(1.0)
    os.kill(grading_process(worker), signal.SIGKILL)
    assert_still_running(sessions, sid)

    # The worker survives, rejects the message back to the queue (reject_on_worker_lost),
    # and the redelivery finds the dead process's lease still live: it does not grade.
    # When the lease expires the sweeper re-sends it, and it is graded once.
    rows = wait_done(sessions, [sid], worker)
    assert_graded_once(sessions, rows)
    assert rows[sid].attempts == 2
    log = worker.text()
    assert "WorkerLostError" in log or "exited with 'signal 9" in log, log[-2000:]
    assert worker.proc.poll() is None


@pytest.mark.slow
def test_a_redis_restart_loses_no_submission(pg_url, tmp_path, procs):
    settings, sessions = pg_setup(pg_url, tmp_path, [])
    data_dir = tmp_path / "redis"
    broker = start_redis(data_dir)
    try:
        port = int(broker.url.rsplit(":", 1)[1].split("/")[0])
        settings = Settings.from_env(
            environ={}, env="testing", database_url=settings.database_url, broker_url=broker.url,
            secret_key=settings.secret_key, instance_path=settings.instance_path, queue=settings.queue,
        )
        worker = start_worker(settings, tmp_path / "worker.log", beat=True, **FAST_RECOVERY)
        procs.append(worker)
        worker.wait_for(r"ready\.")
        enqueue = CeleryEnqueuer(settings)
        ids = [submit(sessions, VJP_SLOW)]
        enqueue(ids)
        wait_status(sessions, ids[0], "running", worker)

        broker.stop(timeout=0)  # Redis dies while a submission is being graded
        broker.process.wait(timeout=5)  # type: ignore[union-attr]
        late = [submit(sessions, VJP_RIGHT), submit(sessions, VJP_WRONG)]
        enqueue(late)  # fails: the rows stay queued (the web app logs it and answers normally)
        ids += late
        # Back on the same port, empty (no persistence): the messages it held are gone.
        broker = start_redis(data_dir, port=port)
        rows = wait_done(sessions, ids, worker)
        assert_graded_once(sessions, rows)
        assert worker.proc.poll() is None
    finally:
        broker.stop()
