"""Fixtures for the service tests: migrated databases (SQLite files and the machine's real
PostgreSQL), a Flask app and client, and logged-in users of each role.

PostgreSQL: a throw-away database per test session on $TEST_PG_URL (default: the machine's
server, 127.0.0.1:5432, trust auth), emptied between tests. SQLite: a migrated, seeded
template file per session, copied per test."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from grader.config import Settings
from grader.store import accounts, migrate
from grader.store.db import make_engine, make_sessionmaker
from grader.store.demo import seed_demo
from grader.store.models import Base

PG_SERVER = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PASSWORDS = {"student": "student-pass-1", "ta": "ta-pass-1", "instructor": "instructor-pass-1"}
EMAILS = {"student": "student@example.com", "ta": "ta@example.com", "instructor": "instructor@example.com"}


@dataclass
class Enqueued:
    """The web app's enqueue hook for page tests that run no worker: records the ids sent.
    Integration tests use the real Celery enqueuer with Redis and a worker process."""

    ids: list[int] = field(default_factory=list)

    def __call__(self, submission_ids: Any) -> None:
        self.ids.extend(int(i) for i in submission_ids)


def _seed(url: str) -> None:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        seed_demo(session, passwords=PASSWORDS)
        session.commit()
    engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _fast_hashes() -> None:
    accounts.use_cheap_hashing_for_tests()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "grader.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    _seed(url)
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "grader.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL for this test session."""
    name = f"grader_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_SERVER} is not reachable ({exc}); .ci/run starts it")
    url = PG_SERVER.rsplit("/", 1)[0] + "/" + name
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    """The session's PostgreSQL database, emptied and re-seeded for this test."""
    engine = make_engine(pg_server_url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    _seed(pg_server_url)
    return pg_server_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Both backends: for tests of behaviour that SQL dialects could change."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def test_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    overrides.setdefault("broker_url", REDIS_URL)
    overrides.setdefault("queue", f"grader-test-{uuid.uuid4().hex[:8]}")
    return Settings.from_env(
        environ={},
        env="testing",
        database_url=database_url,
        secret_key="test-secret-key-" + "x" * 32,
        instance_path=tmp_path / "instance",
        **overrides,
    )


@pytest.fixture
def enqueued() -> Enqueued:
    return Enqueued()


@pytest.fixture
def app(sqlite_url: str, tmp_path: Path, enqueued: Enqueued) -> Any:
    from grader.web import create_app

    app = create_app(test_settings(sqlite_url, tmp_path), enqueue=enqueued)
    yield app
    app.extensions["grader.engine"].dispose()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def session(app: Any) -> Iterator[Session]:
    """A database session on the app's database, for arranging and checking rows."""
    with make_sessionmaker(app.extensions["grader.engine"])() as s:
        yield s


def login(client: Any, role_or_email: str, password: str | None = None) -> Any:
    """Log `client` in as a demo user (by role) or any user (by email and password)."""
    email = EMAILS.get(role_or_email, role_or_email)
    password = password or PASSWORDS[role_or_email]
    client.get("/login")
    response = client.post("/login", data={"email": email, "password": password, "csrf_token": csrf_token(client)})
    assert response.status_code == 302, f"login as {email} failed: {response.status_code}"
    return response


def csrf_token(client: Any, path: str = "/login") -> str:
    """A valid CSRF token for the client's session (read from a page's form)."""
    import re

    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page
    )
    assert match, f"no CSRF token on {path}"
    return match.group(1)
