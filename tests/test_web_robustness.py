"""Findings of a hostile review, kept as tests: inputs that once crashed a page or let an
old session, a race or a roster do what it should not."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import func, select

from grader.store import submissions as store
from grader.store.db import make_engine, make_sessionmaker, utcnow
from grader.store.models import Assignment, Submission, User
from service_fixtures import PASSWORDS, csrf_token, login


@pytest.mark.parametrize(
    "path",
    [
        "/submissions/9999999999999999999999999",
        "/submissions/9223372036854775808",
        "/submissions/2147483648/status.json",
        "/courses/demo/students/99999999999999999999",
    ],
)
def test_ids_beyond_the_database_are_404_not_500(client, path):
    login(client, "ta")
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("path", ["/courses/de%00mo/gradebook", "/courses/demo/gradebook?q=a%00b"])
def test_nul_in_a_url_is_a_clear_400(client, path):
    login(client, "ta")
    response = client.get(path)
    assert response.status_code == 400
    assert "NUL" in response.get_data(as_text=True)


def test_nul_in_the_login_email_is_a_clear_400(client):
    response = client.post(
        "/login", data={"email": "a\x00@example.com", "password": "x" * 10, "csrf_token": csrf_token(client)}
    )
    assert response.status_code == 400


def test_a_deactivated_account_loses_its_session_at_once(client, session):
    login(client, "student")
    assert client.get("/").status_code == 200
    session.scalar(select(User).where(User.email == "student@example.com")).active = False
    session.commit()
    assert client.get("/").status_code == 302  # back to the login page


def test_a_password_change_ends_every_other_session(app):
    first, second = app.test_client(), app.test_client()
    login(first, "student")
    login(second, "student")
    token = csrf_token(first, "/account")
    changed = first.post(
        "/account/password",
        data={"current": PASSWORDS["student"], "new": "brand-new-pass", "confirm": "brand-new-pass", "csrf_token": token},
    )
    assert changed.status_code == 302
    assert first.get("/").status_code == 200  # the session that changed it goes on
    assert second.get("/").status_code == 302  # the other one is over


def test_the_submission_limit_holds_under_parallel_submits_on_sqlite(app, session):
    assignment = session.scalar(select(Assignment).where(Assignment.slug == "gates"))
    assignment.max_submissions = 1
    session.commit()
    engine = make_engine(str(app.extensions["grader.engine"].url))
    factory = make_sessionmaker(engine)
    outcomes: list[str] = []

    def submit() -> None:
        with factory() as s:
            a = s.get(Assignment, assignment.id)
            u = s.scalar(select(User).where(User.email == "student@example.com"))
            try:
                store.create_submission(s, a, u, b"def f(): pass\n", "a.py")
                s.commit()
                outcomes.append("stored")
            except store.NotAccepted:
                s.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    stored = session.scalar(select(func.count(Submission.id)).where(Submission.assignment_id == assignment.id))
    assert stored == 1 and outcomes.count("stored") == 1, outcomes


def test_a_far_future_due_date_is_refused_by_the_settings_form(client, session):
    login(client, "instructor")
    path = "/courses/demo/assignments/vjp/manage"
    response = client.post(
        path + "/settings",
        data={
            "csrf_token": csrf_token(client, path),
            "due_at": "9999-12-31T23:59",
            "late_mode": "penalty",
            "penalty_pct": "10",
            "cutoff_days": "365",
        },
    )
    assert response.status_code == 400
    assert "between the years 2000 and 2100" in response.get_data(as_text=True)
    assert client.get("/courses/demo/assignments/vjp").status_code == 200


@pytest.mark.parametrize("text", ["x\x00y", "lone \udcff surrogate"])
def test_a_result_holding_nul_or_a_lone_surrogate_is_still_stored(db_url, text):
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        a = s.scalar(select(Assignment).where(Assignment.slug == "gates"))
        u = s.scalar(select(User).where(User.email == "student@example.com"))
        sub = store.create_submission(s, a, u, b"print('x')\n", "a.py", enforce=False)
        s.commit()
        held = store.claim(s, sub.id)
        result = {"score": 0.0, "max_score": 8.0, "messages": [text], "parts": [{"printed": text}]}
        assert store.finish(s, held, result)
        s.expire_all()
        stored = s.get(Submission, sub.id)
        assert stored.status == "graded"
        assert "\x00" not in stored.result["messages"][0] and stored.result["messages"][0].startswith(text[:1])
    engine.dispose()
