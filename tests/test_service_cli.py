"""The operator commands: `grader db upgrade`, `users add`, `users set-password`, `tokens
create`, `web`, `worker`, `sweep` and the checks `up` makes before starting anything.
Each bad configuration or unreachable database ends with one clear sentence, no traceback."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from grader.cli import main
from grader.store import accounts
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.models import ApiToken, Assignment, Course, Membership, Submission, User
from grader.store.submissions import create_submission
from service_fixtures import REDIS_URL


def run(args: list[str], env: dict[str, str], input: str | None = None) -> Result:
    base = {
        "GRADER_ENV": "testing",
        "DATABASE_URL": "",
        "BROKER_URL": "",
        "REDIS_URL": "",
        "SECRET_KEY": "",
        "GRADER_QUEUE": "",
    }
    base.update(env)
    # click's runner sets these for the duration of the call; "" would be read as unset
    # by Settings for most, so drop the empty ones instead.
    env_final: dict[str, str | None] = {k: (v if v else None) for k, v in base.items()}
    return CliRunner().invoke(main, args, env=env_final, input=input, catch_exceptions=False)


@pytest.fixture
def env(sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": sqlite_url, "GRADER_INSTANCE": str(tmp_path / "instance"), "BROKER_URL": REDIS_URL}


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Any]:
    engine = make_engine(sqlite_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output


# --- db upgrade ----------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {"DATABASE_URL": url, "GRADER_INSTANCE": str(tmp_path)}
    before = run(["users", "add", "a@example.com", "--role", "student", "--password", "long-enough"], env)
    assert before.exit_code == 1
    assert "run `grader db upgrade` first" in before.output and "never migrated" in before.output
    first = run(["db", "upgrade"], env)
    assert first.exit_code == 0, first.output
    assert "is at revision" in first.output
    assert run(["db", "upgrade"], env).exit_code == 0
    after = run(["users", "add", "a@example.com", "--role", "student", "--password", "long-enough"], env)
    assert after.exit_code == 0, after.output


def test_a_production_configuration_without_a_database_is_refused_clearly(tmp_path):
    result = run(["db", "upgrade"], {"GRADER_ENV": "production", "GRADER_INSTANCE": str(tmp_path)})
    assert result.exit_code == 1
    assert "configuration: production needs DATABASE_URL" in result.output
    no_traceback(result)


def test_a_weak_secret_key_is_refused_in_production(tmp_path):
    result = run(
        ["web"],
        {"GRADER_ENV": "production", "DATABASE_URL": "sqlite://", "BROKER_URL": REDIS_URL, "SECRET_KEY": "changeme"},
    )
    assert result.exit_code == 1 and "SECRET_KEY" in result.output
    no_traceback(result)


@pytest.mark.parametrize("command", [["db", "upgrade"], ["users", "add", "x@example.com", "--role", "ta"], ["web"], ["sweep"]])
def test_an_unreachable_database_is_one_sentence_without_the_password(command, tmp_path):
    url = "postgresql://grader:hunter22@127.0.0.1:1/grader"
    result = run(command, {"DATABASE_URL": url, "GRADER_INSTANCE": str(tmp_path), "BROKER_URL": REDIS_URL})
    assert result.exit_code == 1
    assert "cannot use the database postgresql" in result.output and "127.0.0.1:1" in result.output
    assert "hunter22" not in result.output
    no_traceback(result)


# --- users ---------------------------------------------------------------------------------


def test_users_add_with_a_password_and_a_course(env, db):
    result = run(["users", "add", "New.TA@Example.com", "--role", "ta", "--password", "ta-password-1",
                  "--course", "demo", "--name", "New TA"], env)
    assert result.exit_code == 0, result.output
    assert "created ta new.ta@example.com in course demo" in result.output
    assert "ta-password-1" not in result.output
    with db() as s:
        user = s.scalar(select(User).where(User.email == "new.ta@example.com"))
        assert user is not None and (user.role, user.name) == ("ta", "New TA")
        assert accounts.verify_password(user, "ta-password-1")
        role = s.scalar(
            select(Membership.role).join(Course).where(Membership.user_id == user.id, Course.code == "demo")
        )
        assert role == "ta"


def test_users_add_without_a_password_generates_and_prints_one(env, db):
    result = run(["users", "add", "someone@example.com", "--role", "student"], env)
    assert result.exit_code == 0, result.output
    password = result.output.split("password: ", 1)[1].split()[0]
    assert len(password) >= 12
    with db() as s:
        assert accounts.authenticate(s, "someone@example.com", password) is not None


def test_users_add_for_an_existing_user(env, db):
    plain = run(["users", "add", "student@example.com", "--role", "student"], env)
    assert plain.exit_code == 1 and "already exists" in plain.output
    with db() as s:
        s.add(Course(code="other", title="Other"))
        s.commit()
    enrol = run(["users", "add", "student@example.com", "--role", "ta", "--course", "other"], env)
    assert enrol.exit_code == 0, enrol.output
    assert "now ta in course other" in enrol.output
    repass = run(["users", "add", "student@example.com", "--role", "ta", "--course", "other", "--password", "x" * 10], env)
    assert repass.exit_code == 1 and "set-password" in repass.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["users", "add", "not-an-email", "--role", "student", "--password", "long-enough"], "is not an email address"),
        (["users", "add", "a@example.com", "--role", "student", "--password", "short"], "at least 8 characters"),
        (["users", "add", "a@example.com", "--role", "student", "--course", "nope"], "no course with code 'nope'"),
        (["users", "add", "a@example.com", "--role", "admin"], "Invalid value for '--role'"),
        (["tokens", "create", "nobody@example.com"], "no user with email"),
        (["users", "set-password", "nobody@example.com", "--password", "long-enough"], "no user with email"),
    ],
)
def test_bad_input_gets_a_clear_message(env, args, message):
    result = run(args, env)
    assert result.exit_code != 0
    assert message in result.output
    no_traceback(result)


def test_users_set_password(env, db):
    result = run(["users", "set-password", "ta@example.com", "--password", "a-new-password"], env)
    assert result.exit_code == 0, result.output
    with db() as s:
        assert accounts.authenticate(s, "ta@example.com", "a-new-password") is not None


# --- tokens --------------------------------------------------------------------------------


def test_tokens_create_prints_the_token_once_and_stores_only_its_hash(env, db):
    result = run(["tokens", "create", "student@example.com", "--name", "laptop"], env)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith(accounts.TOKEN_PREFIX) and "\n" not in token  # stdout is the token alone
    assert "shown once" in result.stderr
    with db() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == "laptop"))
        assert row is not None and row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in (row.token_hash, row.prefix, row.name)
        found = accounts.user_for_token(s, token)
        assert found is not None and found.email == "student@example.com"


def test_tokens_are_not_made_for_deactivated_users(env, db):
    with db() as s:
        s.execute(update(User).where(User.email == "ta@example.com").values(active=False))
        s.commit()
    result = run(["tokens", "create", "ta@example.com"], env)
    assert result.exit_code == 1 and "deactivated" in result.output


# --- web / worker --------------------------------------------------------------------------


def test_web_refuses_an_unmigrated_database(tmp_path):
    result = run(["web", "--port", "1"], {"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "GRADER_INSTANCE": str(tmp_path)})
    assert result.exit_code == 1
    assert "run `grader db upgrade` first" in result.output


def test_worker_refuses_an_unmigrated_database(tmp_path):
    result = run(["worker"], {"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "GRADER_INSTANCE": str(tmp_path)})
    assert result.exit_code == 1
    assert "run `grader db upgrade` first" in result.output


def test_worker_refuses_to_start_without_its_sandbox(env):
    # A Landlock ABI this kernel cannot have: the layer is "missing", as on an old kernel.
    result = run(["worker"], {**env, "GRADER_LANDLOCK_MIN_ABI": "999"})
    assert result.exit_code == 1
    assert "refusing to start the worker: the sandbox needs landlock" in result.output
    assert "To fix" in result.output
    no_traceback(result)


def test_worker_refuses_an_unknown_sandbox_mode(env):
    result = run(["worker"], {**env, "GRADER_SANDBOX": "off"})
    assert result.exit_code == 1 and "not a sandbox mode" in result.output


@pytest.mark.timeout(60)  # were the port not refused, the server would run
def test_web_says_when_its_port_is_taken(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["web", "--port", str(port)], env)
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


# --- sweep ---------------------------------------------------------------------------------


def test_sweep_re_enqueues_stuck_submissions(env, db):
    queue = f"grader-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with db() as s:
            assignment = s.scalar(select(Assignment).where(Assignment.slug == "gates"))
            student = s.scalar(select(User).where(User.email == "student@example.com"))
            sid = create_submission(s, assignment, student, b"x = 1\n", "a.py").id  # type: ignore[arg-type]
            fresh = create_submission(s, assignment, student, b"x = 2\n", "b.py").id  # type: ignore[arg-type]
            s.execute(update(Submission).where(Submission.id == sid).values(enqueued_at=utcnow() - dt.timedelta(hours=1)))
            s.commit()
        result = run(["sweep"], {**env, "GRADER_QUEUE": queue})
        assert result.exit_code == 0, result.output
        assert f"re-enqueued 1 submission(s): {sid}" in result.output
        assert client.llen(queue) == 1
        message = json.loads(client.lindex(queue, 0))  # type: ignore[arg-type]
        assert message["headers"]["task"] == "grader.grade_submission"
        assert message["headers"]["argsrepr"] == f"[{sid}]"  # not the fresh one ({fresh})
        again = run(["sweep"], {**env, "GRADER_QUEUE": queue})
        assert again.exit_code == 0 and "nothing stuck" in again.output
    finally:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()


# --- up: the checks before anything starts -------------------------------------------------


def test_up_refuses_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["up", "--port", str(port), "--instance", str(tmp_path / "i")], {})
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.output
    assert not (tmp_path / "i" / "grader.db").exists()  # nothing was started or created


def test_up_refuses_a_second_launcher_on_the_same_instance(tmp_path):
    instance = tmp_path / "i"
    instance.mkdir()
    with open(instance / "up.lock", "w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run(["up", "--port", "0", "--instance", str(instance)], {})
    assert result.exit_code == 1
    assert "another `grader up` (pid 4242) is running" in result.output


def test_up_refuses_to_start_without_the_sandbox(tmp_path):
    result = run(["up", "--port", "0", "--instance", str(tmp_path / "i")], {"GRADER_LANDLOCK_MIN_ABI": "999"})
    assert result.exit_code == 1
    assert "the sandbox needs landlock" in result.output
    no_traceback(result)


def test_up_with_redis_demanded_but_not_installed(tmp_path, monkeypatch):
    from grader import up

    monkeypatch.setattr(up.shutil, "which", lambda name: None)
    with pytest.raises(up.UpError, match="redis-server is not installed"):
        up.choose_broker("redis", tmp_path)
    assert up.choose_broker("auto", tmp_path).url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"


def test_a_starting_worker_waits_for_the_database_then_goes_on(monkeypatch):
    # A worker restarted while PostgreSQL restarts must not crash-loop: it waits.
    from sqlalchemy.exc import OperationalError

    from grader import service_cli
    from grader.store import migrate

    answers = [OperationalError("SELECT", {}, ConnectionRefusedError()), OperationalError("SELECT", {}, ConnectionRefusedError())]

    def current_revision(engine):
        if answers:
            raise answers.pop(0)
        return migrate.head_revision()

    slept = []
    monkeypatch.setattr(migrate, "current_revision", current_revision)
    monkeypatch.setattr(service_cli.time, "sleep", slept.append)
    service_cli._require_current_schema("sqlite://", wait_seconds=30)
    assert slept == [1.0, 1.0] and not answers


def test_a_starting_worker_gives_up_on_a_database_that_never_answers(tmp_path, monkeypatch):
    from grader import service_cli

    monkeypatch.setattr(service_cli, "STARTUP_DATABASE_WAIT_SECONDS", 2.0)
    url = "postgresql://grader:hunter22@127.0.0.1:1/grader"
    result = run(["worker"], {"DATABASE_URL": url, "GRADER_INSTANCE": str(tmp_path), "BROKER_URL": REDIS_URL, "GRADER_SANDBOX": "insecure-subprocess"})
    assert result.exit_code == 1
    assert "cannot use the database postgresql" in result.output and "hunter22" not in result.output
    no_traceback(result)
