"""The JSON API (/api/v1) and the `grader submit` client.

Endpoints are exercised through the Flask test client on SQLite and, for the main flow, on
the machine's PostgreSQL; the client runs against the app served over real HTTP (werkzeug
in a thread) with a grading hook that does what a worker does: claim, grade in the sandbox,
finish. The helpers at the top are also used by tests/test_security.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import socket
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from click.testing import CliRunner
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from grader.grade import grade_bytes
from grader.store import accounts, catalog, submissions
from grader.store.db import make_sessionmaker, utcnow
from grader.store.models import ApiToken, Assignment, Course, Extension, Submission, User
from service_fixtures import Enqueued
from service_fixtures import test_settings as settings_for  # (not collected as a test)

SUBMISSIONS = Path(__file__).parent / "submissions"
CORRECT_VJP = SUBMISSIONS / "vjp" / "correct_plain.py"
WRONG_VJP = SUBMISSIONS / "vjp" / "wrong_transposed_dW.py"
API = "/api/v1"


# --- helpers (shared with test_security.py) ------------------------------------------------


def user_by_email(session: Session, email: str) -> User:
    found = session.scalar(select(User).where(User.email == email))
    assert found is not None, email
    return found


def token_for(session: Session, email: str, name: str = "") -> str:
    token = accounts.create_token(session, user_by_email(session, email), name)
    session.commit()
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_file(
    client: Any,
    token: Optional[str],
    assignment: Optional[str] = "vjp",
    data: bytes = b"def relu_backward(dout, x):\n    return dout * (x > 0)\n",
    filename: str = "solution.py",
    course: Optional[str] = None,
    **kwargs: Any,
) -> Any:
    form: dict[str, Any] = {}
    if assignment is not None:
        form["assignment"] = assignment
    if course is not None:
        form["course"] = course
    if data is not None:
        form["file"] = (io.BytesIO(data), filename)
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    return client.post(f"{API}/submissions", headers=headers, data=form, **kwargs)


def count_submissions(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count(Submission.id))) or 0


def assignment_in(session: Session, code: str, slug: str) -> Assignment:
    found = session.scalar(
        select(Assignment).join(Course, Course.id == Assignment.course_id).where(Course.code == code, Assignment.slug == slug)
    )
    assert found is not None
    return found


_grading = threading.Lock()  # one sandbox runner per process: grade one submission at a time


def grade_now(session: Session, submission_id: int) -> dict[str, Any]:
    """What a worker does with a queued submission: claim it, run the grading core on it
    in the sandbox, write the result under the lease. Returns the result."""
    with _grading:
        held = submissions.claim(session, submission_id)
        assert held is not None, f"submission {submission_id} could not be claimed"
        sub = session.get(Submission, submission_id)
        assert sub is not None
        session.refresh(sub)
        result = grade_bytes(catalog.loaded_spec(sub.version), sub.source, seed=sub.seed)
        assert submissions.finish(session, held, result)
    return result


class GradingWorker:
    """An enqueue hook for a served app: grades each id in a thread, like a worker would
    after the broker delivered it."""

    def __init__(self, engine: Any) -> None:
        self.sessions = make_sessionmaker(engine)
        self.threads: list[threading.Thread] = []

    def __call__(self, ids: Any) -> None:
        for sid in ids:
            thread = threading.Thread(target=self._grade, args=(int(sid),), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _grade(self, sid: int) -> None:
        with self.sessions() as session:
            grade_now(session, sid)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """The app served over real HTTP on a free port of 127.0.0.1; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def student_token(session: Session) -> str:
    return token_for(session, "student@example.com")


@pytest.fixture
def ta_token(session: Session) -> str:
    return token_for(session, "ta@example.com")


# --- authentication ------------------------------------------------------------------------


def test_no_token_is_401_with_a_challenge(client):
    response = client.get(f"{API}/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    body = response.get_json()
    assert body["error"] == "Unauthorized" and "Authorization: Bearer" in body["detail"]


@pytest.mark.parametrize(
    "header",
    ["Bearer bpg_not-a-real-token", "Bearer " + "x" * 500, "bearer   bpg_wrong", "Bearer"],
)
def test_bad_tokens_are_401(client, header):
    response = client.get(f"{API}/me", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.get_json()["error"] == "Unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")


def test_an_invalid_token_is_named_as_such(client):
    response = client.get(f"{API}/me", headers=bearer("bpg_unknown"))
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "not valid" in response.get_json()["detail"]


def test_other_schemes_are_not_accepted(client, student_token):
    import base64

    basic = base64.b64encode(f"student@example.com:{student_token}".encode()).decode()
    for header in (f"Basic {basic}", f"Token {student_token}", student_token):
        assert client.get(f"{API}/me", headers={"Authorization": header}).status_code == 401


def test_me(client, student_token):
    response = client.get(f"{API}/me", headers=bearer(student_token))
    assert response.status_code == 200
    body = response.get_json()
    assert body["email"] == "student@example.com" and body["name"] == "Demo Student"
    assert body["courses"] == [{"code": "demo", "title": "Backpropagation (demo course)", "role": "student"}]
    assert response.headers["Cache-Control"] == "private, no-store"


def test_use_of_a_token_is_recorded(client, session, student_token):
    row = session.scalar(select(ApiToken))
    assert row.last_used_at is None
    before = utcnow()
    assert client.get(f"{API}/me", headers=bearer(student_token)).status_code == 200
    session.expire_all()
    assert row.last_used_at is not None and row.last_used_at >= before - dt.timedelta(seconds=1)


def test_token_use_is_written_at_most_once_a_minute(client, session, student_token):
    # A polling script must not cost a commit per request; the account page shows minutes.
    assert client.get(f"{API}/me", headers=bearer(student_token)).status_code == 200
    session.expire_all()
    row = session.scalar(select(ApiToken))
    first = row.last_used_at
    assert client.get(f"{API}/me", headers=bearer(student_token)).status_code == 200
    session.expire_all()
    assert row.last_used_at == first
    row.last_used_at = first - dt.timedelta(minutes=2)
    session.commit()
    assert client.get(f"{API}/me", headers=bearer(student_token)).status_code == 200
    session.expire_all()
    assert row.last_used_at > first - dt.timedelta(minutes=2)


def test_unknown_paths_and_methods_answer_json(client, student_token):
    missing = client.get(f"{API}/nothing-here", headers=bearer(student_token))
    assert missing.status_code == 404 and missing.get_json()["error"] == "Not Found"
    wrong = client.delete(f"{API}/submissions", headers=bearer(student_token))
    assert wrong.status_code == 405 and wrong.get_json()["error"] == "Method Not Allowed"


# --- assignments ---------------------------------------------------------------------------


def test_assignments_a_student_sees(client, session, student_token):
    body = client.get(f"{API}/assignments", headers=bearer(student_token)).get_json()
    rows = {row["id"]: row for row in body["assignments"]}
    assert set(rows) == {"gates", "vjp", "mlp", "bp4"}
    vjp = rows["vjp"]
    assert vjp["course"] == "demo" and vjp["title"].startswith("Vector-Jacobian")
    assert vjp["max_score"] == 8.0 and vjp["accepting"] is True and vjp["not_accepting_reason"] is None
    assert vjp["submissions_left"] is None and vjp["submissions_used"] == 0
    assert vjp["late_policy"] == "10% off per day late, late submissions accepted for 3 day(s)"
    due = dt.datetime.fromisoformat(vjp["due_at"])
    assert due.tzinfo is not None and dt.datetime.fromisoformat(vjp["closes_at"]) == due + dt.timedelta(days=3)


def test_assignments_follow_publishing_limits_and_extensions(client, session, student_token, ta_token):
    vjp = assignment_in(session, "demo", "vjp")
    gates = assignment_in(session, "demo", "gates")
    gates.published = False
    vjp.max_submissions = 2
    extended = vjp.due_at + dt.timedelta(days=5)
    session.add(Extension(assignment_id=vjp.id, user_id=user_by_email(session, "student@example.com").id, due_at=extended))
    session.commit()
    assert post_file(client, student_token).status_code == 202

    rows = {r["id"]: r for r in client.get(f"{API}/assignments", headers=bearer(student_token)).get_json()["assignments"]}
    assert "gates" not in rows  # unpublished: students do not see it
    assert rows["vjp"]["submissions_used"] == 1 and rows["vjp"]["submissions_left"] == 1
    assert dt.datetime.fromisoformat(rows["vjp"]["due_at"]) == extended  # the student's own due date

    staff = {r["id"]: r for r in client.get(f"{API}/assignments", headers=bearer(ta_token)).get_json()["assignments"]}
    assert staff["gates"]["published"] is False and staff["gates"]["role"] == "ta"
    assert dt.datetime.fromisoformat(staff["vjp"]["due_at"]) == vjp.due_at  # no extension for the TA

    assert post_file(client, student_token).status_code == 202
    rows = {r["id"]: r for r in client.get(f"{API}/assignments", headers=bearer(student_token)).get_json()["assignments"]}
    assert rows["vjp"]["submissions_left"] == 0 and rows["vjp"]["accepting"] is False
    assert "used all 2 submissions" in rows["vjp"]["not_accepting_reason"]


# --- submitting ----------------------------------------------------------------------------


def test_submit_stores_commits_and_enqueues(client, session, enqueued, student_token):
    response = post_file(client, student_token, data=CORRECT_VJP.read_bytes(), filename="my_vjp.py")
    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"id", "status", "url", "html_url"}
    assert body["status"] == "queued"
    assert body["url"] == f"http://localhost{API}/submissions/{body['id']}"
    assert response.headers["Location"] == body["url"]
    assert body["html_url"] == f"http://localhost/submissions/{body['id']}"
    assert enqueued.ids == [body["id"]]
    row = session.get(Submission, body["id"])
    assert row.status == "queued" and row.via == "api" and row.filename == "my_vjp.py"
    assert row.source == CORRECT_VJP.read_bytes() and row.user.email == "student@example.com"


def test_the_row_is_committed_before_its_id_is_enqueued(app, client, student_token):
    seen: list[Optional[str]] = []
    sessions = make_sessionmaker(app.extensions["grader.engine"])

    def enqueue(ids: Any) -> None:
        with sessions() as other:  # another connection, as a worker would have
            seen.extend(other.scalar(select(Submission.status).where(Submission.id == i)) for i in ids)

    app.extensions["grader.enqueue"] = enqueue
    assert post_file(client, student_token).status_code == 202
    assert seen == ["queued"]


def test_a_broken_broker_does_not_lose_the_submission(app, client, session, student_token):
    def enqueue(ids: Any) -> None:
        raise ConnectionError("broker down")

    app.extensions["grader.enqueue"] = enqueue
    response = post_file(client, student_token)
    assert response.status_code == 202  # the sweeper delivers it later
    assert session.get(Submission, response.get_json()["id"]).status == "queued"


@pytest.mark.parametrize(
    "kwargs, missing",
    [
        ({"assignment": None}, "assignment"),
        ({"data": None}, "file"),
        ({"filename": ""}, "file"),
        ({"assignment": "  "}, "assignment"),
    ],
)
def test_submit_missing_fields_is_400(client, session, student_token, kwargs, missing):
    response = post_file(client, student_token, **kwargs)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "Bad Request" and f"Missing {missing}" in body["detail"]
    assert count_submissions(session) == 0


def test_submit_json_instead_of_multipart_is_400(client, student_token):
    response = client.post(f"{API}/submissions", headers=bearer(student_token), json={"assignment": "vjp", "file": "x"})
    assert response.status_code == 400 and "multipart/form-data" in response.get_json()["detail"]


@pytest.mark.parametrize("filename", ["solution.txt", "solution.ipynb", "solution", "solution.py.zip"])
def test_submit_not_a_py_file_is_400(client, session, student_token, filename):
    response = post_file(client, student_token, filename=filename)
    assert response.status_code == 400 and "is not a .py file" in response.get_json()["detail"]
    assert count_submissions(session) == 0


def test_submit_accepts_what_the_grader_reports_on(client, session, student_token):
    """Not UTF-8, empty: stored and graded; the grading core explains the problem."""
    assert post_file(client, student_token, data=b"\xff\xfe\x00bad").status_code == 202
    assert post_file(client, student_token, data=b"").status_code == 202
    assert post_file(client, student_token, filename="UPPER.PY").status_code == 202
    assert count_submissions(session) == 3


def test_submit_over_the_file_limit_is_413(client, session, student_token):
    response = post_file(client, student_token, data=b"#" * ((1 << 20) + 1))
    assert response.status_code == 413
    body = response.get_json()
    assert body["error"] == "Request Entity Too Large" and "1024 KiB" in body["detail"]
    assert post_file(client, student_token, data=b"#" * (1 << 20)).status_code == 202  # exactly the limit is fine
    assert count_submissions(session) == 1


def test_submit_over_the_request_limit_is_413_json(client, session, student_token):
    response = post_file(client, student_token, data=b"#" * (7 << 20))
    assert response.status_code == 413
    assert "1024 KiB per file" in response.get_json()["detail"]
    assert count_submissions(session) == 0


def test_the_file_limit_follows_the_settings(sqlite_url, tmp_path, session):
    from grader.web import create_app

    small = create_app(settings_for(sqlite_url, tmp_path, max_upload_bytes=2048), enqueue=Enqueued())
    with make_sessionmaker(small.extensions["grader.engine"])() as s:
        token = token_for(s, "student@example.com")
    client = small.test_client()
    assert post_file(client, token, data=b"#" * 2049).status_code == 413
    assert post_file(client, token, data=b"#" * 2048).status_code == 202
    small.extensions["grader.engine"].dispose()


@pytest.mark.parametrize("slug", ["nope", "VJP2", "vjp' OR '1'='1", "x" * 300, "vjp; DROP TABLE submissions"])
def test_submit_to_an_unknown_assignment_is_404(client, session, student_token, slug):
    response = post_file(client, student_token, assignment=slug)
    assert response.status_code == 404 and response.get_json()["error"] == "Not Found"
    assert count_submissions(session) == 0


def test_a_student_cannot_submit_to_an_unpublished_assignment(client, session, student_token):
    assignment_in(session, "demo", "vjp").published = False
    session.commit()
    assert post_file(client, student_token).status_code == 404
    assert count_submissions(session) == 0


def test_staff_may_submit_to_an_unpublished_or_closed_assignment(client, session, ta_token):
    vjp = assignment_in(session, "demo", "vjp")
    vjp.published = False
    vjp.due_at = utcnow() - dt.timedelta(days=30)
    vjp.max_submissions = 0
    session.commit()
    response = post_file(client, ta_token)
    assert response.status_code == 202


def test_a_course_the_student_is_not_in_is_404(client, session, student_token):
    other = catalog.create_course(session, "other", "Another course")
    catalog.install_builtins(session, other, ids=["vjp"])
    session.commit()
    response = post_file(client, student_token, course="other")
    assert response.status_code == 404 and "'other'" in response.get_json()["detail"]
    assert post_file(client, student_token, course="no-such-course").status_code == 404
    assert count_submissions(session) == 0


def test_an_ambiguous_assignment_needs_the_course(client, session, student_token):
    other = catalog.create_course(session, "other", "Another course")
    catalog.install_builtins(session, other, ids=["vjp"])
    accounts.set_membership(session, other, user_by_email(session, "student@example.com"), "student")
    session.commit()
    response = post_file(client, student_token)
    assert response.status_code == 400
    body = response.get_json()
    assert body["choices"] == ["demo", "other"] and "'course' field" in body["detail"]
    chosen = post_file(client, student_token, course="OTHER")  # codes are case-insensitive
    assert chosen.status_code == 202
    assert session.get(Submission, chosen.get_json()["id"]).assignment.course.code == "other"


def test_a_closed_assignment_is_409_with_the_reason(client, session, student_token):
    vjp = assignment_in(session, "demo", "vjp")
    vjp.due_at = utcnow() - dt.timedelta(days=10)  # cutoff 3 days: closed 7 days ago
    session.commit()
    response = post_file(client, student_token)
    assert response.status_code == 409
    assert response.get_json()["detail"].startswith("Late submissions closed at")
    vjp.late_cutoff_days = 0
    session.commit()
    assert "late submissions are not accepted" in post_file(client, student_token).get_json()["detail"]
    vjp.due_at, vjp.open_at = None, utcnow() + dt.timedelta(days=1)
    session.commit()
    assert post_file(client, student_token).get_json()["detail"].startswith("This assignment opens at")
    assert count_submissions(session) == 0


def test_the_submission_limit_is_409_with_the_reason(client, session, student_token):
    assignment_in(session, "demo", "vjp").max_submissions = 1
    session.commit()
    assert post_file(client, student_token).status_code == 202
    refused = post_file(client, student_token)
    assert refused.status_code == 409
    assert refused.get_json()["detail"] == "You have used all 1 submissions for this assignment."
    assert count_submissions(session) == 1


def test_the_student_is_locked_and_counted_only_under_a_limit(app, client, session, student_token):
    """The lock that keeps concurrent submissions from racing past the limit, and the count,
    cost two round trips per submission: without a limit there is nothing to enforce."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    vjp = assignment_in(session, "demo", "vjp")
    event.listen(app.extensions["grader.engine"], "before_cursor_execute", seen)
    try:
        for limit in (None, 5):
            vjp.max_submissions = limit
            session.commit()
            statements.clear()
            assert post_file(client, student_token).status_code == 202
            locks = [s for s in statements if s.startswith("UPDATE users SET id=users.id")]
            counts = [s for s in statements if s.startswith("SELECT count(submissions.id)")]
            assert (len(locks), len(counts)) == ((0, 0) if limit is None else (1, 1)), statements
    finally:
        event.remove(app.extensions["grader.engine"], "before_cursor_execute", seen)
    assert count_submissions(session) == 2


def test_submitting_is_rate_limited_per_user(sqlite_url, tmp_path):
    from grader.web import create_app

    app = create_app(settings_for(sqlite_url, tmp_path, submit_rate="3 per minute"), enqueue=Enqueued())
    with make_sessionmaker(app.extensions["grader.engine"])() as s:
        first, second = token_for(s, "student@example.com"), token_for(s, "student@example.com")
        ta = token_for(s, "ta@example.com")
    client = app.test_client()
    assert [post_file(client, first).status_code for _ in range(3)] == [202] * 3
    limited = post_file(client, first)
    assert limited.status_code == 429 and limited.get_json()["error"] == "Too Many Requests"
    assert "Retry-After" in limited.headers
    assert post_file(client, second).status_code == 429  # the same user with another token
    assert post_file(client, ta).status_code == 202  # someone else is not affected
    assert client.get(f"{API}/me", headers=bearer(first)).status_code == 200  # reading is not limited
    app.extensions["grader.engine"].dispose()


# --- reading a submission -------------------------------------------------------------------


def test_a_queued_submission(client, student_token):
    sid = post_file(client, student_token).get_json()["id"]
    response = client.get(f"{API}/submissions/{sid}", headers=bearer(student_token))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == sid and body["status"] == "queued"
    assert body["score"] is None and body["result"] is None and body["final_score"] is None
    assert body["max_score"] == 8.0 and body["assignment"] == "vjp" and body["course"] == "demo"
    assert body["days_late"] == 0 and body["counts"] is False
    assert dt.datetime.fromisoformat(body["submitted_at"]).tzinfo is not None


def test_a_graded_submission_carries_the_graders_result(client, session, student_token):
    sid = post_file(client, student_token, data=WRONG_VJP.read_bytes()).get_json()["id"]
    result = grade_now(session, sid)
    body = client.get(f"{API}/submissions/{sid}", headers=bearer(student_token)).get_json()
    assert body["status"] == "graded"
    # What `grader grade --json` prints, less the seed and run time: with the seed and the
    # spec a student could regenerate the hidden trials. Staff get both.
    public = {k: v for k, v in result.items() if k not in ("seed", "timing")}
    assert body["result"] == public
    assert "seed" not in body["result"] and "timing" not in body["result"]
    assert body["score"] == result["score"] == 5.5 and body["max_score"] == 8.0
    assert body["final_score"] == 5.5 and body["counts"] is True
    assert body["graded_at"] is not None

    later = post_file(client, student_token, data=CORRECT_VJP.read_bytes()).get_json()["id"]
    grade_now(session, later)
    assert client.get(f"{API}/submissions/{sid}", headers=bearer(student_token)).get_json()["counts"] is False
    newest = client.get(f"{API}/submissions/{later}", headers=bearer(student_token)).get_json()
    assert newest["counts"] is True and newest["score"] == 8.0


def test_a_late_submission_shows_the_penalty(client, session):
    vjp = assignment_in(session, "demo", "vjp")
    student = user_by_email(session, "student@example.com")
    late = submissions.create_submission(
        session, vjp, student, CORRECT_VJP.read_bytes(), "late.py", via="api", now=vjp.due_at + dt.timedelta(days=1, hours=2)
    )
    session.commit()
    grade_now(session, late.id)
    token = token_for(session, "student@example.com")
    body = client.get(f"{API}/submissions/{late.id}", headers=bearer(token)).get_json()
    assert body["days_late"] == 2 and body["score"] == 8.0
    assert body["final_score"] == pytest.approx(8.0 * 0.8)


def test_regrading_hides_the_superseded_score(client, session, student_token):
    sid = post_file(client, student_token, data=CORRECT_VJP.read_bytes()).get_json()["id"]
    grade_now(session, sid)
    submissions.requeue_for_regrade(session, [sid])
    session.commit()
    body = client.get(f"{API}/submissions/{sid}", headers=bearer(student_token)).get_json()
    assert body["status"] == "queued" and body["score"] is None and body["result"] is None


def test_a_submission_that_could_not_be_graded(client, session, student_token, ta_token):
    sid = post_file(client, student_token).get_json()["id"]
    held = submissions.claim(session, sid)
    submissions.fail(session, held, "spec v1 broke: trial generation failed for relu_backward")
    own = client.get(f"{API}/submissions/{sid}", headers=bearer(student_token)).get_json()
    assert own["status"] == "error" and own["score"] is None
    assert "could not be graded" in own["error"] and "spec v1" not in json.dumps(own)
    staff = client.get(f"{API}/submissions/{sid}", headers=bearer(ta_token)).get_json()
    assert staff["error"].startswith("spec v1 broke")


def test_students_see_only_their_own_submissions(client, session, student_token, ta_token):
    accounts.create_user(session, "other@example.com", password="other-pass-1")
    accounts.set_membership(session, session.scalar(select(Course)), user_by_email(session, "other@example.com"), "student")
    session.commit()
    other_token = token_for(session, "other@example.com")
    sid = post_file(client, student_token).get_json()["id"]
    assert client.get(f"{API}/submissions/{sid}", headers=bearer(other_token)).status_code == 404
    assert client.get(f"{API}/submissions/{sid}", headers=bearer(ta_token)).status_code == 200
    assert client.get(f"{API}/submissions/{sid + 1000}", headers=bearer(student_token)).status_code == 404
    missing = client.get(f"{API}/submissions/{sid}", headers=bearer(other_token)).get_json()
    assert missing == client.get(f"{API}/submissions/{sid + 1000}", headers=bearer(other_token)).get_json()


# --- PostgreSQL ----------------------------------------------------------------------------


def test_the_main_flow_on_postgresql(pg_url, tmp_path):
    from grader.web import create_app

    enqueued = Enqueued()
    app = create_app(settings_for(pg_url, tmp_path), enqueue=enqueued)
    try:
        with make_sessionmaker(app.extensions["grader.engine"])() as session:
            assert app.extensions["grader.engine"].dialect.name == "postgresql"
            student = token_for(session, "student@example.com")
            ta = token_for(session, "ta@example.com")
            client = app.test_client()
            assert client.get(f"{API}/me", headers=bearer(student)).get_json()["email"] == "student@example.com"
            listed = client.get(f"{API}/assignments", headers=bearer(student)).get_json()["assignments"]
            assert {a["id"] for a in listed} == {"gates", "vjp", "mlp", "bp4"}

            created = post_file(client, student, data=WRONG_VJP.read_bytes())
            assert created.status_code == 202
            sid = created.get_json()["id"]
            assert enqueued.ids == [sid]
            result = grade_now(session, sid)
            body = client.get(f"{API}/submissions/{sid}", headers=bearer(student)).get_json()
            assert body["status"] == "graded" and body["score"] == 5.5
            assert body["result"] == {k: v for k, v in result.items() if k not in ("seed", "timing")}
            staff_view = client.get(f"{API}/submissions/{sid}", headers=bearer(ta))
            assert staff_view.status_code == 200 and staff_view.get_json()["result"] == result  # staff get the seed

            assert post_file(client, student, assignment="nope").status_code == 404
            assignment_in(session, "demo", "vjp").max_submissions = 1
            session.commit()
            assert post_file(client, student).status_code == 409
    finally:
        app.extensions["grader.engine"].dispose()


# --- the `grader submit` client over real HTTP -----------------------------------------------


def run_cli(*args: str, env: Optional[dict[str, str]] = None) -> Any:
    from grader.cli import main

    return CliRunner().invoke(main, ["submit", *args], env=env or {}, catch_exceptions=False)


@pytest.fixture
def served(app, session):
    """The app over HTTP with a grading worker; yields (base URL, student token, worker)."""
    worker = GradingWorker(app.extensions["grader.engine"])
    app.extensions["grader.enqueue"] = worker
    token = token_for(session, "student@example.com")
    with live_server(app) as url:
        yield url, token, worker
    worker.join()


def test_cli_submits(served, session):
    url, token, worker = served
    result = run_cli("vjp", str(CORRECT_VJP), env={"GRADER_URL": url, "GRADER_TOKEN": token})
    assert result.exit_code == 0, result.output
    sid = session.scalar(select(func.max(Submission.id)))
    assert f"submission {sid}, queued" in result.output
    assert f"/submissions/{sid}" in result.output
    assert token not in result.output
    worker.join()


def test_cli_waits_for_the_grade(served, session):
    url, token, worker = served
    result = run_cli("vjp", str(WRONG_VJP), "--wait", "--url", url, "--token", token)
    assert result.exit_code == 0, result.output
    assert "Score: 5.5 / 8" in result.output
    assert "[PART] matmul_backward: 1.5/3" in result.output and "That is the transposed shape" in result.output
    assert token not in result.output


def test_cli_waits_and_prints_json(served, session):
    url, token, worker = served
    result = run_cli("vjp", str(CORRECT_VJP), "--wait", "--json", env={"GRADER_URL": url + "/", "GRADER_TOKEN": token})
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["status"] == "graded" and body["score"] == 8.0
    stored = session.get(Submission, body["id"])
    session.refresh(stored)
    assert body["result"] == {k: v for k, v in stored.result.items() if k not in ("seed", "timing")}


def test_cli_reports_late_scoring(served, session):
    url, token, worker = served
    vjp = assignment_in(session, "demo", "vjp")
    vjp.due_at = utcnow() - dt.timedelta(hours=1)
    session.commit()
    result = run_cli("vjp", str(CORRECT_VJP), "--wait", env={"GRADER_URL": url, "GRADER_TOKEN": token})
    assert result.exit_code == 0, result.output
    assert "Submitted 1 day late: 8 / 8 counts as 7.2 / 8 after the late policy." in result.output


def test_cli_api_errors_exit_1_with_the_message(served, session):
    url, token, _ = served
    env = {"GRADER_URL": url, "GRADER_TOKEN": token}
    unknown = run_cli("nope", str(CORRECT_VJP), env=env)
    assert unknown.exit_code == 1
    assert "the service refused (404 Not Found): There is no assignment 'nope'" in unknown.output

    bad = run_cli("vjp", str(CORRECT_VJP), env={**env, "GRADER_TOKEN": "bpg_wrong"})
    assert bad.exit_code == 1 and "401 Unauthorized" in bad.output and "bpg_wrong" not in bad.output

    not_py = Path(session.bind.url.database).parent / "notes.txt"
    not_py.write_text("hello")
    assert "is not a .py file" in run_cli("vjp", str(not_py), env=env).output

    other = catalog.create_course(session, "other", "Another course")
    catalog.install_builtins(session, other, ids=["vjp"])
    accounts.set_membership(session, other, user_by_email(session, "student@example.com"), "student")
    session.commit()
    ambiguous = run_cli("vjp", str(CORRECT_VJP), env=env)
    assert ambiguous.exit_code == 1 and "choose one with --course: demo, other" in ambiguous.output
    assert run_cli("vjp", str(CORRECT_VJP), "--course", "other", env=env).exit_code == 0


def test_cli_grading_error_exits_1(app, session):
    sessions = make_sessionmaker(app.extensions["grader.engine"])

    def broken_worker(ids: Any) -> None:
        with sessions() as s:
            for sid in ids:
                submissions.fail(s, submissions.claim(s, sid), "the sandbox is missing")

    app.extensions["grader.enqueue"] = broken_worker
    token = token_for(session, "student@example.com")
    with live_server(app) as url:
        result = run_cli("vjp", str(CORRECT_VJP), "--wait", env={"GRADER_URL": url, "GRADER_TOKEN": token})
    assert result.exit_code == 1
    assert "could not be graded: This submission could not be graded" in result.output
    assert "sandbox is missing" not in result.output  # the reason is for staff


def test_cli_gives_up_waiting_with_exit_2(app, session):
    token = token_for(session, "student@example.com")  # the app's enqueue hook grades nothing
    with live_server(app) as url:
        result = run_cli("vjp", str(CORRECT_VJP), "--wait", "--wait-timeout", "1", env={"GRADER_URL": url, "GRADER_TOKEN": token})
    assert result.exit_code == 2
    assert "is still queued after 1 s" in result.output


def test_cli_usage_and_connection_errors_exit_2(tmp_path):
    env = {"GRADER_URL": f"http://127.0.0.1:{free_port()}", "GRADER_TOKEN": "bpg_x"}
    refused = run_cli("vjp", str(CORRECT_VJP), env=env)
    assert refused.exit_code == 2 and "cannot reach http://127.0.0.1:" in refused.output

    no_token = run_cli("vjp", str(CORRECT_VJP), env={"GRADER_URL": env["GRADER_URL"]})
    assert no_token.exit_code == 2 and "no API token: set GRADER_TOKEN" in no_token.output
    no_url = run_cli("vjp", str(CORRECT_VJP), env={"GRADER_TOKEN": "bpg_x"})
    assert no_url.exit_code == 2 and "set GRADER_URL" in no_url.output
    bad_url = run_cli("vjp", str(CORRECT_VJP), "--url", "grader.example.edu", env={"GRADER_TOKEN": "bpg_x"})
    assert bad_url.exit_code == 2 and "is not a web address" in bad_url.output
    missing = run_cli("vjp", str(tmp_path / "nope.py"), env=env)
    assert missing.exit_code == 2 and "cannot read" in missing.output
    assert run_cli("vjp", env=env).exit_code == 2  # click's usage error


def test_cli_times_out_on_a_silent_server():
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = run_cli("vjp", str(CORRECT_VJP), "--timeout", "1", env={"GRADER_URL": url, "GRADER_TOKEN": "bpg_x"})
    assert result.exit_code == 2 and "did not answer" in result.output


def test_cli_does_not_follow_redirects_with_the_token():
    """urllib forwards the Authorization header on redirects, even to another host: the
    client refuses them, so a token never goes where it was not sent."""
    seen: list[Optional[str]] = []

    def target(environ: Any, start_response: Any) -> list[bytes]:
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"id": 1, "status": "queued"}']

    with contextlib.ExitStack() as stack:
        target_url = stack.enter_context(live_server(target))

        def redirector(environ: Any, start_response: Any) -> list[bytes]:
            start_response("307 Temporary Redirect", [("Location", target_url + environ["PATH_INFO"])])
            return [b""]

        url = stack.enter_context(live_server(redirector))
        result = run_cli("vjp", str(CORRECT_VJP), env={"GRADER_URL": url, "GRADER_TOKEN": "bpg_secret"})
    assert result.exit_code == 2 and "redirects to" in result.output
    assert seen == []


def test_cli_reports_a_server_that_is_not_a_grader():
    def html(environ: Any, start_response: Any) -> list[bytes]:
        start_response("502 Bad Gateway", [("Content-Type", "text/html")])
        return [b"<html><body>502 Bad Gateway</body></html>"]

    with live_server(html) as url:
        result = run_cli("vjp", str(CORRECT_VJP), env={"GRADER_URL": url, "GRADER_TOKEN": "bpg_x"})
    assert result.exit_code == 2 and "did not answer like a grader API (HTTP 502" in result.output


def test_client_urls_and_warnings():
    from grader.client import ApiClient, ClientFailure, encode_multipart

    api = ApiClient.for_url("https://grader.example.edu/course-tools/api/v1/", "bpg_t")
    assert api.base == "https://grader.example.edu/course-tools"
    assert api.submission_url(7) == "https://grader.example.edu/course-tools/api/v1/submissions/7"
    assert not api.insecure
    assert ApiClient.for_url("http://grader.example.edu", "bpg_t").insecure
    assert not ApiClient.for_url("http://localhost:5000", "bpg_t").insecure
    with pytest.raises(ClientFailure):
        ApiClient.for_url("http://x.example/?a=1", "bpg_t")
    with pytest.raises(ClientFailure):
        ApiClient.for_url("http://x.example", "bpg t")
    body, content_type = encode_multipart({"assignment": "vjp"}, "file", 'we"ird\r\nname.py', b"x = 1\n")
    assert content_type.startswith("multipart/form-data; boundary=grader-")
    assert b'filename="we%22irdname.py"' in body and b"\r\nx = 1\n\r\n" in body


def test_cli_downloads_the_failing_visible_trials(served, session, tmp_path):
    import zipfile

    url, token, worker = served
    folder = tmp_path / "trials"
    result = run_cli("vjp", str(WRONG_VJP), "--wait", "--download", str(folder), env={"GRADER_URL": url, "GRADER_TOKEN": token})
    assert result.exit_code == 0, result.output
    saved = sorted(folder.iterdir())
    assert [p.name.split("-", 1)[1] for p in saved] == ["affine_backward-failing-trials.zip", "matmul_backward-failing-trials.zip"]
    with zipfile.ZipFile(saved[0]) as archive:
        names = archive.namelist()
    assert any(n.endswith(".npz") for n in names) and any(n.endswith(".py") for n in names)
    assert f"Saved {saved[0]}" in result.output and token not in result.output
    # Without --wait there is nothing to download yet: said at once, nothing submitted.
    early = run_cli("vjp", str(WRONG_VJP), "--download", str(folder), env={"GRADER_URL": url, "GRADER_TOKEN": token})
    assert early.exit_code == 2 and "--download needs --wait" in early.output


def test_client_downloads_only_api_paths_under_its_own_address(monkeypatch):
    from grader.client import ApiClient, ClientFailure

    api = ApiClient.for_url("https://grader.example.edu/course-tools", "bpg_t")
    seen = []
    monkeypatch.setattr(ApiClient, "request", lambda self, method, url, **kw: seen.append(url) or b"zip")
    assert api.download("https://elsewhere.example/course-tools/api/v1/submissions/7/trials/relu_backward/repro.zip") == b"zip"
    assert seen == ["https://grader.example.edu/course-tools/api/v1/submissions/7/trials/relu_backward/repro.zip"]
    for bad in ("https://x/api/v1/me", "https://x/api/v1/submissions/7/trials/../../me/repro.zip", "/etc/passwd"):
        with pytest.raises(ClientFailure):
            api.download(bad)
