"""The attacks we fear, as tests, across the pages and the API.

Two courses: X is the demo course (student A = student@example.com, student B, the demo TA
and instructor); Y ("other") has its own student C, TA and instructor. Route coverage is
discovered from the app's URL map, so a page added later is held to the same rules: every
route that names a submission, or a course by code, is requested by someone who may not
see it, and must answer 404 and change nothing; the same request by someone who may see
it must not be a 404 (so the test cannot pass by requesting the wrong thing)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from grader.grade import grade_bytes
from grader.store import accounts, catalog, submissions
from grader.store.db import utcnow
from grader.store.models import ApiToken, Base, Course, Extension, Submission, User
from grader.trials import fmt_shape, make_trials
from service_fixtures import PASSWORDS, csrf_token, login
from test_api import (
    API,
    CORRECT_VJP,
    assignment_in,
    bearer,
    count_submissions,
    grade_now,
    live_server,
    post_file,
    token_for,
    user_by_email,
)

PASSWORD = "a-long-password-1"
# The world's submissions: graded, with a wrong dW, so that the pages which exist only for a
# failing visible trial (its downloads) answer someone allowed to see them. One grading
# with a fixed seed serves every submission of every test.
WORLD_CODE = Path(__file__).parent / "submissions" / "vjp" / "wrong_transposed_dW.py"
WORLD_SEED = 20261124
WORLD_TRIAL = {"function": "matmul_backward", "index": 0}  # visible, random shapes: dW fails
_world_results: dict[str, dict[str, Any]] = {}
STAFF_BLUEPRINTS = ("gradebook.", "instructor.")
# Form fields a mutating page might read; sent with every forged POST so that a route that
# checks its input before its permissions cannot hide behind a 400.
FORGED_FORM = {
    "role": "instructor",
    "email": "attacker@example.com",
    "name": "attacker",
    "published": "y",
    "due_at": "2030-01-01T00:00",
    "code": "def relu_backward(dout, x):\n    return dout\n",
    "roster": "email,role\nattacker@example.com,instructor\n",
}


@dataclass
class World:
    """Who is who, and one submission each; ids only (sessions come and go)."""

    users: dict[str, int] = field(default_factory=dict)  # a, b, c, ta_x, ta_y, inst_x, inst_y
    subs: dict[str, int] = field(default_factory=dict)  # a, b, c
    extensions: dict[str, int] = field(default_factory=dict)  # x (for B), y (for C)


EMAILS = {
    "a": "student@example.com",
    "b": "b@example.com",
    "c": "c@example.com",
    "ta_x": "ta@example.com",
    "ta_y": "ta-y@example.com",
    "inst_x": "instructor@example.com",
    "inst_y": "instructor-y@example.com",
}


def password_of(who: str) -> str:
    return {"a": PASSWORDS["student"], "ta_x": PASSWORDS["ta"], "inst_x": PASSWORDS["instructor"]}.get(who, PASSWORD)


@pytest.fixture
def world(session: Session) -> World:
    w = World()
    demo = session.scalar(select(Course).where(Course.code == "demo"))
    other = catalog.create_course(session, "other", "Other course")
    catalog.install_builtins(session, other, ids=["vjp"], published=True, due_at=utcnow().replace(year=utcnow().year + 1))
    for key, course, role, site_role in (
        ("b", demo, "student", "student"),
        ("c", other, "student", "student"),
        ("ta_y", other, "ta", "ta"),
        ("inst_y", other, "instructor", "instructor"),
    ):
        user = accounts.create_user(session, EMAILS[key], role=site_role, password=PASSWORD, name=key.upper())
        accounts.set_membership(session, course, user, role)
    for key, email in EMAILS.items():
        w.users[key] = user_by_email(session, email).id
    code = WORLD_CODE.read_bytes()
    for key, course in (("a", "demo"), ("b", "demo"), ("c", "other")):
        sub = submissions.create_submission(
            session, assignment_in(session, course, "vjp"), session.get(User, w.users[key]), code, f"{key}.py"
        )
        sub.seed = WORLD_SEED
        w.subs[key] = sub.id
    for key, course, student in (("x", "demo", "b"), ("y", "other", "c")):
        ext = Extension(
            assignment_id=assignment_in(session, course, "vjp").id,
            user_id=w.users[student],
            due_at=utcnow().replace(year=utcnow().year + 2),
        )
        session.add(ext)
        session.flush()
        w.extensions[key] = ext.id
    session.commit()
    for sub_id in w.subs.values():
        version = session.get(Submission, sub_id).version
        if version.digest not in _world_results:
            _world_results[version.digest] = grade_bytes(catalog.loaded_spec(version), code, seed=WORLD_SEED)
        held = submissions.claim(session, sub_id)
        assert held is not None and submissions.finish(session, held, _world_results[version.digest])
    return w


def logged_in(app: Any, who: str) -> Any:
    client = app.test_client()
    login(client, EMAILS[who], password_of(who))
    return client


def snapshot(app: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read on a fresh connection."""
    with app.extensions["grader.engine"].connect() as conn:
        return {
            table.name: sorted(tuple(map(repr, row)) for row in conn.execute(table.select()))
            for table in Base.metadata.sorted_tables
        }


def page_rules(app: Any, wanted: Iterable[str]) -> list[Any]:
    """The page routes (not the API, not static files) with any of the `wanted` arguments."""
    wanted = set(wanted)
    return [
        rule
        for rule in app.url_map.iter_rules()
        if rule.arguments & wanted and not rule.endpoint.startswith("api.") and rule.endpoint != "static"
    ]


def build(app: Any, rule: Any, values: dict[str, Any]) -> Optional[str]:
    """The rule's URL with these values, or None (with a warning: not silently) when the
    rule takes an argument the test does not know how to fill."""
    unknown = rule.arguments - values.keys()
    if unknown:
        warnings.warn(f"security tests cannot fill {sorted(unknown)} of {rule.rule}: not covered", stacklevel=2)
        return None
    return app.url_map.bind("localhost").build(rule.endpoint, {k: values[k] for k in rule.arguments})


def methods(rule: Any) -> list[str]:
    return sorted(m for m in rule.methods if m in ("GET", "POST"))


def request(client: Any, method: str, url: str, csrf: str) -> Any:
    if method == "GET":
        return client.get(url)
    return client.post(url, data={"csrf_token": csrf, **FORGED_FORM})


def assert_denied(app: Any, client: Any, rules: list[Any], values: dict[str, Any], legit: Optional[Any] = None) -> list[str]:
    """Every method of every rule is a 404 for `client`, and the database is unchanged;
    for `legit`, each GET is not a 404. Returns the URLs covered."""
    csrf = csrf_token(client, "/account")
    before = snapshot(app)
    wrong, covered = [], []
    for rule in rules:
        url = build(app, rule, values)
        if url is None:
            continue
        for method in methods(rule):
            status = request(client, method, url, csrf).status_code
            covered.append(f"{method} {url}")
            if status != 404:
                wrong.append(f"{method} {url} -> {status}")
            if legit is not None and method == "GET":
                status = legit.get(url).status_code
                assert status != 404, f"GET {url} is 404 for someone allowed to see it: the test requests the wrong thing"
    assert not wrong, "reachable by someone who may not see it:\n" + "\n".join(wrong)
    assert snapshot(app) == before, "a refused request changed the database"
    return covered


# --- students see only their own work --------------------------------------------------------


def _page(client, path: str) -> str:
    import re

    return re.sub(r'name="csrf_token" value="[^"]*"', 'name="csrf_token" value=""', client.get(path).get_data(as_text=True))


def test_a_student_cannot_reach_anothers_submission(app, client, session, world):
    a, b = logged_in(app, "a"), logged_in(app, "b")
    rules = page_rules(app, {"submission_id"})
    values = {"submission_id": world.subs["b"], **WORLD_TRIAL}
    covered = assert_denied(app, a, rules, values, legit=b)
    # Reading, downloading and regrading (a staff action) are all among them.
    for path in (f"/submissions/{world.subs['b']}", f"/submissions/{world.subs['b']}/download"):
        assert f"GET {path}" in covered
    assert any("regrade" in url for url in covered)
    trial_pages = [url for url in covered if "/trials/matmul_backward/" in url]
    assert len(trial_pages) == 3, trial_pages  # a failing trial's downloads: zip, npz, all of them
    # The 404 says nothing a missing id would not say.
    # (Less the CSRF token of the logout form: it carries a timestamp, so two pages
    # rendered a second apart differ there.)
    assert _page(a, f"/submissions/{world.subs['b']}") == _page(a, "/submissions/999999")
    assert _page(a, f"/submissions/{world.subs['b']}/download") == _page(a, "/submissions/999999/download")

    # And through the API.
    token_a = token_for(session, EMAILS["a"])
    denied = client.get(f"{API}/submissions/{world.subs['b']}", headers=bearer(token_a))
    assert denied.status_code == 404
    assert denied.get_json() == client.get(f"{API}/submissions/999999", headers=bearer(token_a)).get_json()
    assert client.get(f"{API}/submissions/{world.subs['a']}", headers=bearer(token_a)).status_code == 200


def test_a_student_cannot_regrade_even_their_own_submission(app, world):
    a = logged_in(app, "a")
    rules = [r for r in page_rules(app, {"submission_id"}) if "POST" in r.methods and r.endpoint.startswith(STAFF_BLUEPRINTS)]
    assert rules, "no staff action on a submission exists (regrade): nothing to test"
    assert_denied(app, a, rules, {"submission_id": world.subs["a"]})


def test_students_cannot_reach_staff_pages(app, world):
    a = logged_in(app, "a")
    rules = [r for r in page_rules(app, {"code", "submission_id"}) if r.endpoint.startswith(STAFF_BLUEPRINTS)]
    values = {
        "code": "demo",
        "slug": "vjp",
        "submission_id": world.subs["b"],
        "user_id": world.users["b"],
        "extension_id": world.extensions["x"],
        "number": 1,
        **WORLD_TRIAL,
    }
    covered = assert_denied(app, a, rules, values, legit=logged_in(app, "inst_x"))
    assert any("gradebook" in url for url in covered) and any("manage" in url for url in covered)


def test_a_student_cannot_create_a_course(app, session, world):
    for who in ("a", "ta_x"):
        client = logged_in(app, who)
        before = snapshot(app)
        response = client.post("/courses/new", data={"csrf_token": csrf_token(client, "/account"), "code": "mine", "title": "Mine"})
        assert response.status_code == 404
        assert snapshot(app) == before


def test_course_roles_are_per_course_not_site_wide(app, client, session, world):
    """A site-wide instructor (may create courses) who is a student in X, or a TA in Y who
    is a student in X, is a student in X: B's work stays B's."""
    mixed = accounts.create_user(session, "mixed@example.com", role="instructor", password=PASSWORD)
    accounts.set_membership(session, session.scalar(select(Course).where(Course.code == "demo")), mixed, "student")
    accounts.set_membership(session, session.scalar(select(Course).where(Course.code == "other")), mixed, "ta")
    session.commit()
    token = token_for(session, "mixed@example.com")
    assert client.get(f"{API}/submissions/{world.subs['b']}", headers=bearer(token)).status_code == 404
    assert client.get(f"{API}/submissions/{world.subs['c']}", headers=bearer(token)).status_code == 200
    page = app.test_client()
    login(page, "mixed@example.com", PASSWORD)
    assert page.get(f"/submissions/{world.subs['b']}").status_code == 404
    assert page.get("/courses/demo/gradebook").status_code == 404
    assert page.get(f"/submissions/{world.subs['c']}").status_code == 200


# --- TAs see only their courses --------------------------------------------------------------


def test_a_ta_of_one_course_cannot_reach_another(app, client, session, world):
    ta_x = logged_in(app, "ta_x")
    rules = page_rules(app, {"code", "submission_id"})
    values = {
        "code": "other",
        "slug": "vjp",
        "submission_id": world.subs["c"],
        "user_id": world.users["c"],
        "extension_id": world.extensions["y"],
        "number": 1,
        **WORLD_TRIAL,
    }
    covered = assert_denied(app, ta_x, rules, values, legit=logged_in(app, "inst_y"))
    assert f"GET /submissions/{world.subs['c']}" in covered
    assert "GET /courses/other/gradebook" in covered

    token = token_for(session, EMAILS["ta_x"])
    assert client.get(f"{API}/submissions/{world.subs['c']}", headers=bearer(token)).status_code == 404
    assert client.get(f"{API}/submissions/{world.subs['b']}", headers=bearer(token)).status_code == 200  # own course
    listed = client.get(f"{API}/assignments", headers=bearer(token)).get_json()["assignments"]
    assert {a["course"] for a in listed} == {"demo"}
    before = count_submissions(session)
    assert post_file(client, token, course="other").status_code == 404
    assert count_submissions(session) == before


def test_a_ta_cannot_do_what_only_instructors_do(app, world):
    """No promoting oneself, importing a roster, publishing or changing a spec."""
    rules = [r for r in page_rules(app, {"code"}) if r.endpoint.startswith("instructor.")]
    values = {"code": "demo", "slug": "vjp", "user_id": world.users["ta_x"], "extension_id": world.extensions["x"], "number": 1}
    assert_denied(app, logged_in(app, "ta_x"), rules, values, legit=logged_in(app, "inst_x"))


# --- tokens -------------------------------------------------------------------------------


def test_tokens_are_stored_hashed(app, client, session):
    login(client, "student")
    page = client.post("/account/tokens", data={"name": "laptop", "csrf_token": csrf_token(client, "/account")})
    token = re.search(r'id="new-token">(bpg_[^<]+)<', page.get_data(as_text=True)).group(1)
    assert client.get(f"{API}/me", headers=bearer(token)).status_code == 200
    row = session.scalar(select(ApiToken))
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.prefix == token[:12] and len(token) > 40  # the prefix alone is not the token
    # Not in any column of any table, nor anywhere in the database's files.
    assert token not in json.dumps(snapshot(app))
    path = Path(app.extensions["grader.engine"].url.database)
    for file in (path, path.with_name(path.name + "-wal")):
        if file.exists():
            assert token.encode() not in file.read_bytes()


def test_a_revoked_token_fails(app, client, session):
    login(client, "student")
    page = client.post("/account/tokens", data={"name": "old", "csrf_token": csrf_token(client, "/account")})
    token = re.search(r'id="new-token">(bpg_[^<]+)<', page.get_data(as_text=True)).group(1)
    assert client.get(f"{API}/me", headers=bearer(token)).status_code == 200
    row_id = session.scalar(select(ApiToken.id))
    assert client.post(f"/account/tokens/{row_id}/revoke", data={"csrf_token": csrf_token(client, "/account")}).status_code == 302
    response = client.get(f"{API}/me", headers=bearer(token))
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert post_file(client, token).status_code == 401
    assert count_submissions(session) == 0


def test_someone_elses_token_cannot_be_revoked(app, session):
    victim = token_for(session, EMAILS["ta_x"])
    row_id = session.scalar(select(ApiToken.id))
    attacker = logged_in(app, "a")
    assert attacker.post(f"/account/tokens/{row_id}/revoke", data={"csrf_token": csrf_token(attacker, "/account")}).status_code == 404
    assert app.test_client().get(f"{API}/me", headers=bearer(victim)).status_code == 200


def test_tokens_of_disabled_and_deleted_users_fail(client, session, world):
    disabled, deleted = token_for(session, EMAILS["b"]), token_for(session, EMAILS["c"])
    assert client.get(f"{API}/me", headers=bearer(disabled)).status_code == 200
    session.get(User, world.users["b"]).active = False
    session.delete(session.get(User, world.users["c"]))
    session.commit()
    assert client.get(f"{API}/me", headers=bearer(disabled)).status_code == 401
    assert client.get(f"{API}/me", headers=bearer(deleted)).status_code == 401
    assert session.scalar(select(ApiToken).where(ApiToken.user_id == world.users["c"])) is None


def test_a_token_is_not_a_session(app, session):
    token = token_for(session, EMAILS["a"])
    for cookie in ("session", "remember_token"):
        client = app.test_client()
        client.set_cookie(cookie, token)
        assert client.get("/").status_code == 302  # to the login page
        assert client.get("/account").status_code == 302
    client = app.test_client()
    for path in ("/", "/account", "/courses/demo/assignments/vjp"):
        assert client.get(path, headers=bearer(token)).status_code == 302
    # A page POST with a token and no session: refused, nothing stored.
    response = client.post("/courses/demo/assignments/vjp/submit", headers=bearer(token), data={"code": "x = 1\n"})
    assert response.status_code in (302, 400) and count_submissions(session) == 0


def test_cookies_do_not_authenticate_the_api(app, session, world):
    """So a cross-site form posting to the API from a logged-in browser gets nowhere, and
    the API can do without CSRF tokens."""
    browser = logged_in(app, "a")
    assert browser.get("/").status_code == 200  # logged in for the pages
    assert browser.get(f"{API}/me").status_code == 401
    assert browser.get(f"{API}/assignments").status_code == 401
    assert browser.get(f"{API}/submissions/{world.subs['a']}").status_code == 401
    forged = post_file(browser, None, headers={"Origin": "https://evil.example"})
    assert forged.status_code == 401
    assert post_file(browser, "bpg_guess").status_code == 401  # a bad token is not rescued by the cookie
    assert count_submissions(session) == 3  # the world's


def test_the_api_takes_tokens_only_from_the_header(client, session):
    """Tokens in URLs end up in access logs, proxies and browser history."""
    token = token_for(session, EMAILS["a"])
    for query in (f"token={token}", f"access_token={token}", f"api_key={token}"):
        assert client.get(f"{API}/me?{query}").status_code == 401
    assert client.post(f"{API}/submissions", data={"token": token, "assignment": "vjp"}).status_code == 401


def test_api_answers_set_no_cookies_and_are_not_cached(client, session):
    token = token_for(session, EMAILS["a"])
    for response in (
        client.get(f"{API}/me", headers=bearer(token)),
        post_file(client, token),
        client.get(f"{API}/me"),
    ):
        assert "Set-Cookie" not in response.headers
        assert response.headers["Cache-Control"] == "private, no-store"


# --- hidden trials ------------------------------------------------------------------------

HOSTILE = b'''
import sys
import numpy as np

def relu_backward(dout, x):
    # Tries to leak a hidden input through what it prints...
    print("LEAK-PRINT", np.shape(x), np.ravel(x)[:3].tolist())
    return dout * (np.asarray(x) > 0)

def matmul_backward(dout, x, W):
    # ... through an exception message ...
    raise ValueError(f"LEAK-RAISE shape={x.shape} W={W.shape} first={x.ravel()[0]!r}")

def affine_backward(dout, x, W, b):
    # ... and through a wrong answer whose shape the feedback would describe.
    sys.stderr.write(f"LEAK-STDERR {x.shape}\\n")
    return dout @ W.T, x.T @ dout, np.zeros((x.shape[0] + 1,))
'''


def hidden_secrets(spec: Any, seed: int) -> tuple[set[str], set[str]]:
    """Strings that would give away hidden inputs: their first values, and shapes that no
    visible trial shares (so seeing them means a hidden trial was described)."""
    values: set[str] = set()
    visible_shapes: set[str] = set()
    hidden_shapes: set[str] = set()
    for fn in spec.functions:
        for trial in make_trials(spec, fn, seed):
            shapes = {fmt_shape(tuple(s)) for s in trial.arg_shapes.values() if isinstance(s, tuple) and len(s) > 1}
            if trial.hidden:
                hidden_shapes |= shapes
                for arg in trial.args:
                    flat = getattr(arg, "ravel", None)
                    if flat is not None and arg.size:
                        values |= {repr(float(v)) for v in arg.ravel()[:3]}
            else:
                visible_shapes |= shapes
    return values, hidden_shapes - visible_shapes


def test_hidden_trial_inputs_never_reach_a_student(app, client, session):
    vjp = assignment_in(session, "demo", "vjp")
    student = user_by_email(session, EMAILS["a"])
    sub = submissions.create_submission(session, vjp, student, HOSTILE, "hostile.py")
    session.commit()
    # Graded for real, by the same core a worker runs.
    spec = catalog.loaded_spec(vjp.current_version)
    first = grade_bytes(spec, HOSTILE, seed=sub.seed)
    assert first["score"] == 4.0, first["messages"]  # relu and two of affine's outputs pass
    grade_now(session, sub.id)
    values, shapes = hidden_secrets(spec, sub.seed)
    assert values and "(160, 240)" in shapes  # the large hidden trial at least

    token = token_for(session, EMAILS["a"])
    body = client.get(f"{API}/submissions/{sub.id}", headers=bearer(token)).get_json()
    result = body["result"]
    hidden = [t for part in result["parts"] for t in part["trials"] if t["hidden"]]
    assert len(hidden) == 3 * 4  # 3 random + 1 large per function
    for trial in hidden:
        assert set(trial) <= {"index", "label", "hidden", "status", "messages", "outputs"}, trial
    visible_leaks = [t for part in result["parts"] for t in part["trials"] if not t["hidden"]]
    assert visible_leaks and all("shapes" in t for t in visible_leaks)  # visible trials are described
    assert "LEAK-PRINT" in json.dumps(result) and "LEAK-RAISE" in json.dumps(result)  # visible ones may show

    login(client, "student")
    # Downloads: hidden trials are 404 though they failed; the visible ones and the zip of
    # all failing trials hold only visible trials' arrays.
    page = client.get(f"/submissions/{sub.id}").get_data(as_text=True)
    hidden_arrays = [
        arg for fn in spec.functions for t in make_trials(spec, fn, sub.seed) if t.hidden for arg in t.args if hasattr(arg, "shape")
    ]
    downloads = hidden_failing = 0
    for part in result["parts"]:
        base = f"/submissions/{sub.id}/trials/{part['function']}"
        for trial in part["trials"]:
            urls = [f"{base}/{trial['index']}/repro.zip", f"{base}/{trial['index']}/inputs.npz"]
            if trial["hidden"]:
                hidden_failing += trial["status"] != "passed"
                for url in urls:
                    assert client.get(url).status_code == 404, url
                    assert url not in page
            elif trial["status"] != "passed":
                assert all(url in page for url in urls)
        every = client.get(f"{base}/repro.zip")
        if every.status_code == 404:
            continue
        with zipfile.ZipFile(io.BytesIO(every.data)) as archive:
            for name in archive.namelist():
                data = archive.read(name)
                leaked = [s for s in values | shapes if s.encode() in data]
                assert not leaked, f"hidden inputs in {name}: {leaked}"
                if name.endswith(".npz"):
                    downloads += 1
                    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                        for key in npz.files:
                            assert not any(
                                np.shape(h) == npz[key].shape and np.array_equal(h, npz[key]) for h in hidden_arrays
                            ), f"a hidden input in {name}: {key}"
    assert downloads >= 5 and hidden_failing >= 4  # matmul_backward raised on every trial
    for where, text_ in (
        ("API", json.dumps(body)),
        ("submission page", client.get(f"/submissions/{sub.id}").get_data(as_text=True)),
        ("status.json", client.get(f"/submissions/{sub.id}/status.json").get_data(as_text=True)),
    ):
        leaked = [s for s in values | shapes if s in text_]
        assert not leaked, f"hidden inputs in the {where}: {leaked}"


# --- uploads ------------------------------------------------------------------------------


def test_uploads_over_the_cap_are_refused_and_store_nothing(app, client, session):
    cap = app.extensions["grader.settings"].max_upload_bytes
    token = token_for(session, EMAILS["a"])
    over = b"#" * (cap + 1)
    assert post_file(client, token, data=over).status_code == 413
    assert post_file(client, token, data=b"#" * (7 << 20)).status_code == 413  # over the whole-request cap
    assert count_submissions(session) == 0

    page = logged_in(app, "a")
    csrf = csrf_token(page, "/courses/demo/assignments/vjp")
    huge = page.post(
        "/courses/demo/assignments/vjp/submit",
        data={"csrf_token": csrf, "file": (__import__("io").BytesIO(b"#" * (7 << 20)), "big.py")},
    )
    assert huge.status_code == 413
    # One byte over the file cap: the form page says so (400 with the limit named; the API says 413).
    over_page = page.post(
        "/courses/demo/assignments/vjp/submit",
        data={"csrf_token": csrf, "file": (__import__("io").BytesIO(over), "big.py")},
    )
    assert over_page.status_code in (400, 413)
    assert f"{cap // 1024:,} KiB" in over_page.get_data(as_text=True)
    pasted = page.post("/courses/demo/assignments/vjp/submit", data={"csrf_token": csrf, "code": "#" * (cap + 1)})
    assert pasted.status_code in (400, 413)
    assert count_submissions(session) == 0


def test_pages_refuse_forms_without_a_csrf_token(app, session, world):
    student = logged_in(app, "a")
    assert student.post("/courses/demo/assignments/vjp/submit", data={"code": "x = 1\n"}).status_code == 400
    ta = logged_in(app, "ta_x")
    before = snapshot(app)
    assert ta.post(f"/submissions/{world.subs['b']}/regrade").status_code == 400
    assert snapshot(app) == before
    assert count_submissions(session) == 3


# --- injection ----------------------------------------------------------------------------

EVIL_NAME = "<script>alert('name')</script>'); DROP TABLE users; --"
EVIL_EMAIL = "o'neil\"><img/src=x/onerror=alert(1)>@example.com"
EVIL_TITLE = "<b onmouseover=alert(2)>Course</b>' OR '1'='1"


def test_sql_and_html_injection_is_inert(app, client, session):
    evil = accounts.create_user(session, EVIL_EMAIL, password=PASSWORD, name=EVIL_NAME)
    course = catalog.create_course(session, "evil", EVIL_TITLE)
    catalog.install_builtins(session, course, ids=["vjp"])
    accounts.set_membership(session, course, evil, "student")
    accounts.set_membership(session, session.scalar(select(Course).where(Course.code == "demo")), evil, "student")
    session.commit()
    users_before = session.scalar(text("SELECT count(*) FROM users"))

    # The quotes reach SQL only as bound values: logging in with the odd email works, and a
    # classic injection as email or password logs nobody in.
    page = app.test_client()
    login(page, EVIL_EMAIL, PASSWORD)
    for email, password in (("' OR '1'='1", "' OR '1'='1"), (EVIL_EMAIL + "' --", "x")):
        other = app.test_client()
        other.get("/login")
        assert other.post("/login", data={"email": email, "password": password, "csrf_token": csrf_token(other)}).status_code in (400, 401)

    sid = post_file(client, token_for(session, evil.email), course="demo").get_json()["id"]
    ta = logged_in(app, "ta_x")
    pages = {
        "home": page.get("/").get_data(as_text=True),
        "account": page.get("/account").get_data(as_text=True),
        "assignment": page.get("/courses/evil/assignments/vjp").get_data(as_text=True),
        "submission (own)": page.get(f"/submissions/{sid}").get_data(as_text=True),
        "submission (TA)": ta.get(f"/submissions/{sid}").get_data(as_text=True),
        "gradebook": ta.get("/courses/demo/gradebook").get_data(as_text=True),
        "gradebook (assignment)": ta.get("/courses/demo/assignments/vjp/gradebook").get_data(as_text=True),
    }
    for name, html in pages.items():
        for raw in ("<script>alert", "<img/src=x", "<b onmouseover"):
            assert raw not in html, f"unescaped user text on the {name} page"
    assert "&lt;script&gt;alert" in pages["gradebook"] or "&lt;script&gt;alert(&#39;name&#39;)" in pages["gradebook"]
    assert "&lt;b onmouseover" in pages["home"]

    # The API returns the text as it is (JSON is not HTML), escaped by the JSON encoder.
    me = client.get(f"{API}/me", headers=bearer(token_for(session, evil.email)))
    assert me.get_json()["name"] == EVIL_NAME and me.get_json()["email"] == EVIL_EMAIL.lower()
    assert me.mimetype == "application/json" and "<script>" not in me.get_data(as_text=True)
    assert {c["title"] for c in me.get_json()["courses"]} == {EVIL_TITLE, "Backpropagation (demo course)"}

    assert session.scalar(text("SELECT count(*) FROM users")) == users_before
    assert session.scalar(text("SELECT count(*) FROM courses")) == 2


# --- secrets ------------------------------------------------------------------------------


def test_no_secret_reaches_the_logs_or_the_pages(app, session, caplog, world):
    caplog.set_level("DEBUG")
    secret_key = app.config["SECRET_KEY"]
    client = app.test_client()
    login(client, "student")
    created = client.post("/account/tokens", data={"name": "cli", "csrf_token": csrf_token(client, "/account")})
    token = re.search(r'id="new-token">(bpg_[^<]+)<', created.get_data(as_text=True)).group(1)

    api = app.test_client()
    sid = post_file(api, token, data=CORRECT_VJP.read_bytes()).get_json()["id"]
    grade_now(session, sid)
    api.get(f"{API}/submissions/{sid}", headers=bearer(token))
    api.get(f"{API}/me", headers=bearer(token + "x"))  # a failed attempt is logged, if at all, without the token
    post_file(api, token, assignment="nope")
    post_file(api, token, data=b"#" * (2 << 20))
    with live_server(app) as url:  # the HTTP server's access log too
        from click.testing import CliRunner

        from grader.cli import main

        out = CliRunner().invoke(main, ["submit", "vjp", str(CORRECT_VJP)], env={"GRADER_URL": url, "GRADER_TOKEN": token})
        assert out.exit_code == 0 and token not in out.output

    session.expire_all()
    hashes = [u.password_hash for u in session.scalars(select(User)) if u.password_hash]
    token_hashes = list(session.scalars(select(ApiToken.token_hash)))
    secrets = {"SECRET_KEY": secret_key, "token": token, **{f"password hash {i}": h for i, h in enumerate(hashes)}}
    secrets |= {f"token hash {i}": h for i, h in enumerate(token_hashes)}
    secrets |= {f"password {who}": pw for who, pw in PASSWORDS.items()}
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "POST /api/v1/submissions" in logs  # the access log was captured
    for name, value in secrets.items():
        assert value not in logs, f"{name} in the logs"

    # Every page the instructor and the student can open (their own arguments filled in).
    values = {
        "code": "demo",
        "slug": "vjp",
        "submission_id": sid,
        "user_id": world.users["a"],
        "extension_id": world.extensions["x"],
        "number": 1,
        **WORLD_TRIAL,
    }
    opened = 0
    for who in ("inst_x", "a"):
        browser = logged_in(app, who)
        for rule in app.url_map.iter_rules():
            if "GET" not in rule.methods or rule.endpoint == "static" or rule.endpoint.startswith("api."):
                continue
            url = build(app, rule, values)
            if url is None:
                continue
            response = browser.get(url)
            opened += response.status_code == 200
            body = response.get_data()  # bytes: some are downloads (a zip)
            for name, value in secrets.items():
                assert value.encode() not in body, f"{name} on {url} (as {who})"
    assert opened >= 10
