"""The JSON API, used by the `grader submit` client and by integrations.

Authentication is by API token only (`Authorization: Bearer TOKEN`, created on the account
page or with `grader tokens create`). The session cookie is never consulted here: a page a
student has open in a browser cannot be used to forge API calls (which is why the blueprint
may be exempt from CSRF), and a token never works as a login for the pages.

Errors are JSON `{"error": <HTTP reason>, "detail": <what to do about it>}`; anything the
token's user may not see is a 404, exactly like a missing id."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from typing import Any, Optional

from flask import Blueprint, Response, current_app, g, request, send_file, url_for
from flask_limiter.util import get_remote_address
from sqlalchemy import bindparam, select
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BuildError

from grader.grade import MAX_SOURCE_BYTES
from grader.policy import NotAccepted, check_accepting, score_of, submissions_left
from grader.store import accounts, submissions
from grader.store.db import utcnow
from grader.store.models import Assignment, Course, Membership, Submission, User
from grader.web import access, repro_view
from grader.web.database import db
from grader.web.extensions import limiter

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = logging.getLogger("grader.api")

REALM = 'Bearer realm="backprop-grader"'
# The keys a hidden trial carries in a result (grader/grade.py `_trial_entry` plus the
# verdicts). The core already strips shapes, dims and timings from hidden trials; keeping
# only these here as well means a future field can never leak a hidden input by accident.
HIDDEN_TRIAL_KEYS = frozenset({"index", "label", "hidden", "status", "messages", "outputs"})


class ApiError(Exception):
    """An error answer: status code, a sentence for the person at the other end, and
    optional extra JSON fields (e.g. the choices when a request is ambiguous)."""

    def __init__(self, code: int, detail: str, headers: Optional[dict[str, str]] = None, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


@bp.after_request
def _private(response: Response) -> Response:
    # Answers carry one person's work and scores: no shared cache may keep them, and a
    # poller must always see the current status.
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    body = {"error": HTTP_STATUS_CODES.get(exc.code, "Error"), "detail": exc.detail, **exc.extra}
    return _json(body, exc.code, exc.headers)


def _json(payload: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
    """A JSON answer with '<', '>' and '&' written as \\u escapes: the same data to any JSON
    parser, but inert if a careless client (or an old browser) ever treats it as HTML.
    Names, titles and file names here are typed by users."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return current_app.response_class(text + "\n", status=status, headers=headers, mimetype="application/json")


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> Response:
    # The whole request was over the app's cap: say what the file limit is, which is what
    # the person submitting can act on.
    return _api_error(ApiError(413, _too_large_detail()))


def _too_large_detail() -> str:
    return f"The upload is too large: the limit is {_upload_cap() // 1024} KiB per file."


def _upload_cap() -> int:
    # The grading core refuses anything over MAX_SOURCE_BYTES, so a larger setting could
    # only turn a clear 413 into a refusal later.
    return min(current_app.extensions["grader.settings"].max_upload_bytes, MAX_SOURCE_BYTES)


# --- authentication ---------------------------------------------------------------------


def _bearer_token() -> Optional[str]:
    """The token from the Authorization header; never from the query string or a cookie
    (URLs end up in logs and browser history)."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _authenticate() -> Optional[User]:
    """The token's user, looked up once per request (the rate limiter's key asks first)."""
    if "api_user" not in g:
        token = _bearer_token()
        found = accounts.user_for_token(db(), token) if token else None
        if found is not None and db().dirty:
            db().commit()  # the token's last_used_at, shown on the account page
        g.api_user = found
        g.api_token_given = token is not None
    return g.api_user  # type: ignore[no-any-return]


def _require_user() -> User:
    found = _authenticate()
    if found is not None:
        return found
    if g.api_token_given:
        raise ApiError(
            401,
            "The API token is not valid: it is unknown, revoked, or its account is disabled. "
            "Create a new one on your account page.",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    raise ApiError(
        401,
        "Send an API token in the header 'Authorization: Bearer TOKEN' "
        "(create one on your account page). Cookies do not authenticate the API.",
        headers={"WWW-Authenticate": REALM},
    )


def _rate_key() -> str:
    """Submissions are limited per user (all their tokens together); requests without a
    valid token per address."""
    found = _authenticate()
    return f"api-user:{found.id}" if found is not None else f"api-anon:{get_remote_address()}"


def _submit_rate() -> str:
    return current_app.extensions["grader.settings"].submit_rate  # type: ignore[no-any-return]


# --- routes ------------------------------------------------------------------------------


@bp.get("/me")
def me() -> Response:
    who = _require_user()
    rows = access.courses_of(who)
    return _json(
        {
            "id": who.id,
            "email": who.email,
            "name": who.name,
            "role": who.role,
            "courses": [{"code": course.code, "title": course.title, "role": role} for course, role in rows],
        }
    )


@bp.get("/assignments")
def assignments() -> Response:
    """The assignments the token's user can see: published ones in the courses they take,
    every one in the courses they teach."""
    who = _require_user()
    rows = db().execute(
        select(Assignment, Course, Membership.role)
        .join(Course, Course.id == Assignment.course_id)
        .join(Membership, (Membership.course_id == Course.id) & (Membership.user_id == who.id))
        .order_by(Course.code, Assignment.id)
    ).all()
    now = utcnow()
    return _json(
        {"assignments": [_assignment_json(a, course, role, who, now) for a, course, role in rows if _visible(a, role)]}
    )


@bp.post("/submissions")
@limiter.limit(_submit_rate, key_func=_rate_key)
def create_submission() -> Response:
    who = _require_user()
    slug = (request.form.get("assignment") or "").strip()
    code = (request.form.get("course") or "").strip().lower()
    upload = request.files.get("file")
    missing = [name for name, given in (("assignment", slug), ("file", upload and upload.filename)) if not given]
    if missing or upload is None or not upload.filename:
        raise ApiError(
            400,
            f"Missing {' and '.join(missing)}. Send multipart/form-data with the fields "
            "'assignment' (the assignment id, e.g. vjp) and 'file' (your .py file), "
            "and 'course' (the course code) if you take several courses with that assignment.",
        )
    if not upload.filename.lower().endswith(".py"):
        raise ApiError(400, f"{_shown_name(upload.filename)} is not a .py file: submit the Python file with your functions.")
    cap = _upload_cap()
    data = upload.stream.read(cap + 1)  # never more than the cap plus one byte in memory
    if len(data) > cap:
        raise ApiError(413, _too_large_detail())

    assignment, role = _assignment_to_submit(who, slug, code)
    try:
        # Staff may submit to any assignment of their course, published or not, at any
        # time: that is how a TA tries an assignment before students see it.
        sub = submissions.create_submission(
            db(), assignment, who, data, upload.filename, via="api", enforce=not access.is_staff(role)
        )
    except NotAccepted as exc:
        db().rollback()
        raise ApiError(409, _sentence(str(exc))) from None
    db().commit()  # the row exists before any worker can be told about it
    try:
        current_app.extensions["grader.enqueue"]([sub.id])
    except Exception:  # noqa: BLE001 - the row is queued; the sweeper re-sends it
        log.exception("submission=%s event=enqueue-failed (the sweeper will retry)", sub.id)
    url = url_for("api.submission", submission_id=sub.id, _external=True)
    body = {"id": sub.id, "status": sub.status, "url": url, "html_url": _html_url(sub.id)}
    return _json(body, 202, {"Location": url})


@bp.get("/submissions/<int:submission_id>")
def submission(submission_id: int) -> Response:
    who = _require_user()
    sub, role = access.submission_for(submission_id, who)
    return _json(_submission_json(sub, role))


# The downloads of failing visible trials, as on the result page but for a token
# (grader/web/repro_view.py decides what may be downloaded; anything else is a 404).


@bp.get("/submissions/<int:submission_id>/trials/<function>/<int:index>/repro.zip")
@limiter.shared_limit(repro_view.DOWNLOAD_RATE, scope="downloads", key_func=_rate_key)
def trial_repro(submission_id: int, function: str, index: int) -> Response:
    sub, _role = access.submission_for(submission_id, _require_user())
    return _attachment(*repro_view.trial_zip(sub, function, index))


@bp.get("/submissions/<int:submission_id>/trials/<function>/<int:index>/inputs.npz")
@limiter.shared_limit(repro_view.DOWNLOAD_RATE, scope="downloads", key_func=_rate_key)
def trial_inputs(submission_id: int, function: str, index: int) -> Response:
    sub, _role = access.submission_for(submission_id, _require_user())
    return _attachment(*repro_view.trial_npz(sub, function, index))


@bp.get("/submissions/<int:submission_id>/trials/<function>/repro.zip")
@limiter.shared_limit(repro_view.DOWNLOAD_RATE, scope="downloads", key_func=_rate_key)
def trials_repro(submission_id: int, function: str) -> Response:
    sub, _role = access.submission_for(submission_id, _require_user())
    return _attachment(*repro_view.function_zip(sub, function))


def _attachment(data: bytes, name: str, mimetype: str) -> Response:
    return send_file(io.BytesIO(data), mimetype=mimetype, as_attachment=True, download_name=name, max_age=0)


# --- helpers -----------------------------------------------------------------------------


def _visible(assignment: Assignment, role: str) -> bool:
    return access.is_staff(role) or assignment.published


# Built once, not per submission: building a statement (and its cache key) costs about as
# much CPU as running it.
_SUBMIT_TARGET = (
    select(Assignment, Course.code, Membership.role)
    .join(Course, Course.id == Assignment.course_id)
    .join(Membership, (Membership.course_id == Course.id) & (Membership.user_id == bindparam("user_id")))
    .where(Assignment.slug == bindparam("slug"))
    .order_by(Course.code)
)
_SUBMIT_TARGET_IN = _SUBMIT_TARGET.where(Course.code == bindparam("code"))


def _assignment_to_submit(who: User, slug: str, code: str) -> tuple[Assignment, str]:
    """The assignment with this id in one of the user's courses (the one named by `code`
    when given), with the user's role there; 404 when there is none they can see, 400
    listing the courses when the id alone is ambiguous."""
    query, params = (_SUBMIT_TARGET_IN, {"code": code}) if code else (_SUBMIT_TARGET, {})
    rows = db().execute(query, {"user_id": who.id, "slug": slug, **params})
    found = [(a, course_code, role) for a, course_code, role in rows if _visible(a, role)]
    if not found:
        where = f"course {code!r}" if code else "your courses"
        raise ApiError(404, f"There is no assignment {slug!r} in {where} (or it is not open to you).")
    if len(found) > 1:
        choices = [course_code for _, course_code, _ in found]
        raise ApiError(
            400,
            f"Assignment {slug!r} is in several of your courses ({', '.join(choices)}): say which with the 'course' field.",
            choices=choices,
        )
    assignment, _, role = found[0]
    return assignment, role


def _assignment_json(a: Assignment, course: Course, role: str, who: User, now: dt.datetime) -> dict[str, Any]:
    policy = submissions.policy_for(db(), a, who.id)
    used = submissions.used_submissions(db(), a.id, who.id)
    staff = access.is_staff(role)
    reason: Optional[str] = None
    if a.current_version is None:
        reason = "this assignment has no spec yet"
    elif not staff:
        try:
            check_accepting(now, a.published, a.open_at, policy, used, a.max_submissions)
        except NotAccepted as exc:
            reason = str(exc)
    return {
        "course": course.code,
        "course_title": course.title,
        "id": a.slug,
        "title": a.title,
        "role": role,
        "published": a.published,
        "open_at": _iso(a.open_at),
        "due_at": _iso(policy.due_at),  # the user's own: an extension replaces the course's
        "closes_at": _iso(policy.closes_at),
        "late_policy": policy.describe(),
        "max_score": a.current_version.max_score if a.current_version else None,
        "max_submissions": a.max_submissions,
        "submissions_used": used,
        # Staff are not held to dates or limits when they submit.
        "submissions_left": None if staff else submissions_left(used, a.max_submissions),
        "accepting": reason is None,
        "not_accepting_reason": reason,
    }


def _submission_json(sub: Submission, role: str) -> dict[str, Any]:
    a = sub.assignment
    policy = submissions.policy_for(db(), a, sub.user_id)
    graded = sub.status == "graded" and sub.score is not None
    scored = score_of(sub.id, sub.score or 0.0, sub.max_score or 0.0, sub.submitted_at, policy)
    body: dict[str, Any] = {
        "id": sub.id,
        "status": sub.status,
        # Score and result describe the grading that finished; while a regrade is queued
        # or running they are null rather than the superseded ones.
        "score": sub.score if graded else None,
        "max_score": sub.max_score if graded else sub.version.max_score,
        "result": _public_result(sub.result, staff=access.is_staff(role)) if graded else None,
        # Failing visible trials to reproduce locally: function -> {"all", "trials": {index: {"zip", "npz"}}}.
        "downloads": repro_view.links(sub, "api", external=True) if graded else {},
        "assignment": a.slug,
        "assignment_title": a.title,
        "course": a.course.code,
        "user": sub.user.email,
        "filename": sub.filename,
        "size": sub.size,
        "via": sub.via,
        "submitted_at": _iso(sub.submitted_at),
        "graded_at": _iso(sub.graded_at) if graded else None,
        "days_late": scored.days_late,
        "final_score": scored.final if graded else None,
        "counts": submissions.counting_id(db(), sub.assignment_id, sub.user_id) == sub.id,
        "url": url_for("api.submission", submission_id=sub.id, _external=True),
        "html_url": _html_url(sub.id),
    }
    if sub.status == "error":
        # The reason is for staff (it may describe the grader's own trouble).
        body["error"] = sub.error if access.is_staff(role) else (
            "This submission could not be graded. Course staff can see why and regrade it."
        )
    return body


# Top-level result keys only staff get: with the seed and a spec anyone could regenerate the
# hidden trials' inputs, and the run time is a channel a submission could signal through.
STAFF_ONLY_KEYS = ("seed", "timing")


def _public_result(result: Optional[dict[str, Any]], staff: bool) -> Optional[dict[str, Any]]:
    """The stored grading result, as `grader grade --json` prints it, with hidden trials
    reduced to the keys that describe only the verdict (a no-op on what the core writes)."""
    if result is None:
        return None
    if not staff:
        result = {k: v for k, v in result.items() if k not in STAFF_ONLY_KEYS}
    parts = []
    for part in result.get("parts") or []:
        trials = [
            {k: v for k, v in trial.items() if k in HIDDEN_TRIAL_KEYS} if trial.get("hidden") else trial
            for trial in part.get("trials") or []
        ]
        parts.append({**part, "trials": trials} if "trials" in part else part)
    return {**result, "parts": parts} if "parts" in result else result


def _html_url(submission_id: int) -> Optional[str]:
    """The submission's page, for a person to open."""
    try:
        return url_for("student.submission", submission_id=submission_id, _external=True)
    except BuildError:
        return None


def _iso(value: Optional[dt.datetime]) -> Optional[str]:
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat()


def _shown_name(filename: str) -> str:
    name = "".join(ch for ch in filename.replace("\\", "/").rsplit("/", 1)[-1] if ch.isprintable())[:100]
    return repr(name or "the file")


def _sentence(reason: str) -> str:
    reason = reason.strip()
    return (reason[:1].upper() + reason[1:]).rstrip(".") + "."
