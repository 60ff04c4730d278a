"""Student pages: courses, assignments with handouts, submitting, results, history.

The submission page is shared: a student sees their own submissions, course staff see any
submission of their course (with the student's name, the seed and the spec version)."""

from __future__ import annotations

import datetime as dt
import io
import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_limiter.util import get_remote_address
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import BuildError
from wtforms import TextAreaField

from grader.config import Settings
from grader.grade import SubmissionRejected, decode_source
from grader.policy import LatePolicy, NotAccepted, Scored, check_accepting, counting, score_of, submissions_left
from grader.spec import SpecError
from grader.store import catalog
from grader.store.db import utcnow
from grader.store.models import Assignment, AssignmentVersion, Course, Submission, User
from grader.store import submissions as subs
from grader.store.submissions import assignment_policy, create_submission, policy_for
from grader.web import repro_view
from grader.web.access import assignment_for, course_for, courses_of, is_staff, submission_for, user
from grader.web.chain_view import chain_graphs
from grader.web.database import db
from grader.web.extensions import limiter
from grader.web.render import fmt_shape, render_markdown, source_lines

log = logging.getLogger("grader.web.student")

bp = Blueprint("student", __name__)

DEFAULT_HANDOUT = "handout.md"
DEFAULT_STARTER = "starter.py"


@bp.app_template_filter("shape")
def _shape_filter(shape: Any) -> str:
    return fmt_shape(shape)


def _settings() -> Settings:
    return current_app.extensions["grader.settings"]  # type: ignore[no-any-return]


def _submit_rate() -> str:
    return _settings().submit_rate


def _per_user() -> str:
    """Submissions are limited per account, not per address: a class behind one NAT must
    not share a budget, and one student must not get more by switching networks."""
    if current_user.is_authenticated:
        return f"user:{current_user.get_id()}"
    return get_remote_address()


def _endpoint_url(endpoint: str, **values: Any) -> Optional[str]:
    """A link to a page another area provides, or None while that page does not exist."""
    if endpoint not in current_app.view_functions:
        return None
    try:
        return url_for(endpoint, **values)
    except BuildError:
        return None


# ---------------------------------------------------------------------------------------
# What a student's submissions for an assignment add up to


@dataclass(frozen=True)
class HistoryRow:
    """One submission in a student's history (without its source or result)."""

    id: int
    submitted_at: dt.datetime
    status: str
    score: Optional[float]
    max_score: Optional[float]
    filename: str
    via: str
    scored: Optional[Scored]  # raw, days late and final score once graded
    counts: bool = False


@dataclass(frozen=True)
class Standing:
    """A student's position on one assignment: dates, policy, submissions and the score
    that counts, as both the course page and the assignment page show it."""

    assignment: Assignment
    policy: LatePolicy
    history: list[HistoryRow]  # newest first
    used: int
    left: Optional[int]  # None: unlimited
    counting: Optional[HistoryRow]
    refusal: Optional[str]  # why a submission would be refused right now; None: accepting

    @property
    def latest(self) -> Optional[HistoryRow]:
        return self.history[0] if self.history else None


_HISTORY_COLUMNS = (
    Submission.id,
    Submission.assignment_id,
    Submission.submitted_at,
    Submission.status,
    Submission.score,
    Submission.max_score,
    Submission.filename,
    Submission.via,
)


def standings(session: Session, who: User, assignments: Sequence[Assignment], now: Optional[dt.datetime] = None) -> dict[int, Standing]:
    """Standings of `who` on each assignment, from one query over their submissions (the
    source and result columns are not loaded)."""
    now = now or utcnow()
    ids = [a.id for a in assignments]
    rows_by: dict[int, list[Any]] = {i: [] for i in ids}
    if ids:
        for row in session.execute(
            select(*_HISTORY_COLUMNS)
            .where(Submission.user_id == who.id, Submission.assignment_id.in_(ids))
            .order_by(Submission.submitted_at.desc(), Submission.id.desc())
        ):
            rows_by[row.assignment_id].append(row)
    result = {}
    for assignment in assignments:
        policy = policy_for(session, assignment, who.id)
        rows = rows_by[assignment.id]
        graded = [(r.id, r.submitted_at) for r in rows if r.status == "graded" and r.score is not None]
        counts_id = counting(graded)
        history = [
            HistoryRow(
                id=r.id,
                submitted_at=r.submitted_at,
                status=r.status,
                score=r.score,
                max_score=r.max_score,
                filename=r.filename,
                via=r.via,
                scored=(
                    score_of(r.id, r.score, r.max_score or 0.0, r.submitted_at, policy)
                    if r.status == "graded" and r.score is not None
                    else None
                ),
                counts=r.id == counts_id,
            )
            for r in rows
        ]
        refusal: Optional[str] = None
        if assignment.current_version_id is None:
            refusal = "this assignment has no spec yet"
        else:
            try:
                check_accepting(now, assignment.published, assignment.open_at, policy, len(rows), assignment.max_submissions)
            except NotAccepted as exc:
                refusal = str(exc)
        result[assignment.id] = Standing(
            assignment=assignment,
            policy=policy,
            history=history,
            used=len(rows),
            left=submissions_left(len(rows), assignment.max_submissions),
            counting=next((h for h in history if h.counts), None),
            refusal=refusal,
        )
    return result


# ---------------------------------------------------------------------------------------
# Home: the user's courses


def _course_policy(assignment: Assignment) -> LatePolicy:
    """The assignment's policy before any student's extension (what staff see)."""
    return assignment_policy(assignment)


@bp.get("/")
@login_required
def home() -> Any:
    me = user()
    courses = []
    for course, role in courses_of(me):
        staff = is_staff(role)
        assignments = [a for a in course.assignments if staff or a.published]
        mine = {} if staff else standings(db(), me, assignments)
        courses.append(
            {
                "course": course,
                "role": role,
                "staff": staff,
                "assignments": assignments,
                # Staff do not submit for a grade; their rows show the assignment's own dates.
                "standings": mine,
                "policies": {
                    a.id: mine[a.id].policy if a.id in mine else _course_policy(a) for a in assignments
                },
                "gradebook_url": _endpoint_url("gradebook.course", code=course.code) if staff else None,
                "manage_url": _endpoint_url("instructor.course", code=course.code) if role == "instructor" else None,
            }
        )
    return render_template("student/home.html", courses=courses)


# ---------------------------------------------------------------------------------------
# Assignment page and submitting


class SubmitForm(FlaskForm):
    file = FileField("Upload a .py file")
    code = TextAreaField("or paste your code")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.general_errors: list[str] = []


def _spec_files(version: Optional[AssignmentVersion]) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(handout text, starter file name, starter text) of a stored spec version."""
    if version is None:
        return None, None, None
    handout_name, starter_name = DEFAULT_HANDOUT, DEFAULT_STARTER
    try:
        spec = catalog.loaded_spec(version).spec
        handout_name, starter_name = spec.handout, spec.starter
    except (SpecError, OSError) as exc:
        # A stored version always loaded once; if it no longer does, show what is there.
        log.warning("version=%s event=spec-load-failed error=%r", version.id, exc)
    starter = version.files.get(starter_name)
    return version.files.get(handout_name), (starter_name if starter is not None else None), starter


def _read_submission(form: SubmitForm, max_bytes: int, slug: str) -> Optional[tuple[bytes, str, str]]:
    """The submitted bytes, file name and channel ("web" upload or "paste"), or None with
    the problem recorded on the form. Exactly one of the two inputs must be used."""
    upload = form.file.data if isinstance(form.file.data, FileStorage) and form.file.data.filename else None
    code = form.code.data or ""
    pasted = bool(code.strip())
    if upload is not None and pasted:
        form.general_errors.append(
            "You chose a file and also pasted code: submit one of the two (clear the text box to upload the file)."
        )
        return None
    if upload is None and not pasted:
        if code:
            form.code.errors = ["The pasted code is empty (only blank lines or spaces)."]
        else:
            form.general_errors.append("Choose a .py file to upload, or paste your code into the text box.")
        return None
    if upload is not None:
        name = upload.filename or ""
        if not name.lower().endswith(".py"):
            form.file.errors = [
                f"“{name}” is not a .py file. Upload the Python source file itself (not a notebook, zip or PDF)."
            ]
            return None
        data = upload.read()
        if len(data) > max_bytes:
            form.file.errors = [f"The file is {len(data):,} bytes; the limit is {max_bytes:,} bytes ({max_bytes // 1024:,} KiB)."]
            return None
        if not data.strip():
            form.file.errors = [f"“{name}” is empty. Save your work and choose the file again."]
            return None
        try:
            decode_source(data, max_bytes)  # the grader's own checks: UTF-16, NUL bytes, UTF-8
        except SubmissionRejected as exc:
            form.file.errors = [str(exc)]
            return None
        return data, name, "web"
    # Browsers send a textarea's line breaks as CRLF; Python does not care, diffs and
    # line numbers do.
    data = code.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if len(data) > max_bytes:
        form.code.errors = [f"The pasted code is {len(data):,} bytes; the limit is {max_bytes:,} bytes ({max_bytes // 1024:,} KiB)."]
        return None
    if b"\x00" in data:
        form.code.errors = ["The pasted code contains NUL characters; paste the Python source as plain text."]
        return None
    return data, f"{slug}.py", "paste"


def _assignment_page(course: Course, role: str, assignment: Assignment, form: SubmitForm, status: int = 200) -> Any:
    version = assignment.current_version
    handout, starter_name, _ = _spec_files(version)
    standing = standings(db(), user(), [assignment])[assignment.id]
    staff = is_staff(role)
    return (
        render_template(
            "student/assignment.html",
            course=course,
            role=role,
            staff=staff,
            assignment=assignment,
            version=version,
            handout=render_markdown(handout) if handout else None,
            starter_name=starter_name,
            standing=standing,
            form=form,
            max_upload_bytes=_settings().max_upload_bytes,
            # Staff may try any assignment, published or not, without dates or limits.
            show_form=staff or standing.refusal is None or bool(form.errors or form.general_errors),
            gradebook_url=_endpoint_url("gradebook.assignment", code=course.code, slug=assignment.slug) if staff else None,
            manage_url=_endpoint_url("instructor.assignment", code=course.code, slug=assignment.slug)
            if role == "instructor"
            else None,
        ),
        status,
    )


@bp.get("/courses/<code>/assignments/<slug>")
@login_required
def assignment(code: str, slug: str) -> Any:
    course, role = course_for(code)
    found = assignment_for(course, slug, role)
    return _assignment_page(course, role, found, SubmitForm())


@bp.post("/courses/<code>/assignments/<slug>/submit")
@login_required
@limiter.limit(_submit_rate, key_func=_per_user)
def submit(code: str, slug: str) -> Any:
    course, role = course_for(code)
    found = assignment_for(course, slug, role)
    form = SubmitForm()
    if not form.validate_on_submit():  # only the CSRF token can fail here
        return _assignment_page(course, role, found, form, 400)
    read = _read_submission(form, _settings().max_upload_bytes, found.slug)
    if read is None:
        return _assignment_page(course, role, found, form, 400)
    data, filename, via = read
    try:
        sub = create_submission(db(), found, user(), data, filename, via=via, enforce=not is_staff(role))
    except NotAccepted as exc:
        db().rollback()
        form.general_errors.append(f"Not accepted: {exc}.")
        return _assignment_page(course, role, found, form, 400)
    sub_id = sub.id
    # The row is committed before its id is sent: a worker must never receive an id it
    # cannot find. If sending fails, the sweeper re-enqueues the queued row later.
    db().commit()
    try:
        current_app.extensions["grader.enqueue"]([sub_id])
    except Exception:  # noqa: BLE001 - the row is safe; the sweeper delivers it
        log.exception("submission=%s event=enqueue-failed (the sweeper will retry)", sub_id)
    flash("Submitted. Your submission is queued for grading; this page shows the result when it is ready.", "success")
    return redirect(url_for("student.submission", submission_id=sub_id), code=303)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Any:
    """An upload beyond the request cap is refused before the view runs (while the CSRF
    check reads the form); on the submit form it is a form error like any other."""
    args = request.view_args or {}
    limit = _settings().max_upload_bytes
    if request.endpoint != "student.submit" or not current_user.is_authenticated:
        return render_template("error.html", error=exc, detail=f"The upload is too large (at most {limit:,} bytes)."), 413
    try:
        course, role = course_for(str(args.get("code", "")))
        found = assignment_for(course, str(args.get("slug", "")), role)
    except HTTPException as denied:  # raised here, it would not reach the app's handler
        return render_template("error.html", error=denied, detail="There is nothing here, or you do not have access to it."), denied.code
    form = SubmitForm(formdata=None)
    form.general_errors.append(
        f"The upload is too large: a submission may be at most {limit:,} bytes ({limit // 1024:,} KiB)."
    )
    return _assignment_page(course, role, found, form, 413)


@bp.get("/courses/<code>/assignments/<slug>/starter.py")
@login_required
def starter(code: str, slug: str) -> Any:
    course, role = course_for(code)
    found = assignment_for(course, slug, role)
    _, name, text = _spec_files(found.current_version)
    if name is None or text is None:
        abort(404)
    return _download(text.encode("utf-8"), name)


def _download(data: bytes, name: str, mimetype: str = "text/x-python") -> Response:
    response = send_file(io.BytesIO(data), mimetype=mimetype, as_attachment=True, download_name=name, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response


# ---------------------------------------------------------------------------------------
# One submission


PENDING = ("queued", "running")


def _status_payload(sub: Submission, scored: Optional[Scored]) -> dict[str, Any]:
    return {
        "id": sub.id,
        "status": sub.status,
        "done": sub.status not in PENDING,
        "score": sub.score if sub.status == "graded" else None,
        "max_score": sub.max_score if sub.status == "graded" else None,
        "final_score": scored.final if scored else None,
        "days_late": scored.days_late if scored else None,
        "url": url_for("student.submission", submission_id=sub.id),
    }


def _scored(sub: Submission, policy: LatePolicy) -> Optional[Scored]:
    if sub.status != "graded" or sub.score is None:
        return None
    return score_of(sub.id, sub.score, sub.max_score or 0.0, sub.submitted_at, policy)


@bp.get("/submissions/<int:submission_id>")
@login_required
def submission(submission_id: int) -> Any:
    sub, role = submission_for(submission_id)
    staff = is_staff(role)
    found = sub.assignment
    policy = policy_for(db(), found, sub.user_id)
    counting_id = subs.counting_id(db(), found.id, sub.user_id)
    result = sub.result if sub.status == "graded" and isinstance(sub.result, dict) else None
    pending = sub.status in PENDING
    response = Response(
        render_template(
            "submission/show.html",
            sub=sub,
            role=role,
            staff=staff,
            own=sub.user_id == user().id,
            course=found.course,
            assignment=found,
            policy=policy,
            scored=_scored(sub, policy),
            counting_id=counting_id,
            result=result,
            chain_graphs=chain_graphs(sub.version, result),
            repro_links=repro_view.links(sub) if result else {},
            pending=pending,
            lines=source_lines(sub.source),
            regrade_url=_endpoint_url("gradebook.regrade_submission", submission_id=sub.id) if staff else None,
            student_url=_endpoint_url("gradebook.student", code=found.course.code, user_id=sub.user_id) if staff else None,
        )
    )
    if pending:
        response.headers["Cache-Control"] = "no-store"  # "back" must not show a stale status
    return response


@bp.get("/submissions/<int:submission_id>/status.json")
@login_required
def submission_status(submission_id: int) -> Any:
    sub, _role = submission_for(submission_id)
    response = jsonify(_status_payload(sub, _scored(sub, policy_for(db(), sub.assignment, sub.user_id))))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/submissions/<int:submission_id>/download")
@login_required
def download(submission_id: int) -> Any:
    sub, _role = submission_for(submission_id)
    return _download(sub.source, sub.filename or "submission.py")


# Failing visible trials to reproduce at home (grader/repro.py): their inputs and expected
# outputs as .npz with a script that runs the student's own file on them. Hidden trials,
# passed trials and submissions not (yet) graded are 404.


@bp.get("/submissions/<int:submission_id>/trials/<function>/<int:index>/repro.zip")
@login_required
@limiter.shared_limit(repro_view.DOWNLOAD_RATE, scope="downloads", key_func=_per_user)
def trial_repro(submission_id: int, function: str, index: int) -> Any:
    sub, _role = submission_for(submission_id)
    return _download(*repro_view.trial_zip(sub, function, index))


@bp.get("/submissions/<int:submission_id>/trials/<function>/<int:index>/inputs.npz")
@login_required
@limiter.shared_limit(repro_view.DOWNLOAD_RATE, scope="downloads", key_func=_per_user)
def trial_inputs(submission_id: int, function: str, index: int) -> Any:
    sub, _role = submission_for(submission_id)
    return _download(*repro_view.trial_npz(sub, function, index))


@bp.get("/submissions/<int:submission_id>/trials/<function>/repro.zip")
@login_required
@limiter.shared_limit(repro_view.DOWNLOAD_RATE, scope="downloads", key_func=_per_user)
def trials_repro(submission_id: int, function: str) -> Any:
    sub, _role = submission_for(submission_id)
    return _download(*repro_view.function_zip(sub, function))
