"""Instructor pages: creating courses, members and rosters, adding and versioning assignment
specs (form and zip), dates and late policies, extensions, publishing, regrades; and that
nobody but a course's instructors reaches any of it."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import pytest
from markupsafe import escape
from sqlalchemy import select

from grader.store import accounts, specs
from grader.store import submissions as subs
from grader.store.models import Assignment, Course, Extension, Submission, User
from service_fixtures import csrf_token, login

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "fixtures" / "probe"
GOOD_SOLUTION = "def double(x):\n    return 2 * x\n\n\ndef add(x, y):\n    return x + y\n"
WRONG_SOLUTION = "def double(x):\n    return 3 * x\n\n\ndef add(x, y):\n    return x + y\n"
UTC = dt.timezone.utc


# ---------------------------------------------------------------------------------- helpers


def probe_files(without: str = "") -> dict[str, str]:
    files = specs.files_from_folder(PROBE)
    files.pop(without, None)
    return files


def builtin_files(aid: str) -> dict[str, str]:
    return specs.files_from_folder(ROOT / "assignments" / aid)


def make_zip(files: dict[str, str | bytes], prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(prefix + name, text)
    return buffer.getvalue()


def text(response: Any) -> str:
    return response.get_data(as_text=True)


def post(client: Any, path: str, data: Optional[dict[str, Any]] = None, csrf: bool = True, **kw: Any) -> Any:
    data = dict(data or {})
    if csrf:
        data["csrf_token"] = csrf_token(client, "/")
    return client.post(path, data=data, **kw)


def spec_form(files: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "spec_yaml": files.get("spec.yaml", ""),
        "handout_md": files.get("handout.md", ""),
        "starter_py": files.get("starter.py", ""),
        "solution_py": files.get("solution.py", ""),
        **extra,
    }


def upload(client: Any, path: str, data: bytes, filename: str = "spec.zip", **extra: Any) -> Any:
    return post(client, path, {"archive": (io.BytesIO(data), filename), **extra}, content_type="multipart/form-data")


def assignment_row(session: Any, slug: str, code: str = "demo") -> Optional[Assignment]:
    session.expire_all()
    return session.scalar(
        select(Assignment).join(Course, Course.id == Assignment.course_id).where(Course.code == code, Assignment.slug == slug)
    )


def demo_course(session: Any) -> Course:
    return session.scalar(select(Course).where(Course.code == "demo"))


def new_user(session: Any, email: str, role: str = "student", course_role: Optional[str] = None) -> User:
    user = accounts.create_user(session, email, role=role, password="a-password-1")
    if course_role:
        accounts.set_membership(session, demo_course(session), user, course_role)
    session.commit()
    return user


def submit_as_student(session: Any, slug: str, n: int = 1) -> list[int]:
    assignment = assignment_row(session, slug)
    student = accounts.find_user(session, "student@example.com")
    ids = []
    for _ in range(n):
        sub = subs.create_submission(session, assignment, student, b"def f():\n    pass\n", "x.py", enforce=False)
        ids.append(sub.id)
    session.commit()
    return ids


NEW = "/courses/demo/manage/assignments/new"
NEW_ZIP = "/courses/demo/manage/assignments/new/zip"


def manage(slug: str, tail: str = "") -> str:
    return f"/courses/demo/assignments/{slug}/manage{tail}"


# ---------------------------------------------------------------------------------- courses


def test_only_site_instructors_may_create_courses(client, session):
    for role in ("student", "ta"):
        login(client, role)
        assert client.get("/courses/new").status_code == 404
        response = post(client, "/courses/new", {"code": "sneaky", "title": "Sneaky"})
        assert response.status_code == 404
        client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert session.scalar(select(Course).where(Course.code == "sneaky")) is None
    login(client, "instructor")
    assert client.get("/courses/new").status_code == 200
    assert 'href="/courses/new"' in text(client.get("/"))  # base.html links it for site instructors


def test_create_course_with_the_builtins_as_drafts(client, session):
    login(client, "instructor")
    response = post(client, "/courses/new", {"code": " NN-F26 ", "title": "Neural nets", "builtins": "y"})
    assert response.status_code == 302 and response.headers["Location"] == "/courses/nn-f26/manage"
    course = session.scalar(select(Course).where(Course.code == "nn-f26"))
    assert course.title == "Neural nets"
    me = accounts.find_user(session, "instructor@example.com")
    assert accounts.course_role(session, me, course.id) == "instructor"
    assignments = session.scalars(select(Assignment).where(Assignment.course_id == course.id)).all()
    assert sorted(a.slug for a in assignments) == ["bp4", "gates", "mlp", "vjp"]
    assert all(not a.published and a.current_version_id for a in assignments)
    page = text(client.get("/courses/nn-f26/manage"))
    assert "created with 4 built-in assignments" in page and "draft" in page


def test_create_course_without_builtins(client, session):
    login(client, "instructor")
    assert post(client, "/courses/new", {"code": "empty", "title": "Empty"}).status_code == 302
    course = session.scalar(select(Course).where(Course.code == "empty"))
    assert session.scalars(select(Assignment).where(Assignment.course_id == course.id)).all() == []


@pytest.mark.parametrize(
    "data, message",
    [
        ({"code": "demo", "title": "Again"}, "a course with code &#39;demo&#39; already exists"),
        ({"code": "a b", "title": "Spaces"}, "a course code is 1-64 letters"),
        ({"code": "new", "title": "Reserved"}, "is reserved"),
        ({"code": "", "title": "No code"}, "give the course a code"),
        ({"code": "notitle", "title": ""}, "give the course a title"),
    ],
)
def test_create_course_errors(client, session, data, message):
    login(client, "instructor")
    response = post(client, "/courses/new", data)
    assert response.status_code == 400
    assert message in text(response)
    assert session.scalar(select(Course).where(Course.code.in_(["a b", "new", "notitle"]))) is None


# ------------------------------------------------------------------------- who may see what


def _instructor_urls() -> list[tuple[str, str]]:
    return [
        ("GET", "/courses/demo/manage"),
        ("POST", "/courses/demo/manage/members"),
        ("POST", "/courses/demo/manage/members/1/role"),
        ("POST", "/courses/demo/manage/members/1/remove"),
        ("POST", "/courses/demo/manage/roster"),
        ("GET", NEW),
        ("POST", NEW),
        ("POST", NEW_ZIP),
        ("GET", manage("vjp")),
        ("POST", manage("vjp", "/settings")),
        ("POST", manage("vjp", "/publish")),
        ("POST", manage("vjp", "/extensions")),
        ("POST", manage("vjp", "/extensions/1/remove")),
        ("POST", manage("vjp", "/versions")),
        ("POST", manage("vjp", "/versions/zip")),
        ("GET", manage("vjp", "/versions/1.zip")),
    ]


@pytest.mark.parametrize("who", ["student", "ta", "outsider"])
def test_every_instructor_page_is_404_for_others(client, session, who):
    if who == "outsider":
        # A site instructor who is not in the course is no one there.
        new_user(session, "other-instructor@example.com", role="instructor")
        login(client, "other-instructor@example.com", "a-password-1")
    else:
        login(client, who)
    token = csrf_token(client, "/")
    for method, url in _instructor_urls():
        if method == "GET":
            response = client.get(url)
        else:
            response = client.post(url, data={"csrf_token": token, "role": "instructor", "published": "1"})
        assert response.status_code == 404, (method, url, response.status_code)
    session.expire_all()
    assert accounts.course_role(session, accounts.find_user(session, "instructor@example.com"), demo_course(session).id) == "instructor"
    assert not assignment_row(session, "vjp").versions[-1].number > 1


def test_unknown_course_assignment_and_version_are_404(client):
    login(client, "instructor")
    assert client.get("/courses/nope/manage").status_code == 404
    assert client.get(manage("nope")).status_code == 404
    assert client.get(manage("vjp", "/versions/9.zip")).status_code == 404
    assert post(client, "/courses/demo/manage/members/999/remove").status_code == 404


def test_logged_out_users_are_sent_to_login(client):
    response = client.get("/courses/demo/manage")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


@pytest.mark.parametrize("method, url", [u for u in _instructor_urls() if u[0] == "POST"] + [("POST", "/courses/new")])
def test_csrf_token_is_required(client, session, method, url):
    login(client, "instructor")
    url = url.replace("/members/1/", f"/members/{accounts.find_user(session, 'student@example.com').id}/")
    response = client.post(url, data={"role": "ta", "published": "1", "email": "x@example.com", "code": "csrf-less", "title": "t"})
    assert response.status_code == 400
    session.expire_all()
    assert accounts.course_role(session, accounts.find_user(session, "student@example.com"), demo_course(session).id) == "student"
    assert accounts.find_user(session, "x@example.com") is None
    assert session.scalar(select(Course).where(Course.code == "csrf-less")) is None


# -------------------------------------------------------------------------- members, roster


def test_course_page_lists_members_and_assignments(client):
    login(client, "instructor")
    page = text(client.get("/courses/demo/manage"))
    for email in ("student@example.com", "ta@example.com", "instructor@example.com"):
        assert email in page
    for slug in ("gates", "vjp", "mlp", "bp4"):
        assert f"/courses/demo/assignments/{slug}/manage" in page
    assert "published" in page
    assert "1 instructor(s), 1 TA(s), 1 student(s)" in page


def test_add_a_new_member_shows_the_password_once(client, session):
    login(client, "instructor")
    response = post(client, "/courses/demo/manage/members", {"email": "New.Person@Example.com", "name": "New Person", "role": "ta"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = text(response)
    password = re.search(r'<code class="token">([^<]+)</code>', page).group(1)
    # The same password, in the CSV download made in this response.
    data_url = re.search(r'href="data:text/csv;charset=utf-8;base64,([^"]+)"', page).group(1)
    rows = list(csv.reader(io.StringIO(base64.b64decode(data_url).decode("utf-8-sig"))))
    assert rows == [["email", "password"], ["new.person@example.com", password]]
    session.expire_all()
    person = accounts.find_user(session, "new.person@example.com")
    assert person.name == "New Person" and person.password_hash and password not in person.password_hash
    assert accounts.course_role(session, person, demo_course(session).id) == "ta"
    assert password not in text(client.get("/courses/demo/manage"))  # never shown again
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "new.person@example.com", password)


def test_add_an_existing_account_as_a_member(client, session):
    new_user(session, "known@example.com")
    login(client, "instructor")
    response = post(client, "/courses/demo/manage/members", {"email": "known@example.com", "role": "student"})
    assert response.status_code == 302
    page = text(client.get("/courses/demo/manage"))
    assert "Added known@example.com as Student." in page and 'class="token"' not in page
    response = post(client, "/courses/demo/manage/members", {"email": "known@example.com", "role": "ta"})
    assert "known@example.com was Student; now TA." in text(client.get("/courses/demo/manage"))
    session.expire_all()
    assert accounts.course_role(session, accounts.find_user(session, "known@example.com"), demo_course(session).id) == "ta"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"email": "not-an-email", "role": "student"}, "is not an email address"),
        ({"email": "", "role": "student"}, "give the member&#39;s email"),
        ({"email": "x@example.com", "role": "admin"}, "Not a valid choice"),
        ({"email": "instructor@example.com", "role": "student"}, "the course&#39;s only instructor"),
    ],
)
def test_add_member_errors(client, session, data, message):
    login(client, "instructor")
    response = post(client, "/courses/demo/manage/members", data)
    assert response.status_code == 400
    assert message in text(response)
    assert accounts.find_user(session, "x@example.com") is None


def test_change_role_and_remove_member(client, session):
    student = accounts.find_user(session, "student@example.com")
    ta = accounts.find_user(session, "ta@example.com")
    login(client, "instructor")
    assert post(client, f"/courses/demo/manage/members/{student.id}/role", {"role": "ta"}).status_code == 302
    assert "student@example.com: Student → TA." in text(client.get("/courses/demo/manage"))
    assert post(client, f"/courses/demo/manage/members/{ta.id}/remove").status_code == 302
    assert "Removed ta@example.com" in text(client.get("/courses/demo/manage"))
    session.expire_all()
    course = demo_course(session)
    assert accounts.course_role(session, student, course.id) == "ta"
    assert accounts.course_role(session, ta, course.id) is None
    bad = post(client, f"/courses/demo/manage/members/{student.id}/role", {"role": "owner"})
    assert bad.status_code == 302 and "Unknown role" in text(client.get("/courses/demo/manage"))


def test_the_last_instructor_cannot_be_demoted_or_removed(client, session):
    me = accounts.find_user(session, "instructor@example.com")
    login(client, "instructor")
    post(client, f"/courses/demo/manage/members/{me.id}/role", {"role": "student"})
    assert "only instructor" in text(client.get("/courses/demo/manage"))
    post(client, f"/courses/demo/manage/members/{me.id}/remove")
    assert "only instructor" in text(client.get("/courses/demo/manage"))
    session.expire_all()
    assert accounts.course_role(session, me, demo_course(session).id) == "instructor"
    # With a second instructor, stepping down works and the page is then out of reach.
    new_user(session, "co@example.com", role="instructor", course_role="instructor")
    response = post(client, f"/courses/demo/manage/members/{me.id}/role", {"role": "ta"})
    assert response.headers["Location"] == "/"
    assert client.get("/courses/demo/manage").status_code == 404


def roster_upload(client: Any, content: bytes, filename: str = "roster.csv") -> Any:
    return post(client, "/courses/demo/manage/roster", {"roster": (io.BytesIO(content), filename)}, content_type="multipart/form-data")


def test_roster_import(client, session):
    login(client, "instructor")
    roster = (
        "\ufeffEmail,Name,Role,Password\n"
        "ada@example.edu,Ada Lovelace,,\n"
        "grace@example.edu,Grace Hopper,ta,\n"
        "given@example.edu,Given,student,chosen-password-1\n"
        "student@example.com,Renamed Student,student,\n"
        "not-an-email,Bad,student,\n"
        "bob@example.edu,Bob,professor,\n"
    ).encode("utf-8")
    response = roster_upload(client, roster)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    page = text(response)
    assert "3 new account(s), 1 existing account(s) added or updated, 2 line(s) with errors" in " ".join(page.split())
    assert "line 6: &#39;not-an-email&#39; is not an email address" in page
    assert "line 7: unknown role &#39;professor&#39;" in page
    passwords = dict(re.findall(r"<tr><td>([^<]+)</td><td><code class=\"token\">([^<]+)</code>", page))
    assert set(passwords) == {"ada@example.edu", "grace@example.edu"}  # the given one is not echoed
    assert "chosen-password-1" not in page
    data_url = re.search(r'href="data:text/csv;charset=utf-8;base64,([^"]+)"', page).group(1)
    rows = list(csv.reader(io.StringIO(base64.b64decode(data_url).decode("utf-8-sig"))))
    assert rows[0] == ["email", "password"] and dict(rows[1:]) == passwords
    session.expire_all()
    course = demo_course(session)
    assert accounts.course_role(session, accounts.find_user(session, "grace@example.edu"), course.id) == "ta"
    assert accounts.course_role(session, accounts.find_user(session, "ada@example.edu"), course.id) == "student"
    # An existing account keeps its name: a roster must not rename people in other courses.
    assert accounts.find_user(session, "student@example.com").name == "Demo Student"
    assert accounts.find_user(session, "bob@example.edu") is None
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "ada@example.edu", passwords["ada@example.edu"])
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "given@example.edu", "chosen-password-1")


@pytest.mark.parametrize(
    "content, filename, message",
    [
        (b"name,role\nAda,student\n", "r.csv", "needs a header row with an &#39;email&#39; column"),
        ("email\nzoë@example.edu\n".encode("latin-1"), "r.csv", "not UTF-8 text"),
        (b"email,role\ninstructor@example.com,student\n", "r.csv", "without an instructor; nothing was imported"),
        (b'email\n"' + b"x" * 200_000 + b'"\n', "r.csv", "the roster cannot be read: field larger than field limit"),
    ],
)
def test_roster_errors(client, session, content, filename, message):
    login(client, "instructor")
    response = roster_upload(client, content, filename)
    assert response.status_code == 400
    assert message in text(response)
    session.expire_all()
    assert accounts.course_role(session, accounts.find_user(session, "instructor@example.com"), demo_course(session).id) == "instructor"


def test_roster_without_a_file(client):
    login(client, "instructor")
    response = post(client, "/courses/demo/manage/roster", {}, content_type="multipart/form-data")
    assert response.status_code == 400 and "choose a CSV file" in text(response)


# ------------------------------------------------------------------------ adding assignments


def test_add_assignment_by_form(client, session):
    login(client, "instructor")
    assert "spec.yaml" in text(client.get(NEW))
    files = probe_files()
    files["solution.py"] = GOOD_SOLUTION
    response = post(client, NEW, spec_form(files))
    assert response.status_code == 302
    assert response.headers["Location"] == "/courses/demo/assignments/probe/manage#version-1"
    probe = assignment_row(session, "probe")
    assert not probe.published and probe.current_version is not None
    version = probe.current_version
    assert version.number == 1 and version.selftest_ok and version.created_by_id is not None
    assert version.files["solution.py"] == GOOD_SOLUTION and version.files["spec.yaml"] == files["spec.yaml"]
    assert "reference solution: 2/2" in version.selftest_report
    page = text(client.get(manage("probe")))
    assert "passed its self-test and is now current" in page
    assert "reference solution: 2/2" in page and "self-test passed" in page


def test_the_new_assignment_form_can_start_from_a_builtin(client):
    login(client, "instructor")
    page = text(client.get(NEW + "?example=gates"))
    assert str(escape(builtin_files("gates")["spec.yaml"])) in page
    assert str(escape(builtin_files("gates")["starter.py"])) in page
    for bad in ("../assignments/gates", "nope", ""):
        response = client.get(NEW, query_string={"example": bad})
        assert response.status_code == 200 and "id: gates" not in text(response)


def test_form_line_endings_are_normalised(client, session):
    login(client, "instructor")
    files = {k: v.replace("\n", "\r\n") for k, v in probe_files().items()}
    assert post(client, NEW, spec_form(files)).status_code == 302
    stored = assignment_row(session, "probe").current_version.files
    assert "\r" not in "".join(stored.values()) and stored == probe_files()


@pytest.mark.parametrize("prefix", ["", "probe/"])
def test_add_assignment_by_zip(client, session, prefix):
    login(client, "instructor")
    files = probe_files()
    files["solution.py"] = GOOD_SOLUTION
    response = upload(client, NEW_ZIP, make_zip(files, prefix))
    assert response.status_code == 302, text(response)
    version = assignment_row(session, "probe").current_version
    assert version is not None and version.selftest_ok and set(version.files) == set(files)


def _big_member() -> bytes:
    # 3 MiB of one byte deflates to a few KiB: a small upload that inflates past the caps.
    return make_zip({**probe_files(), "handout.md": "x" * (3 << 20)})


@pytest.mark.parametrize(
    "data, message",
    [
        (lambda: make_zip({**probe_files(), "../x.py": "print(1)"}), "unsafe path: &#39;../x.py&#39;"),
        (lambda: make_zip(probe_files(), "../"), "unsafe path"),
        (_big_member, "handout.md: larger than 1024 KiB"),
        (lambda: b"this is not a zip at all", "the upload is not a zip archive"),
        (lambda: make_zip(probe_files(without="spec.yaml")), "no spec.yaml in the spec folder (found: handout.md, starter.py)"),
        (lambda: make_zip({}), "the zip archive is empty"),
        (lambda: make_zip({**probe_files(), "sub/extra.py": "x = 1"}), "sub-folders are not supported"),
        (lambda: make_zip({**probe_files(), "logo.png": b"\x89PNG"}), "only text files"),
    ],
)
def test_bad_zip_uploads_are_refused_with_the_reason(client, session, data, message):
    login(client, "instructor")
    response = upload(client, NEW_ZIP, data())
    assert response.status_code == 400
    page = text(response)
    assert "The spec was not stored" in page
    assert message in page
    assert assignment_row(session, "probe") is None


def test_zip_form_without_a_file(client):
    login(client, "instructor")
    response = post(client, NEW_ZIP, {}, content_type="multipart/form-data")
    assert response.status_code == 400 and "choose a zip file" in text(response)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"spec.yaml": "id: [probe\ntitle: x\n"}, "spec.yaml: not valid YAML"),
        ({"op": ("d = 2 * x", "d = frobnicate(x)")}, "unknown operation &#39;frobnicate&#39;"),
        ({"spec.yaml": "id: Probe Two\ntitle: t\nversion: 1\nfunctions: []\n"}, "invalid spec"),
        ({"handout.md": ""}, "handout: file &#39;handout.md&#39; is missing"),
    ],
)
def test_a_broken_spec_shows_the_error_and_keeps_what_was_typed(client, session, change, message):
    login(client, "instructor")
    files = probe_files()
    if "op" in change:
        old, new = change["op"]
        files["spec.yaml"] = files["spec.yaml"].replace(old, new)
    else:
        files.update(change)
    files["starter.py"] += "\n# <b>typed by me</b> & kept\n"
    response = post(client, NEW, spec_form(files))
    assert response.status_code == 400
    page = text(response)
    error = re.search(r'<pre class="error">(.*?)</pre>', page, re.S).group(1)
    assert message in error
    assert "grader-specs" not in error  # no private cache paths
    assert html.escape("# <b>typed by me</b> & kept", quote=False) in page  # the form keeps the text, escaped
    assert "<b>typed by me</b>" not in page
    assert assignment_row(session, "probe") is None and assignment_row(session, "probe-two") is None


def test_new_assignment_with_an_existing_id_points_to_its_page(client, session):
    login(client, "instructor")
    response = post(client, NEW, spec_form(builtin_files("vjp")))
    assert response.status_code == 400
    page = text(response)
    assert "already has an assignment with id &#39;vjp&#39;" in page
    assert 'href="/courses/demo/assignments/vjp/manage"' in page
    assert len(assignment_row(session, "vjp").versions) == 1


def test_a_spec_that_fails_its_self_test_is_stored_but_not_current(client, session, enqueued):
    login(client, "instructor")
    files = probe_files()
    files["solution.py"] = WRONG_SOLUTION
    response = post(client, NEW, spec_form(files))
    assert response.status_code == 302
    probe = assignment_row(session, "probe")
    assert probe.current_version_id is None
    (version,) = probe.versions
    assert not version.selftest_ok and "the reference solution scored 1/2" in version.selftest_report
    page = text(client.get(manage("probe")))
    assert "failed its self-test, so it is not current" in page
    assert "self-test failed" in page and "the reference solution scored 1/2" in page
    assert "Cannot be published: no version of this spec has passed its self-test yet" in page
    # The form is opened on the failed version, so it can be fixed where it is.
    assert str(escape(WRONG_SOLUTION)) in page

    refused = post(client, manage("probe", "/publish"), {"published": "1"})
    assert refused.status_code == 302
    assert "Not published: no version of this spec has passed its self-test yet (version 1 failed" in text(
        client.get(manage("probe"))
    )
    assert not assignment_row(session, "probe").published

    files["solution.py"] = GOOD_SOLUTION
    fixed = post(client, manage("probe", "/versions"), spec_form(files, base_version="1"))
    assert fixed.status_code == 302 and fixed.headers["Location"].endswith("#version-2")
    probe = assignment_row(session, "probe")
    assert probe.current_version.number == 2
    assert post(client, manage("probe", "/publish"), {"published": "1"}).status_code == 302
    assert assignment_row(session, "probe").published
    assert "Published" in text(client.get(manage("probe")))
    assert post(client, manage("probe", "/publish"), {"published": "0"}).status_code == 302
    assert not assignment_row(session, "probe").published
    assert enqueued.ids == []


def test_publish_needs_a_clear_choice(client):
    login(client, "instructor")
    assert post(client, manage("vjp", "/publish"), {"published": "maybe"}).status_code == 400


# ----------------------------------------------------------------------------------- versions


def bumped(aid: str, version: str = "2") -> dict[str, str]:
    files = builtin_files(aid)
    files["spec.yaml"] = re.sub(r"(?m)^version: .*$", f"version: {version}", files["spec.yaml"])
    return files


def test_edit_the_spec_in_the_form_makes_a_new_version(client, session):
    login(client, "instructor")
    page = text(client.get(manage("vjp")))
    assert "Edit the spec (opened on version 1)" in page
    assert str(escape(builtin_files("vjp")["starter.py"])) in page
    response = post(client, manage("vjp", "/versions"), spec_form(bumped("vjp"), base_version="1"))
    assert response.status_code == 302
    vjp = assignment_row(session, "vjp")
    assert [v.number for v in vjp.versions] == [1, 2]
    assert vjp.current_version.number == 2 and vjp.current_version.spec_version == "2"
    assert vjp.published  # still published: a new version does not unpublish


def test_the_form_keeps_the_other_files_of_the_version_it_was_opened_on(client, session):
    login(client, "instructor")
    files = probe_files()
    files["notes.txt"] = "for TAs"
    assert upload(client, NEW_ZIP, make_zip(files)).status_code == 302
    assert "Also kept from that version: <code>notes.txt</code>" in text(client.get(manage("probe")))
    files["spec.yaml"] = files["spec.yaml"].replace("version: 1", "version: 2")
    assert post(client, manage("probe", "/versions"), spec_form(files, base_version="1")).status_code == 302
    assert assignment_row(session, "probe").current_version.files["notes.txt"] == "for TAs"


def test_upload_a_new_zip_version(client, session):
    login(client, "instructor")
    response = upload(client, manage("vjp", "/versions/zip"), make_zip(bumped("vjp", "1.1"), "vjp/"))
    assert response.status_code == 302
    assert assignment_row(session, "vjp").current_version.spec_version == "1.1"


def test_identical_and_renamed_versions_are_refused(client, session):
    login(client, "instructor")
    same = post(client, manage("vjp", "/versions"), spec_form(builtin_files("vjp"), base_version="1"))
    assert same.status_code == 400 and "identical to version 1, the current one" in text(same)
    other = bumped("vjp")
    other["spec.yaml"] = other["spec.yaml"].replace("id: vjp", "id: vjp2")
    renamed = post(client, manage("vjp", "/versions"), spec_form(other, base_version="1"))
    assert renamed.status_code == 400 and "ids cannot change" in text(renamed)
    assert len(assignment_row(session, "vjp").versions) == 1


def test_bad_zip_for_a_new_version(client, session):
    login(client, "instructor")
    response = upload(client, manage("vjp", "/versions/zip"), b"PK\x03\x04 broken")
    assert response.status_code == 400 and "not a zip archive" in text(response)
    assert len(assignment_row(session, "vjp").versions) == 1


def test_version_zip_download_round_trips(client, session):
    login(client, "instructor")
    response = client.get(manage("gates", "/versions/1.zip"))
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert "gates-v1.zip" in response.headers["Content-Disposition"]
    assert specs.files_from_zip(response.data) == builtin_files("gates")


def test_regrade_on_a_new_version_enqueues_every_submission(client, session, enqueued):
    ids = submit_as_student(session, "vjp", 3)
    login(client, "instructor")
    page = text(client.get(manage("vjp")))
    assert "Regrade all 3 submission(s) against the new version" in page
    response = post(client, manage("vjp", "/versions"), spec_form(bumped("vjp"), base_version="1", regrade="y"))
    assert response.status_code == 302
    assert sorted(enqueued.ids) == ids
    vjp = assignment_row(session, "vjp")
    rows = session.scalars(select(Submission).where(Submission.id.in_(ids))).all()
    assert all(r.status == "queued" and r.version_id == vjp.current_version_id for r in rows)
    assert "3 submission(s) queued for regrading" in text(client.get(manage("vjp")))


def test_regrade_also_from_a_zip_upload(client, session, enqueued):
    ids = submit_as_student(session, "gates", 2)
    login(client, "instructor")
    response = upload(client, manage("gates", "/versions/zip"), make_zip(bumped("gates")), regrade="y")
    assert response.status_code == 302
    assert sorted(enqueued.ids) == ids


def test_no_regrade_unless_asked_or_when_the_version_fails(client, session, enqueued):
    ids = submit_as_student(session, "vjp", 2)
    first_version = assignment_row(session, "vjp").current_version_id
    login(client, "instructor")
    assert post(client, manage("vjp", "/versions"), spec_form(bumped("vjp"), base_version="1")).status_code == 302
    assert enqueued.ids == []
    broken = bumped("vjp", "3")
    broken["starter.py"] = broken["starter.py"].replace("def relu_backward(dout, x)", "def relu_backward(x, dout)")
    response = post(client, manage("vjp", "/versions"), spec_form(broken, base_version="2", regrade="y"))
    assert response.status_code == 302
    assert enqueued.ids == []
    assert "Nothing was regraded" in text(client.get(manage("vjp")))
    vjp = assignment_row(session, "vjp")
    assert vjp.current_version.number == 2 and not vjp.versions[-1].selftest_ok
    rows = session.scalars(select(Submission).where(Submission.id.in_(ids))).all()
    assert all(r.version_id == first_version for r in rows)


def test_regrade_checkbox_only_when_there_are_submissions(client):
    login(client, "instructor")
    assert "Regrade all" not in text(client.get(manage("vjp")))


# ------------------------------------------------------------------------ dates and policies


def settings(**overrides: str) -> dict[str, str]:
    data = {
        "open_at": "2030-01-10T09:00",
        "due_at": "2030-01-20T23:59",
        "late_mode": "penalty",
        "penalty_pct": "10",
        "cutoff_days": "3",
        "max_submissions": "5",
    }
    data.update(overrides)
    return data


def test_save_dates_and_policies(client, session):
    login(client, "instructor")
    response = post(client, manage("vjp", "/settings"), settings())
    assert response.status_code == 302
    vjp = assignment_row(session, "vjp")
    assert vjp.open_at == dt.datetime(2030, 1, 10, 9, 0, tzinfo=UTC)
    assert vjp.due_at == dt.datetime(2030, 1, 20, 23, 59, tzinfo=UTC)
    assert vjp.late_penalty_per_day == pytest.approx(0.1) and vjp.late_cutoff_days == 3
    assert vjp.max_submissions == 5
    page = text(client.get(manage("vjp")))
    assert "2030-01-20 23:59 UTC" in page and "10% off per day late" in page
    assert 'value="2030-01-20T23:59"' in page and "Due at (UTC)" in page

    # None: late work not accepted; blank limit: unlimited; blank dates: none.
    response = post(client, manage("vjp", "/settings"), settings(open_at="", due_at="", late_mode="none",
                                                                 penalty_pct="", cutoff_days="", max_submissions=""))
    assert response.status_code == 302
    vjp = assignment_row(session, "vjp")
    assert (vjp.open_at, vjp.due_at, vjp.late_penalty_per_day, vjp.late_cutoff_days, vjp.max_submissions) == (
        None, None, 0.0, 0, None
    )
    # A grace period without a penalty; seconds from browsers that send them are accepted.
    response = post(client, manage("vjp", "/settings"), settings(due_at="2030-01-20T23:59:30", penalty_pct="0"))
    assert response.status_code == 302
    vjp = assignment_row(session, "vjp")
    assert vjp.late_penalty_per_day == 0 and vjp.late_cutoff_days == 3 and vjp.due_at.second == 30


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"due_at": "2030-01-01T00:00"}, "the due date must be after the opening date (2030-01-10 09:00 UTC)"),
        ({"due_at": "2030-01-10T09:00"}, "the due date must be after the opening date"),
        ({"penalty_pct": "-5"}, "the penalty cannot be negative"),
        ({"penalty_pct": "150"}, "the penalty cannot be more than 100% per day"),
        ({"penalty_pct": "ten"}, "a number of percent, e.g. 10"),
        ({"penalty_pct": "nan"}, "a number of percent, e.g. 10"),
        ({"penalty_pct": ""}, "give the penalty per day in percent"),
        ({"cutoff_days": "2.5"}, "a whole number of days, e.g. 3"),
        ({"cutoff_days": "0"}, "between 1 and 365 days"),
        ({"cutoff_days": ""}, "give the number of days late submissions are accepted"),
        ({"due_at": "", "open_at": ""}, "late submissions need a due date to be late from"),
        ({"max_submissions": "0"}, "between 1 and 10000, or blank for unlimited"),
        ({"max_submissions": "many"}, "a whole number of submissions, or blank for unlimited"),
        ({"due_at": "next tuesday"}, "not a date and time (YYYY-MM-DD HH:MM, in UTC)"),
        ({"late_mode": "sometimes"}, "Not a valid choice"),
    ],
)
def test_settings_validation_errors(client, session, overrides, message):
    login(client, "instructor")
    before = assignment_row(session, "vjp")
    due_before = before.due_at
    response = post(client, manage("vjp", "/settings"), settings(**overrides))
    assert response.status_code == 400
    page = text(response)
    assert html.escape(message) in page
    # The form keeps what was typed.
    for key, value in overrides.items():
        if key in ("penalty_pct", "cutoff_days", "max_submissions") and value:
            assert f'value="{html.escape(value)}"' in page
    after = assignment_row(session, "vjp")
    assert after.due_at == due_before and after.max_submissions is None


def test_penalty_and_cutoff_are_ignored_when_late_work_is_not_accepted(client, session):
    login(client, "instructor")
    response = post(client, manage("vjp", "/settings"), settings(late_mode="none", penalty_pct="-3", cutoff_days="x"))
    assert response.status_code == 302
    vjp = assignment_row(session, "vjp")
    assert vjp.late_penalty_per_day == 0 and vjp.late_cutoff_days == 0


# -------------------------------------------------------------------------------- extensions


def test_grant_change_and_remove_an_extension(client, session):
    login(client, "instructor")
    vjp = assignment_row(session, "vjp")
    due = vjp.due_at
    later = (due + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    response = post(client, manage("vjp", "/extensions"), {"email": "Student@Example.com", "due_at": later})
    assert response.status_code == 302
    session.expire_all()
    student = accounts.find_user(session, "student@example.com")
    (ext,) = session.scalars(select(Extension).where(Extension.assignment_id == vjp.id)).all()
    assert ext.user_id == student.id and ext.due_at == (due + dt.timedelta(days=2)).replace(second=0)
    assert subs.policy_for(session, vjp, student.id).due_at == ext.due_at
    page = text(client.get(manage("vjp")))
    assert "Extension granted: student@example.com" in page

    even_later = (due + dt.timedelta(days=5)).strftime("%Y-%m-%dT%H:%M")
    assert post(client, manage("vjp", "/extensions"), {"email": "student@example.com", "due_at": even_later}).status_code == 302
    session.expire_all()
    (ext,) = session.scalars(select(Extension).where(Extension.assignment_id == vjp.id)).all()
    assert ext.due_at.strftime("%Y-%m-%dT%H:%M") == even_later
    assert "Extension changed" in text(client.get(manage("vjp")))

    ext_id = ext.id
    assert post(client, manage("vjp", f"/extensions/{ext_id}/remove")).status_code == 302
    session.expire_all()
    assert session.scalars(select(Extension)).all() == []
    assert post(client, manage("vjp", f"/extensions/{ext_id}/remove")).status_code == 404


@pytest.mark.parametrize(
    "email, when, message",
    [
        ("nobody@example.com", 2, "no member of this course has the email &#39;nobody@example.com&#39;"),
        ("ta@example.com", 2, "ta@example.com is TA in this course, not a student"),
        ("outsider@example.com", 2, "no member of this course has the email"),
        ("student@example.com", -1, "an extension must be later than the due date"),
        ("student@example.com", None, "give the new due date"),
        ("", 2, "give the student&#39;s email"),
    ],
)
def test_extension_errors(client, session, email, when, message):
    new_user(session, "outsider@example.com")
    login(client, "instructor")
    due = assignment_row(session, "vjp").due_at
    value = "" if when is None else (due + dt.timedelta(days=when)).strftime("%Y-%m-%dT%H:%M")
    response = post(client, manage("vjp", "/extensions"), {"email": email, "due_at": value})
    assert response.status_code == 400
    assert message in text(response)
    session.expire_all()
    assert session.scalars(select(Extension)).all() == []


def test_extension_needs_a_due_date(client, session):
    login(client, "instructor")
    post(client, manage("vjp", "/settings"), settings(open_at="", due_at="", late_mode="none"))
    response = post(client, manage("vjp", "/extensions"), {"email": "student@example.com", "due_at": "2031-01-01T00:00"})
    assert response.status_code == 400 and "this assignment has no due date; set one before granting extensions" in text(response)


def test_extension_of_another_assignment_is_404(client, session):
    login(client, "instructor")
    due = assignment_row(session, "vjp").due_at
    later = (due + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    post(client, manage("vjp", "/extensions"), {"email": "student@example.com", "due_at": later})
    session.expire_all()
    ext = session.scalars(select(Extension)).one()
    assert post(client, manage("gates", f"/extensions/{ext.id}/remove")).status_code == 404
    session.expire_all()
    assert session.scalars(select(Extension)).one().id == ext.id


# ----------------------------------------------------------------------------------- escaping


def test_user_written_text_is_escaped_everywhere(client, session):
    login(client, "instructor")
    evil = "<script>alert(1)</script>"
    assert post(client, "/courses/new", {"code": "xss", "title": evil}).status_code == 302
    post(client, "/courses/xss/manage/members", {"email": "xss@example.com", "name": evil, "role": "student"})
    files = probe_files()
    files["spec.yaml"] = files["spec.yaml"].replace("title: Sandbox probe", f'title: "{evil}"')
    assert post(client, "/courses/xss/manage/assignments/new", spec_form(files)).status_code == 302
    for path in ("/courses/xss/manage", "/courses/xss/assignments/probe/manage"):
        page = text(client.get(path))
        assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    bad = files.copy()
    bad["spec.yaml"] = "id: probe\ntitle: x\nversion: 1\nfunctions:\n  - name: f\n    args: [x]\n    forward: |\n      y = <script>(x)\n    returns: {value: y}\n"
    response = post(client, "/courses/xss/assignments/probe/manage/versions", spec_form(bad, base_version="1"))
    assert response.status_code == 400
    assert "<script>(x)" not in text(response) and "&lt;script&gt;(x)" in text(response)


# -------------------------------------------------------------------------------- PostgreSQL


def test_the_instructor_flow_on_postgresql(pg_url, tmp_path):
    """The same pages on the production database: aware UTC times, JSON files, counts."""
    from service_fixtures import Enqueued, test_settings

    from grader.store.db import make_engine, make_sessionmaker
    from grader.web import create_app

    enqueued = Enqueued()
    app = create_app(test_settings(pg_url, tmp_path), enqueue=enqueued)
    client = app.test_client()
    engine = make_engine(pg_url)
    try:
        with make_sessionmaker(engine)() as session:
            login(client, "instructor")
            assert post(client, "/courses/new", {"code": "pg-course", "title": "On PG"}).status_code == 302
            files = probe_files()
            files["solution.py"] = GOOD_SOLUTION
            assert post(client, "/courses/pg-course/manage/assignments/new", spec_form(files)).status_code == 302
            base = "/courses/pg-course/assignments/probe/manage"
            assert post(client, base + "/publish", {"published": "1"}).status_code == 302
            assert post(client, base + "/settings", settings()).status_code == 302
            response = post(client, "/courses/pg-course/manage/members", {"email": "pg-student@example.com", "role": "student"})
            assert response.status_code == 200
            response = post(client, base + "/extensions", {"email": "pg-student@example.com", "due_at": "2030-01-22T12:00"})
            assert response.status_code == 302
            probe = assignment_row(session, "probe", code="pg-course")
            student = accounts.find_user(session, "pg-student@example.com")
            assert probe.published and probe.due_at == dt.datetime(2030, 1, 20, 23, 59, tzinfo=UTC)
            assert subs.policy_for(session, probe, student.id).due_at == dt.datetime(2030, 1, 22, 12, 0, tzinfo=UTC)
            sub = subs.create_submission(session, probe, student, GOOD_SOLUTION.encode(), "s.py", enforce=False)
            session.commit()
            files["spec.yaml"] = files["spec.yaml"].replace("version: 1", "version: 2")
            response = post(client, base + "/versions", spec_form(files, base_version="1", regrade="y"))
            assert response.status_code == 302
            assert enqueued.ids == [sub.id]
            page = text(client.get(base))
            assert "Regrade all 1 submission(s)" in page and 'value="2030-01-22T12:00"' in page
            assert "1 submission(s) queued for regrading" in page
    finally:
        engine.dispose()
        app.extensions["grader.engine"].dispose()
