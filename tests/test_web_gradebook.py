"""TA pages: course and assignment gradebooks, a student's submissions, regrades, CSV
export and charts; and who may see them (staff of the course only, 404 for anyone else).

The arrangement uses real grading results (grade_bytes on files from tests/submissions)
written through the store's claim/finish, late submissions, an extension, a pending and an
errored submission and a student with nothing submitted."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from grader import gradebook as gb
from grader.grade import grade_bytes
from grader.spec import load_builtin
from grader.store import accounts, catalog
from grader.store import submissions as subs
from grader.store.db import make_sessionmaker, utcnow
from grader.store.models import Assignment, AssignmentVersion, Course, Extension, Submission, User
from grader.web.charts import histogram_svg, pass_rate_svg
from service_fixtures import Enqueued, csrf_token, login
from service_fixtures import test_settings as settings_for  # (not collected as a test)

SUBMISSIONS = Path(__file__).parent / "submissions"
PASSWORD = "some-pass-123"
DAY = dt.timedelta(days=1)
CAROL = '=HYPERLINK("http://evil.example/","Carol")'  # a name that is a spreadsheet formula


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """Real results of three vjp submissions: full marks, 7/8 (affine db wrong), 5.5/8."""
    spec = load_builtin("vjp")
    out = {}
    for name in ("correct_plain", "wrong_db_mean", "wrong_transposed_dW"):
        out[name] = grade_bytes(spec, (SUBMISSIONS / "vjp" / f"{name}.py").read_bytes(), seed=11)
    assert [out[n]["score"] for n in out] == [8.0, 7.0, 5.5]
    return out


@dataclass
class World:
    due: dt.datetime
    vjp_id: int
    alice: int
    bob: int
    carol: int
    dave: int
    eve: int
    frank: int
    demo_student: int
    alice_early: int  # 5.5, on time
    alice_late: int  # 8.0, one hour late: counts, 7.2
    bob_sub: int  # 8.0, two days after the due date but within his extension: 8
    carol_graded: int  # 7.0, on time: counts
    carol_queued: int  # newer, still queued
    eve_error: int
    frank_running: int
    ta_sub: int  # staff trying the assignment: never in a gradebook


def _student(session: Session, course: Course, email: str, name: str) -> User:
    user = accounts.create_user(session, email, role="student", password=PASSWORD, name=name)
    accounts.set_membership(session, course, user, "student")
    return user


def _submit(session: Session, assignment: Assignment, user: User, at: dt.datetime) -> Submission:
    sub = subs.create_submission(session, assignment, user, b"def relu_backward(dout, x):\n    pass\n", "vjp.py", now=at, enforce=False)
    session.commit()
    return sub


def _graded(session: Session, assignment: Assignment, user: User, at: dt.datetime, result: dict[str, Any]) -> int:
    sub = _submit(session, assignment, user, at)
    held = subs.claim(session, sub.id)
    assert held is not None and subs.finish(session, held, result)
    return sub.id


def arrange(session: Session, results: dict[str, dict[str, Any]]) -> World:
    course = session.scalar(select(Course).where(Course.code == "demo"))
    vjp = session.scalar(select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == "vjp"))
    due = (utcnow() - 10 * DAY).replace(microsecond=0)
    vjp.due_at = due  # past due: lateness and missing work become visible
    vjp.late_penalty_per_day = 0.1
    vjp.late_cutoff_days = 3
    alice = _student(session, course, "alice@example.com", "Alice Able")
    bob = _student(session, course, "bob@example.com", "Bob Baker")
    carol = _student(session, course, "carol@example.com", CAROL)
    dave = _student(session, course, "dave@example.com", "Dave Dunn")
    eve = _student(session, course, "eve@example.com", "Eve <b>bold</b>")
    frank = _student(session, course, "frank@example.com", "Frank Fox")
    ta = accounts.find_user(session, "ta@example.com")
    demo_student = accounts.find_user(session, "student@example.com")
    session.add(Extension(assignment_id=vjp.id, user_id=bob.id, due_at=due + 3 * DAY))
    session.commit()

    w = World(
        due=due,
        vjp_id=vjp.id,
        alice=alice.id,
        bob=bob.id,
        carol=carol.id,
        dave=dave.id,
        eve=eve.id,
        frank=frank.id,
        demo_student=demo_student.id,
        alice_early=_graded(session, vjp, alice, due - 2 * DAY, results["wrong_transposed_dW"]),
        alice_late=_graded(session, vjp, alice, due + dt.timedelta(hours=1), results["correct_plain"]),
        bob_sub=_graded(session, vjp, bob, due + 2 * DAY, results["correct_plain"]),
        carol_graded=_graded(session, vjp, carol, due - DAY, results["wrong_db_mean"]),
        carol_queued=_submit(session, vjp, carol, due - dt.timedelta(hours=12)).id,
        eve_error=0,
        frank_running=0,
        ta_sub=_graded(session, vjp, ta, due - DAY, results["wrong_transposed_dW"]),
    )
    eve_sub = _submit(session, vjp, eve, due - DAY)
    held = subs.claim(session, eve_sub.id)
    assert held is not None and subs.fail(session, held, "spec broken")
    w.eve_error = eve_sub.id
    frank_sub = _submit(session, vjp, frank, due - DAY)
    assert subs.claim(session, frank_sub.id) is not None
    w.frank_running = frank_sub.id
    return w


@pytest.fixture
def world(session: Session, results: dict[str, dict[str, Any]]) -> World:
    return arrange(session, results)


def _page(client: Any, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def _row_names(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<th scope="row"><a href="[^"]*">([^<]*)</a>', page)]


def _csv(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.get_data().decode("utf-8-sig"))))


def _by_email(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["Email"]: r for r in rows}


VJP_COLUMN = "Vector-Jacobian products (ReLU, matmul, affine) (8)"
# By name, case-insensitively: "=" sorts before letters.
ORDER_BY_NAME = [CAROL, "Alice Able", "Bob Baker", "Dave Dunn", "Demo Student", "Eve <b>bold</b>", "Frank Fox"]


# ---------------------------------------------------------------------------------------
# The numbers: counted submission, late penalty, extension.


def test_assignment_csv_counts_the_latest_graded_submission_with_late_penalty(client, world):
    login(client, "ta")
    response = client.get("/courses/demo/assignments/vjp/gradebook.csv")
    assert response.headers["Content-Disposition"].startswith('attachment; filename="demo-vjp-gradebook-')
    assert response.headers["Content-Disposition"].endswith('.csv"')
    rows = _by_email(_csv(response))
    assert set(rows) == {
        "alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com",
        "eve@example.com", "frank@example.com", "student@example.com",
    }  # students only: the TA's own submission is not in a gradebook
    alice = rows["alice@example.com"]
    # The later, correct submission counts; one hour late is one started day: 10% off.
    assert (alice[VJP_COLUMN], alice["Raw score"], alice["Days late"], alice["Submissions"]) == ("7.2", "8", "1", "2")
    assert alice["Latest status"] == "graded"
    bob = rows["bob@example.com"]  # two days after the due date, but his extension covers it
    assert (bob[VJP_COLUMN], bob["Raw score"], bob["Days late"]) == ("8", "8", "0")
    carol = rows["carol@example.com"]  # a newer queued submission does not replace the graded one
    assert (carol[VJP_COLUMN], carol["Submissions"], carol["Latest status"]) == ("7", "2", "queued")
    assert rows["dave@example.com"][VJP_COLUMN] == "" and rows["dave@example.com"]["Submissions"] == "0"
    assert rows["eve@example.com"][VJP_COLUMN] == "" and rows["eve@example.com"]["Latest status"] == "error"
    assert rows["frank@example.com"]["Latest status"] == "running"
    assert alice["Last submitted (UTC)"] == (world.due + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")


def test_course_gradebook_page_and_csv(client, world):
    login(client, "ta")
    page = _page(client, "/courses/demo/gradebook")
    assert _row_names(page) == ORDER_BY_NAME
    # Alice's cell links to the submission that counts and shows its lateness.
    assert f'href="/submissions/{world.alice_late}"' in page and "1d late" in page
    assert 'href="/courses/demo/assignments/vjp/gradebook"' in page
    assert f'href="/courses/demo/students/{world.alice}"' in page
    assert ">missing<" in page  # Dave: past due, nothing submitted

    rows = _csv(client.get("/courses/demo/gradebook.csv"))
    header = list(rows[0].keys())
    assert header[:3] == ["Name", "Email", "SIS Login ID"]
    assert VJP_COLUMN in header and len(header) == 3 + 4  # the four built-ins, no total column
    by_email = _by_email(rows)
    assert by_email["alice@example.com"]["SIS Login ID"] == "alice@example.com"
    assert by_email["alice@example.com"][VJP_COLUMN] == "7.2"
    assert by_email["bob@example.com"][VJP_COLUMN] == "8"
    assert by_email["carol@example.com"][VJP_COLUMN] == "7"
    assert [r["Email"] for r in rows][:3] == ["carol@example.com", "alice@example.com", "bob@example.com"]  # by name


def test_csv_quotes_and_defuses_formulas(client, world):
    login(client, "ta")
    raw = client.get("/courses/demo/gradebook.csv").get_data().decode("utf-8-sig")
    # A title with a comma is quoted; a name that is a formula starts with an apostrophe.
    assert f'"{VJP_COLUMN}"' in raw.splitlines()[0]
    assert raw.splitlines()[0].endswith("\r") is False and "\r\n" in raw
    carol = _by_email(list(csv.DictReader(io.StringIO(raw))))["carol@example.com"]
    assert carol["Name"] == "'" + CAROL
    assert '"\'=HYPERLINK(""http://evil.example/"",""Carol"")"' in raw  # quotes doubled inside quotes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("=1+1", "'=1+1"),
        ("+49 123", "'+49 123"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=cmd", "'\t=cmd"),
        ("Ann = fine", "Ann = fine"),
        ("", ""),
    ],
)
def test_defuse(text, expected):
    assert gb.defuse(text) == expected


def test_csv_writer_round_trips_awkward_text():
    students = [gb.StudentInfo(1, "a@example.com", 'Quote " and, comma\nnewline')]
    a = gb.AssignmentInfo(1, "x", "Title, with comma", True, 10.0, None)
    rows = gb.build_rows(students, [a], [], {}, utcnow())
    parsed = list(csv.reader(io.StringIO(gb.course_csv(rows, [a]))))
    assert parsed[0] == ["Name", "Email", "SIS Login ID", "Title, with comma (10)"]
    assert parsed[1] == ['Quote " and, comma\nnewline', "a@example.com", "a@example.com", ""]


# ---------------------------------------------------------------------------------------
# Sorting and filtering with query-string parameters.


def test_assignment_gradebook_sorts_by_any_column(client, world):
    login(client, "ta")
    base = "/courses/demo/assignments/vjp/gradebook"
    scoreless = ["Dave Dunn", "Demo Student", "Eve <b>bold</b>", "Frank Fox"]  # by name, always last
    assert _row_names(_page(client, base + "?sort=final&dir=desc")) == [
        "Bob Baker", "Alice Able", CAROL, *scoreless
    ]
    assert _row_names(_page(client, base + "?sort=final")) == [
        CAROL, "Alice Able", "Bob Baker", *scoreless
    ]
    by_count = _row_names(_page(client, base + "?sort=submissions&dir=desc"))
    assert by_count[:2] == [CAROL, "Alice Able"] and by_count[-2:] == ["Dave Dunn", "Demo Student"]
    assert _row_names(_page(client, base + "?sort=late&dir=desc"))[0] == "Alice Able"
    assert _row_names(_page(client, base + "?sort=email&dir=desc"))[0] == "Demo Student"  # student@...
    page = _page(client, base + "?sort=final&dir=desc")
    # The active header says how it is sorted and links to the other direction.
    assert 'aria-sort="descending"' in page
    assert 'href="/courses/demo/assignments/vjp/gradebook?sort=final"' in page


def test_assignment_gradebook_filters(client, world):
    login(client, "ta")
    base = "/courses/demo/assignments/vjp/gradebook"
    assert _row_names(_page(client, base + "?q=ALI")) == ["Alice Able"]
    assert _row_names(_page(client, base + "?q=bob%40example")) == ["Bob Baker"]
    assert _row_names(_page(client, base + "?missing=1")) == ["Dave Dunn", "Demo Student"]
    assert _row_names(_page(client, base + "?late=1")) == ["Alice Able"]  # Bob has an extension
    assert _row_names(_page(client, base + "?status=error")) == ["Eve <b>bold</b>"]
    assert _row_names(_page(client, base + "?status=queued")) == [CAROL]
    assert _row_names(_page(client, base + "?status=none")) == ["Dave Dunn", "Demo Student"]
    page = _page(client, base + "?q=zzz")
    assert _row_names(page) == [] and "No student matches these filters." in page
    # Filters and sorting combine, and sort links keep the filters.
    page = _page(client, base + "?late=1&sort=final&dir=desc")
    assert 'href="/courses/demo/assignments/vjp/gradebook?late=1&amp;sort=final"' in page
    assert 'name="late" value="1" checked' in page


def test_course_gradebook_sorts_and_filters(client, world):
    login(client, "ta")
    base = "/courses/demo/gradebook"
    assert _row_names(_page(client, base + "?sort=a:vjp&dir=desc"))[:3] == [
        "Bob Baker", "Alice Able", CAROL
    ]
    assert _row_names(_page(client, base + "?sort=total&dir=desc"))[:2] == ["Bob Baker", "Alice Able"]
    assert _row_names(_page(client, base + "?missing=1")) == ["Dave Dunn", "Demo Student"]
    assert _row_names(_page(client, base + "?late=1")) == ["Alice Able"]
    assert _row_names(_page(client, base + "?q=example.com&late=1")) == ["Alice Able"]


@pytest.mark.parametrize(
    "query",
    ["?sort=nope", "?sort=final&dir=sideways", "?status=bogus", "?q=" + "x" * 5000, "?missing=maybe&late="],
)
def test_bad_view_parameters_are_ignored_with_a_note(client, world, query):
    login(client, "ta")
    response = client.get("/courses/demo/assignments/vjp/gradebook" + query)
    assert response.status_code == 200
    if "sort=nope" in query:
        assert "there is no column" in response.get_data(as_text=True)
    assert client.get("/courses/demo/gradebook" + query).status_code == 200


# ---------------------------------------------------------------------------------------
# Charts and counts.


def _svgs(page: str) -> list[ET.Element]:
    found = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    return [ET.fromstring(s) for s in found]  # well-formed XML, or this raises


def test_histogram_pass_rates_and_counts(client, world):
    login(client, "ta")
    page = _page(client, "/courses/demo/assignments/vjp/gradebook")
    svgs = _svgs(page)
    assert len(svgs) == 3  # the third, recognised mistakes, is tested in test_web_mistake_chart.py
    ns = "{http://www.w3.org/2000/svg}"
    for svg in svgs:
        assert svg.get("role") == "img" and svg.find(f"{ns}title") is not None and svg.find(f"{ns}desc") is not None
    hist_titles = [t.text for t in svgs[0].iter(f"{ns}title")]
    # Counted finals 7.2 (Alice), 8 (Bob), 7 (Carol) in ten bins over [0, 8].
    assert "[7.2, 8]: 2 student(s)" in hist_titles
    assert "[6.4, 7.2): 1 student(s)" in hist_titles
    assert "[0, 0.8): 0 student(s)" in hist_titles
    rate_titles = [t.text for t in svgs[1].iter(f"{ns}title")]
    assert "relu_backward: passed by 3 of 3 (100%)" in rate_titles
    assert "matmul_backward: passed by 3 of 3 (100%)" in rate_titles
    assert "affine_backward: passed by 2 of 3 (67%)" in rate_titles
    assert "affine_backward: partly passed by 1 of 3" in rate_titles

    table = re.search(r'<table class="compact" id="pass-rate-table">.*?</table>', page, re.S).group(0)
    affine = re.search(r"<code>affine_backward</code>(.*?)</tr>", table, re.S).group(1)
    assert [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', affine)] == [2, 1, 0, 0]
    assert "67%" in affine
    hist_table = re.search(r'id="histogram-table">.*?</table>', page, re.S).group(0)
    assert "<td>[7.2, 8]</td><td class=\"num\">2</td>" in hist_table

    counts = {k: int(v) for k, v in re.findall(r'id="count-(graded|queued|running|error|all|late|missing)">(\d+)<', page)}
    # graded: Alice 2, Bob, Carol, the TA's own; queued: Carol's newer; error: Eve; running: Frank.
    assert counts == {"graded": 5, "queued": 1, "running": 1, "error": 1, "all": 8, "late": 1, "missing": 2}
    assert re.search(r'id="count-scored">3 of 7<', page)


def test_pages_escape_user_text(client, world):
    login(client, "ta")
    for path in ("/courses/demo/gradebook", "/courses/demo/assignments/vjp/gradebook", f"/courses/demo/students/{world.eve}"):
        page = _page(client, path)
        assert "<b>bold</b>" not in page and "Eve &lt;b&gt;bold&lt;/b&gt;" in page


def test_chart_functions_escape_and_handle_empty_data():
    rates = [gb.PassRate("<script>", passed=1, failed=1)]
    svg = str(pass_rate_svg("c1", rates, 'Title "with" <tags>'))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ET.fromstring(svg)
    empty = str(pass_rate_svg("c2", [], "none"))
    assert "no counted submissions yet" in empty
    ET.fromstring(empty)
    ET.fromstring(str(histogram_svg("c3", gb.histogram([], 8.0), "empty")))
    ET.fromstring(str(histogram_svg("c4", gb.histogram([0, 0, 0, 0, 100], None), "lots")))


def test_histogram_bins():
    bins = gb.histogram([0, 0.79, 0.8, 7.99, 8.0, 9.0, -1], 8.0)
    assert len(bins) == 10
    assert [b.count for b in bins] == [3, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert bins[-1].label == "[7.2, 8]" and bins[0].label == "[0, 0.8)"
    assert sum(b.count for b in gb.histogram([3.0], 0.0)) == 1  # no max: still a histogram


def test_sort_rows_puts_missing_values_last_both_ways():
    a = gb.AssignmentInfo(1, "x", "X", True, 10.0, None)
    students = [gb.StudentInfo(i, f"s{i}@example.com", n) for i, n in enumerate(["Cy", "Al", "Bo", "Di"], start=1)]
    t = utcnow()
    submissions = [
        gb.SubmissionInfo(10, 1, 1, t, "graded", 5.0, 10.0),
        gb.SubmissionInfo(11, 1, 3, t, "graded", 9.0, 10.0),
        gb.SubmissionInfo(12, 1, 4, t, "graded", 5.0, 10.0),
    ]
    rows = gb.build_rows(students, [a], submissions, {}, t)
    key = gb.assignment_sorts(1)["final"]
    assert [r.student.name for r in gb.sort_rows(rows, key)] == ["Cy", "Di", "Bo", "Al"]
    assert [r.student.name for r in gb.sort_rows(rows, key, desc=True)] == ["Bo", "Cy", "Di", "Al"]


def test_pure_policy_matches_the_store(session, world):
    """The gradebook builds late policies without a query per student; they must be the
    ones the student's own pages use (grader.store.submissions.policy_for)."""
    vjp = session.get(Assignment, world.vjp_id)
    info = gb.AssignmentInfo(
        vjp.id, vjp.slug, vjp.title, vjp.published, 8.0, vjp.due_at, vjp.late_penalty_per_day, vjp.late_cutoff_days
    )
    extensions = {(vjp.id, world.bob): world.due + 3 * DAY}
    for uid in (world.alice, world.bob):
        assert info.policy(extensions.get((vjp.id, uid))) == subs.policy_for(session, vjp, uid)


# ---------------------------------------------------------------------------------------
# A student's page.


def test_student_page_lists_submissions_and_which_counts(client, world):
    login(client, "ta")
    page = _page(client, f"/courses/demo/students/{world.alice}")
    assert "alice@example.com" in page
    rows = re.findall(r'<tr(?: class="counts")? id="submission-(\d+)">(.*?)</tr>', page, re.S)
    assert [int(sid) for sid, _ in rows] == [world.alice_late, world.alice_early]  # newest first
    late_row, early_row = rows[0][1], rows[1][1]
    assert f'href="/submissions/{world.alice_late}"' in late_row and "<strong>counts</strong>" in late_row
    nums = re.findall(r'<td class="num">([^<]*)', late_row)
    assert [n.strip() for n in nums] == ["8", "1", "7.2"]  # raw, days late, final
    assert "<strong>counts</strong>" not in early_row and "5.5" in early_row
    assert 'class="counts" id="submission-%d"' % world.alice_late in page
    # Bob: the extension is shown and his late-looking submission is not late.
    bob = _page(client, f"/courses/demo/students/{world.bob}")
    assert ">extension<" in bob
    assert re.findall(r'<td class="num">([^<]*)', re.search(r'id="submission-\d+">(.*?)</tr>', bob, re.S).group(1))[1].strip() == "0"


def test_student_page_of_a_non_member_is_404(client, world, session):
    login(client, "ta")
    outsider = accounts.create_user(session, "outsider@example.com", password=PASSWORD)
    session.commit()
    assert client.get(f"/courses/demo/students/{outsider.id}").status_code == 404
    assert client.get("/courses/demo/students/999999").status_code == 404


# ---------------------------------------------------------------------------------------
# Regrades.


def _new_version(session: Session, assignment_id: int) -> AssignmentVersion:
    """A second spec version (as after a spec fix), made current."""
    a = session.get(Assignment, assignment_id)
    old = a.current_version
    new = AssignmentVersion(
        assignment_id=a.id, number=old.number + 1, spec_version=old.spec_version, files=dict(old.files),
        digest=old.digest, max_score=old.max_score, selftest_ok=True, selftest_report="",
    )
    session.add(new)
    session.flush()
    a.current_version_id = new.id
    session.commit()
    return new


def test_regrade_one_submission(client, world, session, enqueued):
    new = _new_version(session, world.vjp_id)
    login(client, "ta")
    back = f"/courses/demo/students/{world.alice}"
    token = csrf_token(client, back)
    response = client.post(f"/submissions/{world.alice_late}/regrade", data={"csrf_token": token, "next": back})
    assert response.status_code == 302 and response.headers["Location"] == back
    assert enqueued.ids == [world.alice_late]
    session.expire_all()
    row = session.get(Submission, world.alice_late)
    assert row.status == "queued" and row.version_id == new.id and row.result is not None  # old result kept until regraded
    page = _page(client, back)
    assert "1 submission of Vector-Jacobian products" in page and "spec version 2" in page
    # While it is queued, the earlier graded submission counts.
    assert re.search(r'class="counts" id="submission-%d"' % world.alice_early, page)


def test_regrade_refuses_an_off_site_next(client, world, enqueued):
    login(client, "ta")
    token = csrf_token(client, f"/courses/demo/students/{world.alice}")
    response = client.post(
        f"/submissions/{world.alice_late}/regrade", data={"csrf_token": token, "next": "https://evil.example/"}
    )
    assert response.headers["Location"] == f"/submissions/{world.alice_late}"  # the default: the submission


def test_regrade_assignment_counted_only(client, world, session, enqueued):
    login(client, "ta")
    path = "/courses/demo/assignments/vjp/gradebook"
    token = csrf_token(client, path)
    response = client.post(
        "/courses/demo/assignments/vjp/regrade", data={"csrf_token": token, "scope": "counted", "next": path}
    )
    assert response.status_code == 302 and response.headers["Location"] == path
    assert sorted(enqueued.ids) == sorted([world.alice_late, world.bob_sub, world.carol_graded])
    session.expire_all()
    statuses = {s.id: s.status for s in session.scalars(select(Submission))}
    assert all(statuses[i] == "queued" for i in enqueued.ids)
    assert statuses[world.alice_early] == "graded" and statuses[world.ta_sub] == "graded"
    assert "3 counted submissions of Vector-Jacobian products" in _page(client, path)


def test_regrade_assignment_all(client, world, session, enqueued):
    new = _new_version(session, world.vjp_id)
    login(client, "ta")
    token = csrf_token(client, "/courses/demo/assignments/vjp/gradebook")
    response = client.post("/courses/demo/assignments/vjp/regrade", data={"csrf_token": token, "scope": "all"})
    assert response.status_code == 302
    session.expire_all()
    rows = session.scalars(select(Submission).where(Submission.assignment_id == world.vjp_id)).all()
    assert sorted(enqueued.ids) == sorted(r.id for r in rows) and len(rows) == 8
    assert all(r.status == "queued" and r.version_id == new.id and r.lease_token is None for r in rows)


def test_regrade_assignment_with_a_bad_scope_says_why(client, world, enqueued):
    login(client, "ta")
    token = csrf_token(client, "/courses/demo/assignments/vjp/gradebook")
    response = client.post("/courses/demo/assignments/vjp/regrade", data={"csrf_token": token, "scope": "everything"})
    assert response.status_code == 400
    assert "choose either the counted submissions or every submission" in response.get_data(as_text=True)
    assert enqueued.ids == []


def test_regrade_without_csrf_is_refused(client, world, session, enqueued):
    login(client, "ta")
    assert client.post(f"/submissions/{world.alice_late}/regrade").status_code == 400
    assert client.post("/courses/demo/assignments/vjp/regrade", data={"scope": "all"}).status_code == 400
    assert enqueued.ids == []
    session.expire_all()
    assert session.get(Submission, world.alice_late).status == "graded"


def test_regrade_of_an_assignment_without_submissions(client, session, enqueued):
    login(client, "instructor")
    token = csrf_token(client, "/courses/demo/assignments/gates/gradebook")
    response = client.post(
        "/courses/demo/assignments/gates/regrade", data={"csrf_token": token, "scope": "all"}, follow_redirects=True
    )
    assert response.status_code == 200 and "Nothing was queued" in response.get_data(as_text=True)
    assert enqueued.ids == []


# ---------------------------------------------------------------------------------------
# Who may see what: staff of the course only; a 404 for everyone else.


def _all_paths(w: World) -> list[tuple[str, str]]:
    return [
        ("GET", "/courses/demo/gradebook"),
        ("GET", "/courses/demo/gradebook.csv"),
        ("GET", "/courses/demo/assignments/vjp/gradebook"),
        ("GET", "/courses/demo/assignments/vjp/gradebook.csv"),
        ("GET", f"/courses/demo/students/{w.alice}"),
        ("POST", f"/submissions/{w.alice_late}/regrade"),
        ("POST", "/courses/demo/assignments/vjp/regrade"),
    ]


def _other_course_ta(session: Session) -> None:
    other = catalog.create_course(session, "other", "Another course")
    ta2 = accounts.create_user(session, "ta2@example.com", role="ta", password=PASSWORD, name="Other TA")
    accounts.set_membership(session, other, ta2, "ta")
    session.commit()


@pytest.mark.parametrize("who", ["student", "alice", "ta2"])
def test_outsiders_get_404_everywhere(client, world, session, enqueued, who):
    _other_course_ta(session)
    if who == "student":
        login(client, "student")
        token = csrf_token(client, "/account")
    else:
        login(client, f"{who}@example.com", PASSWORD)
        token = csrf_token(client, "/account")
    for method, path in _all_paths(world):
        if method == "GET":
            response = client.get(path)
        else:
            response = client.post(path, data={"csrf_token": token, "scope": "all"})
        assert response.status_code == 404, (who, path, response.status_code)
    assert enqueued.ids == []
    # Alice may not regrade even her own submission.
    assert client.post(f"/submissions/{world.alice_late}/regrade", data={"csrf_token": token}).status_code == 404


def test_a_ta_sees_only_their_course(client, world, session):
    _other_course_ta(session)
    login(client, "ta")
    assert client.get("/courses/other/gradebook").status_code == 404
    assert client.get("/courses/other/gradebook.csv").status_code == 404
    assert client.get("/courses/nope/gradebook").status_code == 404
    assert client.get("/courses/demo/assignments/nope/gradebook").status_code == 404


def test_logged_out_visitors_are_sent_to_log_in(client, world):
    for method, path in _all_paths(world):
        response = client.get(path) if method == "GET" else client.post(path)
        assert response.status_code in (302, 400), path  # POST without a session: CSRF refuses first
        if response.status_code == 302:
            assert "/login" in response.headers["Location"]


def test_instructor_sees_unpublished_assignments(client, world, session):
    gates = session.scalar(select(Assignment).where(Assignment.slug == "gates"))
    gates.published = False
    session.commit()
    login(client, "instructor")
    page = _page(client, "/courses/demo/gradebook")
    assert "unpublished" in page
    assert client.get("/courses/demo/assignments/gates/gradebook").status_code == 200


# ---------------------------------------------------------------------------------------
# Both database backends.


def test_gradebook_queries_on_both_backends(db_url, tmp_path, results):
    from grader.web import create_app

    enqueued = Enqueued()
    app = create_app(settings_for(db_url, tmp_path), enqueue=enqueued)
    try:
        with make_sessionmaker(app.extensions["grader.engine"])() as session:
            w = arrange(session, results)
        client = app.test_client()
        login(client, "ta")
        rows = _by_email(_csv(client.get("/courses/demo/assignments/vjp/gradebook.csv")))
        assert rows["alice@example.com"][VJP_COLUMN] == "7.2"
        assert rows["bob@example.com"][VJP_COLUMN] == "8"
        assert rows["carol@example.com"]["Latest status"] == "queued"
        page = _page(client, "/courses/demo/assignments/vjp/gradebook?sort=final&dir=desc")
        assert _row_names(page)[:3] == ["Bob Baker", "Alice Able", CAROL]
        assert "affine_backward: passed by 2 of 3 (67%)" in page
        assert re.search(r'id="count-queued">1<', page)
        assert _row_names(_page(client, "/courses/demo/gradebook?missing=1")) == ["Dave Dunn", "Demo Student"]
        assert f"/submissions/{w.alice_late}" in _page(client, f"/courses/demo/students/{w.alice}")
        token = csrf_token(client, "/courses/demo/assignments/vjp/gradebook")
        response = client.post("/courses/demo/assignments/vjp/regrade", data={"csrf_token": token, "scope": "counted"})
        assert response.status_code == 302
        assert sorted(enqueued.ids) == sorted([w.alice_late, w.bob_sub, w.carol_graded])
        with make_sessionmaker(app.extensions["grader.engine"])() as session:
            assert {session.get(Submission, i).status for i in enqueued.ids} == {"queued"}
    finally:
        app.extensions["grader.engine"].dispose()
