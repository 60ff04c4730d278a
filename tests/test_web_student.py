"""The student pages: courses, assignment pages with handouts, submitting (upload and
paste), the submission page with its live status and result, and who may see what."""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path
from typing import Any, Optional

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from grader.grade import grade_bytes
from grader.store import accounts, catalog
from grader.store.db import make_sessionmaker, utcnow
from grader.store.models import Assignment, Course, Extension, Submission, User
from grader.store.submissions import claim, create_submission, fail, finish
from grader.trials import make_trials
from grader.web.render import fmt_shape, latex_to_mathml, render_markdown, source_lines
import service_fixtures
from service_fixtures import EMAILS, Enqueued, csrf_token, login

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "tests" / "submissions"
CORRECT_VJP = (SUBMISSIONS / "vjp" / "correct_plain.py").read_bytes()
TRANSPOSED_VJP = SUBMISSIONS / "vjp" / "wrong_transposed_dW.py"


# ---------------------------------------------------------------------------------------
# helpers


def _assignment(session: Session, slug: str = "vjp", code: str = "demo") -> Assignment:
    found = session.scalar(
        select(Assignment).join(Course, Course.id == Assignment.course_id).where(Course.code == code, Assignment.slug == slug)
    )
    assert found is not None
    return found


def _user(session: Session, role: str = "student") -> User:
    found = accounts.find_user(session, EMAILS[role])
    assert found is not None
    return found


def _page(client: Any, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def _submit(client: Any, slug: str = "vjp", course: str = "demo", **fields: Any) -> Any:
    """POST the submit form the way a browser does (multipart, an empty file part when no
    file is chosen)."""
    data: dict[str, Any] = {"csrf_token": csrf_token(client, f"/courses/{course}/assignments/{slug}")}
    data["file"] = fields.pop("file", (io.BytesIO(b""), ""))
    data["code"] = fields.pop("code", "")
    data.update(fields)
    return client.post(f"/courses/{course}/assignments/{slug}/submit", data=data, content_type="multipart/form-data")


def _rows(session: Session) -> list[Submission]:
    session.expire_all()
    return list(session.scalars(select(Submission).order_by(Submission.id)))


def _store(
    session: Session,
    data: bytes,
    role: str = "student",
    slug: str = "vjp",
    filename: str = "solution.py",
    now: Optional[dt.datetime] = None,
    who: Optional[User] = None,
) -> int:
    sub = create_submission(
        session, _assignment(session, slug), who or _user(session, role), data, filename, now=now, enforce=False
    )
    session.commit()
    return sub.id


def _grade(session: Session, submission_id: int) -> dict[str, Any]:
    """Grade a stored row as the worker does: the real core, in the sandbox, under a lease."""
    row = session.get(Submission, submission_id)
    assert row is not None
    result = grade_bytes(catalog.loaded_spec(row.version), row.source, seed=row.seed)
    held = claim(session, submission_id)
    assert held is not None
    assert finish(session, held, result)
    return result


def _graded(session: Session, data: bytes, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    sid = _store(session, data, **kwargs)
    return sid, _grade(session, sid)


def _second_student(session: Session, email: str = "other@example.com") -> User:
    other = accounts.create_user(session, email, role="student", password="other-pass-1", name="Other Student")
    course = session.scalar(select(Course).where(Course.code == "demo"))
    accounts.set_membership(session, course, other, "student")
    session.commit()
    return other


# ---------------------------------------------------------------------------------------
# home


def test_home_lists_published_assignments_with_dates_policy_and_submissions(client, session):
    vjp = _assignment(session)
    vjp.max_submissions = 5
    _assignment(session, "bp4").published = False
    session.commit()
    login(client, "student")
    body = _page(client, "/")
    assert "Backpropagation (demo course)" in body
    assert 'href="/courses/demo/assignments/vjp"' in body
    assert 'href="/courses/demo/assignments/bp4"' not in body  # unpublished: students do not see it
    assert "10% off per day late, late submissions accepted for 3 day(s)" in body
    assert vjp.due_at.strftime("%Y-%m-%d %H:%M UTC") in body
    assert "5 left" in body and "none yet" in body


def test_home_shows_latest_status_and_the_score_that_counts(client, session):
    first, _ = _graded(session, TRANSPOSED_VJP.read_bytes())
    second, result = _graded(session, CORRECT_VJP)
    queued = _store(session, b"def relu_backward(dout, x):\n    return dout\n")
    login(client, "student")
    body = _page(client, "/")
    row = body[body.index('href="/courses/demo/assignments/vjp"') :].split("</tr>", 1)[0]
    assert f"#{queued}" in row and "status-queued" in row  # the latest submission
    assert "3 used" in row
    assert result["score"] == result["max_score"] == 8
    assert "<strong>8</strong> / 8" in row  # the latest graded one counts, not the queued one


def test_home_shows_an_extension_as_the_students_own_due_date(client, session):
    vjp = _assignment(session)
    later = vjp.due_at + dt.timedelta(days=4)
    session.add(Extension(assignment_id=vjp.id, user_id=_user(session).id, due_at=later))
    session.commit()
    login(client, "student")
    body = _page(client, "/")
    assert later.strftime("%Y-%m-%d %H:%M UTC") in body
    assert "extended for you" in body


def test_home_for_staff_links_to_gradebook_and_settings(app, client, session):
    _assignment(session, "bp4").published = False
    session.commit()
    login(client, "instructor")
    body = _page(client, "/")
    assert 'href="/courses/demo/assignments/bp4"' in body and "not published" in body
    assert ("Gradebook" in body) == ("gradebook.course" in app.view_functions)
    assert ("Course settings" in body) == ("instructor.course" in app.view_functions)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "ta")
    body = _page(client, "/")
    assert "Course settings" not in body  # instructors only


def test_home_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


# ---------------------------------------------------------------------------------------
# the assignment page


def test_assignment_page_renders_handout_math_and_facts(client, session):
    vjp = _assignment(session)
    vjp.max_submissions = 3
    session.commit()
    _store(session, CORRECT_VJP)
    login(client, "student")
    body = _page(client, "/courses/demo/assignments/vjp")
    assert "<h1>Vector-Jacobian products (ReLU, matmul, affine)</h1>" in body
    assert body.count("<math") > 20  # the handout's formulas, as MathML
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in body
    handout = body[body.index('id="handout"') :]
    assert "$$" not in handout and "\\frac" not in handout  # no LaTeX left over
    assert "math-error" not in handout
    assert '<code class="language-' in handout or "<code>" in handout
    assert "10% off per day late" in body
    assert "1 used" in body and "2 of 3 left" in body
    assert 'href="/courses/demo/assignments/vjp/starter.py"' in body
    assert 'enctype="multipart/form-data"' in body and 'name="code"' in body and 'name="file"' in body


def test_unpublished_or_unknown_assignments_are_404_for_students(client, session):
    _assignment(session, "bp4").published = False
    session.commit()
    login(client, "student")
    assert client.get("/courses/demo/assignments/bp4").status_code == 404
    assert client.get("/courses/demo/assignments/bp4/starter.py").status_code == 404
    assert client.get("/courses/demo/assignments/nope").status_code == 404
    assert client.get("/courses/nope/assignments/vjp").status_code == 404


def test_staff_see_unpublished_assignments_and_may_submit_to_them(client, session, enqueued):
    _assignment(session, "bp4").published = False
    session.commit()
    login(client, "ta")
    body = _page(client, "/courses/demo/assignments/bp4")
    assert "not published" in body
    response = _submit(client, "bp4", code=(SUBMISSIONS / "bp4" / "correct_nielsen.py").read_text())
    assert response.status_code == 303
    assert [r.user.email for r in _rows(session)] == ["ta@example.com"]


def test_starter_download_is_an_attachment(client):
    login(client, "student")
    response = client.get("/courses/demo/assignments/vjp/starter.py")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert "starter.py" in response.headers["Content-Disposition"]
    assert response.data == (ROOT / "assignments" / "vjp" / "starter.py").read_bytes()


# ---------------------------------------------------------------------------------------
# submitting


def test_submit_by_upload_stores_the_row_enqueues_it_and_redirects(client, session, enqueued):
    login(client, "student")
    response = _submit(client, file=(io.BytesIO(CORRECT_VJP), "my_vjp.py"))
    assert response.status_code == 303
    (row,) = _rows(session)
    assert response.headers["Location"] == f"/submissions/{row.id}"
    assert row.source == CORRECT_VJP and row.filename == "my_vjp.py" and row.via == "web"
    assert row.status == "queued" and row.user.email == "student@example.com"
    assert enqueued.ids == [row.id]
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "queued for grading" in page  # the flash message


def test_submit_by_paste_stores_the_text_with_unix_line_endings(client, session, enqueued):
    login(client, "student")
    pasted = CORRECT_VJP.decode().replace("\n", "\r\n")
    response = _submit(client, code=pasted)
    assert response.status_code == 303
    (row,) = _rows(session)
    assert row.via == "paste" and row.filename == "vjp.py"
    assert row.source == CORRECT_VJP
    assert enqueued.ids == [row.id]


def test_the_row_is_committed_before_its_id_is_enqueued(app, client):
    seen: list[tuple[int, Optional[str]]] = []
    maker = make_sessionmaker(app.extensions["grader.engine"])

    def enqueue(ids: Any) -> None:
        # A worker receiving the id at this moment must find the row.
        with maker() as other:
            for sid in ids:
                row = other.get(Submission, sid)
                seen.append((sid, row.status if row else None))

    app.extensions["grader.enqueue"] = enqueue
    login(client, "student")
    assert _submit(client, code=CORRECT_VJP.decode()).status_code == 303
    assert len(seen) == 1 and seen[0][1] == "queued"


def test_a_failing_enqueue_still_keeps_the_submission(app, client, session):
    def broken(ids: Any) -> None:
        raise ConnectionError("broker down")

    app.extensions["grader.enqueue"] = broken
    login(client, "student")
    response = _submit(client, code=CORRECT_VJP.decode())
    assert response.status_code == 303
    assert [r.status for r in _rows(session)] == ["queued"]  # the sweeper will deliver it


BAD_INPUTS = [
    pytest.param({}, "Choose a .py file to upload, or paste your code", id="neither"),
    pytest.param(
        {"file": (io.BytesIO(CORRECT_VJP), "a.py"), "code": "def f(): pass"}, "also pasted code: submit one of the two", id="both"
    ),
    pytest.param({"file": (io.BytesIO(b"{}"), "work.ipynb")}, "is not a .py file", id="not-py"),
    pytest.param({"file": (io.BytesIO(b"x = 1\n" * 200_000), "big.py")}, "the limit is 1,048,576 bytes", id="too-large"),
    pytest.param({"code": "x = 1\n" * 200_000}, "The pasted code is 1,200,000 bytes; the limit is 1,048,576", id="paste-too-large"),
    pytest.param({"file": (io.BytesIO(b"x = '\xe9t\xe9'\n"), "latin1.py")}, "not valid UTF-8", id="not-utf8"),
    pytest.param({"file": (io.BytesIO("x = 1\n".encode("utf-16")), "u16.py")}, "UTF-16", id="utf16"),
    pytest.param({"file": (io.BytesIO(b"\x00\x01\x02binary"), "bin.py")}, "NUL bytes", id="binary"),
    pytest.param({"file": (io.BytesIO(b""), "empty.py")}, "is empty", id="empty-file"),
    pytest.param({"file": (io.BytesIO(b"  \n\n"), "blank.py")}, "is empty", id="blank-file"),
    pytest.param({"code": "   \r\n  "}, "The pasted code is empty", id="blank-paste"),
    pytest.param({"code": "x = 1\x00\n"}, "The pasted code contains NUL characters", id="nul-paste"),
]


@pytest.mark.parametrize("fields, message", BAD_INPUTS)
def test_bad_input_is_refused_with_a_clear_error(client, session, enqueued, fields, message):
    login(client, "student")
    response = _submit(client, **fields)
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in body
    assert 'role="alert"' in body
    assert _rows(session) == [] and enqueued.ids == []


def test_a_paste_just_under_the_limit_is_accepted(client, session, enqueued):
    # Werkzeug's default cap on a form field (500 kB) must not refuse what the limit allows.
    code = "# " + "x" * 900_000 + "\n" + CORRECT_VJP.decode()
    login(client, "student")
    assert _submit(client, code=code).status_code == 303
    assert _rows(session)[0].size == len(code.encode())


def test_an_upload_beyond_the_request_cap_is_a_form_error(client, session, enqueued):
    login(client, "student")
    response = _submit(client, file=(io.BytesIO(b"#" * (7 << 20)), "huge.py"))
    body = response.get_data(as_text=True)
    assert response.status_code == 413
    assert "The upload is too large: a submission may be at most 1,048,576 bytes" in body
    assert 'id="submit"' in body  # the assignment page, not a bare error page
    assert _rows(session) == [] and enqueued.ids == []
    token = csrf_token(client, "/courses/demo/assignments/vjp")
    for path in ("/courses/demo/assignments/nope/submit", "/courses/nope/assignments/vjp/submit"):
        response = client.post(
            path, data={"csrf_token": token, "file": (io.BytesIO(b"#" * (7 << 20)), "huge.py")}, content_type="multipart/form-data"
        )
        assert response.status_code == 404, path  # nothing about a course the user cannot see


def test_an_upload_with_a_hostile_name_is_refused_and_escaped(client, session):
    login(client, "student")
    response = _submit(client, file=(io.BytesIO(b"x = 1\n"), "<img src=x onerror=alert(1)>.txt"))
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "<img src=x" not in body and "&lt;img src=x onerror=alert(1)&gt;.txt" in body


def test_submitting_without_csrf_token_is_refused(client, session, enqueued):
    login(client, "student")
    response = client.post(
        "/courses/demo/assignments/vjp/submit",
        data={"code": CORRECT_VJP.decode()},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert _rows(session) == [] and enqueued.ids == []


def _set(session: Session, slug: str = "vjp", **values: Any) -> Assignment:
    found = _assignment(session, slug)
    for key, value in values.items():
        setattr(found, key, value)
    session.commit()
    return found


@pytest.mark.parametrize(
    "arrange, message",
    [
        pytest.param(
            lambda s, now: _set(s, due_at=now - dt.timedelta(hours=1), late_cutoff_days=0),
            "late submissions are not accepted",
            id="closed-no-late-work",
        ),
        pytest.param(
            lambda s, now: _set(s, due_at=now - dt.timedelta(days=4), late_cutoff_days=3),
            "late submissions closed at",
            id="closed-after-cutoff",
        ),
        pytest.param(
            lambda s, now: _set(s, open_at=now + dt.timedelta(days=1)),
            "this assignment opens at",
            id="not-open-yet",
        ),
        pytest.param(
            lambda s, now: (_set(s, max_submissions=1), _store(s, CORRECT_VJP)),
            "you have used all 1 submissions",
            id="limit-reached",
        ),
    ],
)
def test_refused_submissions_show_the_reason_as_a_form_error(client, session, enqueued, arrange, message):
    arrange(session, utcnow())
    before = len(_rows(session))
    login(client, "student")
    page = _page(client, "/courses/demo/assignments/vjp")
    assert "Submissions are not accepted now" in page and message in page
    response = _submit(client, code=CORRECT_VJP.decode())
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Not accepted: " in body and message in body.split("Not accepted: ", 1)[1]
    assert len(_rows(session)) == before and enqueued.ids == []


def test_an_extension_reopens_a_closed_assignment(client, session, enqueued):
    vjp = _set(session, due_at=utcnow() - dt.timedelta(hours=1), late_cutoff_days=0)
    session.add(Extension(assignment_id=vjp.id, user_id=_user(session).id, due_at=utcnow() + dt.timedelta(days=1)))
    session.commit()
    login(client, "student")
    assert _submit(client, code=CORRECT_VJP.decode()).status_code == 303


def test_submissions_are_rate_limited_per_user(sqlite_url, tmp_path, session):
    from grader.web import create_app

    app = create_app(service_fixtures.test_settings(sqlite_url, tmp_path, submit_rate="2 per minute"), enqueue=Enqueued())
    try:
        with make_sessionmaker(app.extensions["grader.engine"])() as s:
            _second_student(s)
        first = app.test_client()
        login(first, "student")
        codes = [_submit(first, code=CORRECT_VJP.decode()).status_code for _ in range(3)]
        assert codes == [303, 303, 429]
        other = app.test_client()
        login(other, "other@example.com", "other-pass-1")
        assert _submit(other, code=CORRECT_VJP.decode()).status_code == 303  # not the same budget
    finally:
        app.extensions["grader.engine"].dispose()


def test_submit_and_read_the_result_on_postgresql(pg_url, tmp_path):
    """The same path on the production database (JSONB results, row locks on submit)."""
    from grader.web import create_app

    enqueued = Enqueued()
    app = create_app(service_fixtures.test_settings(pg_url, tmp_path), enqueue=enqueued)
    try:
        client = app.test_client()
        login(client, "student")
        response = _submit(client, file=(io.BytesIO(TRANSPOSED_VJP.read_bytes()), "vjp.py"))
        assert response.status_code == 303
        with make_sessionmaker(app.extensions["grader.engine"])() as s:
            (row,) = _rows(s)
            assert enqueued.ids == [row.id]
            _grade(s, row.id)
        body = _page(client, response.headers["Location"])
        assert "That is the transposed shape" in body and "status-graded" in body
        assert "<strong>5.5</strong> / 8" in _page(client, "/")
    finally:
        app.extensions["grader.engine"].dispose()


# ---------------------------------------------------------------------------------------
# the submission page


def test_queued_submission_page_follows_the_status_with_and_without_javascript(client, session):
    sid = _store(session, CORRECT_VJP)
    login(client, "student")
    response = client.get(f"/submissions/{sid}")
    body = response.get_data(as_text=True)
    assert 'data-status="queued"' in body
    assert f'data-status-url="/submissions/{sid}/status.json"' in body
    assert f'<a class="refresh" href="/submissions/{sid}">Refresh</a>' in body
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in body
    assert 'src="/static/app.js"' in body
    assert "<script>" not in body  # no inline scripts (the CSP forbids them)
    assert response.headers["Cache-Control"] == "no-store"

    status = client.get(f"/submissions/{sid}/status.json")
    assert status.status_code == 200 and status.headers["Cache-Control"] == "no-store"
    assert status.get_json() == {
        "id": sid, "status": "queued", "done": False, "score": None, "max_score": None,
        "final_score": None, "days_late": None, "url": f"/submissions/{sid}",
    }
    held = claim(session, sid)
    assert held is not None
    assert client.get(f"/submissions/{sid}/status.json").get_json()["status"] == "running"
    assert 'data-status="running"' in _page(client, f"/submissions/{sid}")


def test_graded_submission_shows_feedback_per_function_and_trial(client, session):
    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    login(client, "student")
    body = _page(client, f"/submissions/{sid}")
    assert "refresh" not in body.lower().split("<main>", 1)[1]  # done: no refreshing
    assert "status-graded" in body
    matmul = next(p for p in result["parts"] if p["function"] == "matmul_backward")
    # Feedback is shown as written, line breaks included.
    assert "dx: correct (1.5/1.5 points)\ndW: wrong on 11 of 12 trials (0/1.5 points)" in body
    assert "That is the transposed shape" in body
    assert 'id="fn-matmul_backward"' in body and 'id="fn-matmul_backward-t0"' in body
    # The visible trials: label, shapes and dims; which outputs passed.
    trial0 = matmul["trials"][0]
    assert "random shapes, all dimensions distinct" in body
    for name, shape in trial0["shapes"].items():
        assert f"<code>{name}</code> {fmt_shape(shape)}" in body
    assert f"N={trial0['dims']['N']}" in body
    assert '<code>dW</code> <span class="failed">failed</span>' in body
    assert '<code>dx</code> <span class="passed">passed</span>' in body
    # Hidden trials: summarised, never their shapes.
    assert "hidden trial" in body and "dW has the wrong shape; expected (D, M)" in body
    # The score, the late policy and which submission counts.
    assert f"<strong>{result['score']:g}</strong> / {result['max_score']:g}" in body
    assert "This is the submission that counts" in body
    # The code with line numbers, and no staff-only facts for the student.
    assert '<tr id="L1"><td class="ln"><a href="#L1">1</a></td>' in body
    assert "dW = dout.T @ x  # BUG: this is dW.T" in body
    assert "For course staff" not in body and str(result["seed"]) not in body

    status = client.get(f"/submissions/{sid}/status.json").get_json()
    assert status["status"] == "graded" and status["done"] is True
    assert status["score"] == result["score"] and status["final_score"] == result["score"]


def test_a_late_submission_shows_the_penalty_and_the_final_score(client, session):
    vjp = _set(session, due_at=utcnow() - dt.timedelta(days=1, hours=12), late_cutoff_days=3, late_penalty_per_day=0.1)
    login(client, "student")
    response = _submit(client, code=CORRECT_VJP.decode())
    assert response.status_code == 303
    (row,) = _rows(session)
    _grade(session, row.id)
    body = _page(client, f"/submissions/{row.id}")
    assert "<dt>Days late</dt><dd>2</dd>" in body
    assert "10% per day × 2 → 8 becomes 6.4" in body
    assert "<dt>Final score</dt><dd><strong>6.4</strong> / 8</dd>" in body
    history = _page(client, "/courses/demo/assignments/vjp")
    assert "8 before the late penalty (2 days late)" in history
    assert vjp.id  # the assignment row was used


def test_history_marks_the_submission_that_counts(client, session):
    old, _ = _graded(session, CORRECT_VJP)
    new, _ = _graded(session, TRANSPOSED_VJP.read_bytes())
    pending = _store(session, CORRECT_VJP)
    login(client, "student")
    body = _page(client, "/courses/demo/assignments/vjp")
    table = body[body.index('id="history"') : body.index('id="handout"')]
    rows = re.findall(r"<tr( class=\"counts\")?>\s*<td><a href=\"/submissions/(\d+)\">", table)
    assert [int(i) for _, i in rows] == [pending, new, old]  # newest first
    assert [bool(c) for c, _ in rows] == [False, True, False]  # the latest graded one counts
    assert "status-queued" in table
    older = _page(client, f"/submissions/{old}")
    assert f'a later submission counts (<a href="/submissions/{new}">#{new}</a>)' in older


def test_hidden_trial_inputs_never_reach_the_page(client, session):
    leak = b'''import numpy as np


def relu_backward(dout, x):
    print("LEAK" + repr(np.shape(x)))
    if np.size(x) > 50000:
        raise ValueError("LEAK" + repr(np.shape(x)))
    return dout * (np.asarray(x) > 0)


def matmul_backward(dout, x, W):
    print("LEAK" + repr(x.shape) + repr(W.shape))
    if x.size > 50000:
        raise ValueError("LEAK" + repr(x.shape) + repr(W.shape))
    return dout @ W.T, x.T @ dout


def affine_backward(dout, x, W, b):
    print("LEAK" + repr(x.shape) + repr(W.shape))
    raise ValueError("LEAK" + repr(x.shape) + repr(W.shape))
'''
    sid, result = _graded(session, leak)
    row = session.get(Submission, sid)
    spec = catalog.loaded_spec(row.version)
    login(client, "student")
    body = _page(client, f"/submissions/{sid}")

    def said(fn_name: str, shapes: dict[str, Any]) -> str:
        x = repr(tuple(shapes["x"]))
        return "LEAK" + x + (repr(tuple(shapes["W"])) if fn_name != "relu_backward" else "")

    visible, hidden = set(), set()
    for fn in spec.functions:
        for trial in make_trials(spec, fn, row.seed):
            (hidden if trial.hidden else visible).add(said(fn.name, trial.arg_shapes))
    assert all(v in body for v in visible)  # what visible trials print and raise is shown...
    checked = [h for h in hidden if not any(h in v for v in visible)]
    assert len(checked) >= 8
    for h in checked:
        assert h not in body  # ...what hidden trials print or raise is not
    assert "(128, 160)" not in body and "(160, 240)" not in body  # the large hidden inputs
    assert "raised ValueError on this hidden trial (details of hidden trials are not shown)" in body
    assert "[output printed during hidden trials is not shown]" in body


def test_code_and_printed_output_are_escaped(client, session):
    source = b'''# <script>alert("code")</script>
import numpy as np


def relu_backward(dout, x):
    print('<script>alert("printed")</script>')
    return dout * (np.asarray(x) > 0)
'''
    sid, result = _graded(session, source, filename="<img src=x onerror=alert(1)>.py")
    assert "<script>" in result["parts"][0]["printed"]  # the raw output really holds the tag
    login(client, "student")
    body = _page(client, f"/submissions/{sid}")
    assert "<script>alert" not in body and "<img src=x" not in body
    assert "# &lt;script&gt;alert(&#34;code&#34;)&lt;/script&gt;" in body
    assert "&lt;script&gt;alert(&#34;printed&#34;)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(1)&gt;.py" in body
    for path in ("/", "/courses/demo/assignments/vjp"):
        assert "<img src=x" not in _page(client, path)


def test_download_returns_the_submitted_bytes(client, session):
    data = b"# caf\xc3\xa9\r\ndef f():\r\n    return 1\r\n"
    sid = _store(session, data, filename="my file.py")
    login(client, "student")
    response = client.get(f"/submissions/{sid}/download")
    assert response.status_code == 200 and response.data == data
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert "my file.py" in response.headers["Content-Disposition"] or "my%20file.py" in response.headers["Content-Disposition"]
    body = _page(client, f"/submissions/{sid}")
    assert '<tr id="L3"><td class="ln"><a href="#L3">3</a></td><td class="src"><code>    return 1</code>' in body
    assert 'id="L4"' not in body


def test_another_students_submission_is_404(client, session):
    sid = _store(session, CORRECT_VJP)
    _second_student(session)
    login(client, "other@example.com", "other-pass-1")
    for path in (f"/submissions/{sid}", f"/submissions/{sid}/status.json", f"/submissions/{sid}/download"):
        assert client.get(path).status_code == 404, path
    assert client.get("/submissions/999999").status_code == 404
    assert client.get("/submissions/999999/status.json").status_code == 404


def test_staff_of_another_course_cannot_see_a_submission(client, session):
    sid = _store(session, CORRECT_VJP)
    other_course = catalog.create_course(session, "other", "Another course")
    ta = accounts.create_user(session, "ta2@example.com", role="ta", password="ta2-pass-12")
    accounts.set_membership(session, other_course, ta, "ta")
    session.commit()
    login(client, "ta2@example.com", "ta2-pass-12")
    assert client.get(f"/submissions/{sid}").status_code == 404


def test_staff_see_the_student_seed_and_spec_version(app, client, session):
    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    login(client, "ta")
    body = _page(client, f"/submissions/{sid}")
    assert "For course staff" in body
    assert "student@example.com" in body and "Demo Student" in body
    assert f"<code>{result['seed']}</code>" in body
    assert "version 1 of this assignment" in body and f"spec <code>{result['assignment_version']}</code>" in body
    has_regrade = "gradebook.regrade_submission" in app.view_functions
    assert ("Regrade this submission" in body) == has_regrade


def test_an_error_is_explained_to_the_student_and_shown_to_staff(client, session):
    sid = _store(session, CORRECT_VJP)
    held = claim(session, sid)
    assert held is not None and fail(session, held, "SpecError: trial 3 cannot be generated (internal detail)")
    login(client, "student")
    body = _page(client, f"/submissions/{sid}")
    assert "This submission could not be graded" in body and "not\n     because of your code" in body
    assert "internal detail" not in body
    assert client.get(f"/submissions/{sid}/status.json").get_json()["done"] is True
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "instructor")
    staff = _page(client, f"/submissions/{sid}")
    assert "SpecError: trial 3 cannot be generated (internal detail)" in staff


def test_a_file_level_problem_is_shown(client, session):
    sid, result = _graded(session, b"def relu_backward(dout, x)\n    return dout\n")
    assert result["messages"]
    login(client, "student")
    body = _page(client, f"/submissions/{sid}")
    assert "About your file" in body and "SyntaxError at line 1" in body


# ---------------------------------------------------------------------------------------
# rendering


def test_markdown_escapes_raw_html_and_unsafe_links():
    html = str(render_markdown('Hi <script>alert(1)</script> <b onclick="x">b</b>\n\n[click](javascript:alert(1))\n'))
    assert "<script>" not in html and "<b onclick" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript' not in html


def test_markdown_math_becomes_sanitised_mathml():
    html = str(render_markdown("Inline $a_{ij} < b$ and\n\n$$\n\\frac{\\partial \\ell}{\\partial x}\n$$\n"))
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">' in html
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in html
    assert "<mfrac>" in html and "&lt;" in html
    # latex2mathml copies \text verbatim and turns \href and \style into attributes.
    hostile = latex_to_mathml(r"\text{<script>alert(1)</script>} \href{javascript:alert(1)}{x} \style{color:red}{y}", True)
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile
    assert "href" not in hostile and "style" not in hostile
    broken = latex_to_mathml(r"\frac{<b>}{", False)
    assert broken.startswith('<code class="math-error"') and "&lt;b&gt;" in broken


def test_markdown_fenced_code_and_headings():
    html = str(render_markdown("# Title\n\n```python\nx = '<b>'\n```\n\nCosts $5 and $10.\n"))
    assert '<pre class="code"><code class="language-python">x = &#x27;&lt;b&gt;&#x27;' in html or (
        '<pre class="code"><code class="language-python">x = \'&lt;b&gt;\'' in html
    )
    assert "<h2>Title</h2>" in html  # the page's own title is the <h1>
    assert "Costs $5 and $10." in html  # currency is not math


def test_source_lines_and_shapes():
    assert source_lines(b"a\r\nb\n") == ["a", "b"]
    assert source_lines(b"\xef\xbb\xbfx = '\xff'\n") == ["x = '\ufffd'"]
    assert fmt_shape([7, 10]) == "(7, 10)" and fmt_shape([3]) == "(3,)" and fmt_shape([]) == "()"
    assert fmt_shape([[3, 2], [4, 3]]) == "[(3, 2), (4, 3)]" and fmt_shape(None) == "scalar"
