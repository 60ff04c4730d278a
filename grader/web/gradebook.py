"""TA and instructor pages: gradebooks per course and per assignment, a student's
submissions, regrades, CSV export and charts.

Everything here needs the role ta or instructor in the course; anyone else gets a 404 (the
course, assignment, student or submission might as well not exist). The numbers come from
`grader.gradebook` (pure) over facts loaded by `grader.store.gradebook` (a few queries per
page), so the pages and the CSV export agree with each other and with the student's view."""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Optional, Sequence

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, InputRequired

from grader import gradebook as gb
from grader.spec import SpecError
from grader.store import catalog
from grader.store import gradebook as facts_db
from grader.store.db import utcnow
from grader.store.models import Assignment, Course
from grader.store.submissions import requeue_for_regrade
from grader.web import access
from grader.web.charts import histogram_svg, mistakes_svg, pass_rate_svg
from grader.web.database import db

log = logging.getLogger("grader.web.gradebook")

bp = Blueprint("gradebook", __name__)


class RegradeSubmissionForm(FlaskForm):
    next = HiddenField()


SCOPES = {
    "counted": "Only the submissions that count (the latest graded one of each student)",
    "all": "Every submission, including earlier attempts and ungraded ones",
}


class RegradeAssignmentForm(FlaskForm):
    scope = RadioField(
        "Which submissions",
        choices=[SelectChoice(value, label) for value, label in SCOPES.items()],
        default="counted",
        validate_choice=False,  # AnyOf below says what the choices are, in words
        validators=[
            InputRequired(message="choose which submissions to regrade"),
            AnyOf(list(SCOPES), message="choose either the counted submissions or every submission"),
        ],
    )
    next = HiddenField()


# ---------------------------------------------------------------------------------------
# Helpers shared by the pages.


def _staff_course(code: str) -> tuple[Course, str]:
    return access.course_for(code, *access.STAFF)


def submission_url(submission_id: int) -> str:
    """The submission page (code and result), which the student blueprint serves."""
    return url_for("student.submission", submission_id=submission_id)


@bp.context_processor
def _helpers() -> dict[str, Any]:
    # `here`: where a form on this page sends the user back to (only a page that was GET).
    here = request.full_path.rstrip("?") if request.method == "GET" else ""
    return {"submission_url": submission_url, "here": here}


def _view_helpers(view: gb.View) -> dict[str, Callable[..., str]]:
    """Links for sortable column headers: the current filters kept, the direction toggled on
    the current column, ascending on a new one."""
    endpoint = request.endpoint or ""
    view_args = dict(request.view_args or {})

    def sort_url(key: str) -> str:
        desc = not view.desc if view.sort == key else False
        return url_for(endpoint, **view_args, **view.args(sort=key, desc=desc))

    def aria_sort(key: str) -> str:
        if view.sort != key:
            return "none"
        return "descending" if view.desc else "ascending"

    def arrow(key: str) -> str:
        if view.sort != key:
            return ""
        return " ▼" if view.desc else " ▲"

    return {"sort_url": sort_url, "aria_sort": aria_sort, "arrow": arrow}


def _enqueue(ids: Sequence[int]) -> bool:
    """Hand committed ids to the workers. A failing broker loses nothing (the rows are
    queued in the database and the sweeper re-sends them), so it is a warning, not an error."""
    if not ids:
        return True
    try:
        current_app.extensions["grader.enqueue"](list(ids))
        return True
    except Exception as exc:  # noqa: BLE001 - the rows are safe; say so instead of a 500
        log.error("event=enqueue-failed count=%s error=%r (the sweeper will retry)", len(ids), exc)
        return False


def _flash_queued(ids: Sequence[int], what: str, version: Optional[int], kind: str = "") -> None:
    """Say how many submissions (of `kind`, e.g. "counted") of `what` went back in the queue."""
    against = f" against spec version {version}" if version else ""
    kind = f"{kind} " if kind else ""
    if not ids:
        flash(f"Nothing was queued: there are no {kind}submissions of {what} to regrade.", "warning")
        return
    noun = "submission" if len(ids) == 1 else "submissions"
    flash(f"{len(ids)} {kind}{noun} of {what} queued for regrading{against}.", "success")


def _csv_response(text: str, filename: str) -> Response:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", filename).strip("-") or "gradebook.csv"
    # A byte-order mark so that Excel reads UTF-8 names correctly; LMS importers skip it.
    body = ("\ufeff" + text).encode("utf-8")
    return Response(
        body,
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{safe}"',
            "Cache-Control": "no-store",  # grades: not for shared caches or the back button
        },
    )


def _today() -> str:
    return utcnow().strftime("%Y-%m-%d")


def _current_version_number(assignment: Assignment) -> Optional[int]:
    return assignment.current_version.number if assignment.current_version is not None else None


# ---------------------------------------------------------------------------------------
# Course gradebook.


def _course_rows(course: Course) -> tuple[list[gb.AssignmentInfo], list[gb.Row]]:
    facts = facts_db.load(db(), course.id)
    rows = gb.build_rows(facts.students, facts.assignments, facts.submissions, facts.extensions, utcnow())
    return facts.assignments, rows


@bp.get("/courses/<code>/gradebook")
@login_required
def course(code: str) -> Any:
    course, role = _staff_course(code)
    assignments, rows = _course_rows(course)
    sorts = gb.course_sorts(assignments)
    view = gb.parse_view(request.args, sorts)
    shown = gb.sort_rows(gb.filter_rows(rows, view), sorts[view.sort], view.desc)
    return render_template(
        "gradebook/course.html",
        course=course,
        role=role,
        assignments=assignments,
        rows=shown,
        total_rows=len(rows),
        view=view,
        **_view_helpers(view),
    )


@bp.get("/courses/<code>/gradebook.csv")
@login_required
def course_csv(code: str) -> Any:
    course, _role = _staff_course(code)
    assignments, rows = _course_rows(course)
    return _csv_response(gb.course_csv(rows, assignments), f"{course.code}-gradebook-{_today()}.csv")


# ---------------------------------------------------------------------------------------
# Assignment gradebook.


def _assignment_facts(course: Course, assignment: Assignment) -> tuple[facts_db.Facts, gb.AssignmentInfo, list[gb.Row]]:
    facts = facts_db.load(db(), course.id, assignment_id=assignment.id)
    rows = gb.build_rows(facts.students, facts.assignments, facts.submissions, facts.extensions, utcnow())
    return facts, facts.assignments[0], rows


def _assignment_rows(course: Course, assignment: Assignment) -> tuple[gb.AssignmentInfo, list[gb.Row]]:
    _facts, info, rows = _assignment_facts(course, assignment)
    return info, rows


def _mistake_counts(facts: facts_db.Facts, rows: list[gb.Row], info: gb.AssignmentInfo, functions: list[str]) -> list[gb.MistakeCount]:
    """Who made each recognised mistake: in the counted submission, and on any graded one.
    Only students' graded submissions are read, and of those only their mistakes."""
    students = {r.student.id for r in rows}
    graded = [s for s in facts.submissions if s.status == "graded" and s.user_id in students]
    made = facts_db.mistakes_of(db(), [s.id for s in graded])
    counted = {
        r.student.id: made.get(c.submission_id, []) for r in rows if (c := r.cell(info.id).counted) is not None
    }
    return gb.mistake_counts(
        (r.student for r in rows), counted, ((s.user_id, made[s.id]) for s in graded if s.id in made), functions
    )


def _spec_functions(assignment: Assignment) -> list[str]:
    """The current spec's function names, in the spec's order (for the pass-rate chart)."""
    version = assignment.current_version
    if version is None:
        return []
    try:
        return [fn.name for fn in catalog.loaded_spec(version).functions]
    except (SpecError, OSError) as exc:  # a stored spec that no longer loads: rates from results only
        log.warning("assignment=%s version=%s event=spec-unloadable error=%r", assignment.id, version.id, exc)
        return []


def _assignment_page(course: Course, role: str, assignment: Assignment, form: RegradeAssignmentForm) -> str:
    facts, info, rows = _assignment_facts(course, assignment)
    sorts = gb.assignment_sorts(info.id)
    view = gb.parse_view(request.args, sorts, statuses=True)
    shown = gb.sort_rows(gb.filter_rows(rows, view, assignment_id=info.id), sorts[view.sort], view.desc)

    counted = [r.cell(info.id).counted for r in rows]
    counted_scores = [c for c in counted if c is not None]
    finals = [c.final for c in counted_scores]
    bins = gb.histogram(finals, info.max_score)
    results = facts_db.results_of(db(), [c.submission_id for c in counted_scores])
    functions = _spec_functions(assignment)
    rates = gb.pass_rates((gb.parts_of(results.get(c.submission_id)) for c in counted_scores), functions)
    mistakes = _mistake_counts(facts, rows, info, functions)
    late = sum(1 for r in rows if r.cell(info.id).late)
    missing = sum(1 for r in rows if r.cell(info.id).missing)
    return render_template(
        "gradebook/assignment.html",
        course=course,
        role=role,
        assignment=assignment,
        info=info,
        version=_current_version_number(assignment),
        rows=shown,
        total_rows=len(rows),
        view=view,
        bins=bins,
        stats=gb.summary(finals),
        rates=rates,
        counts=facts_db.status_counts(db(), info.id),
        late_count=late,
        missing_count=missing,
        histogram=histogram_svg("histogram", bins, f"Final scores on {info.title} (out of {gb.csv_number(info.max_score) or '?'})"),
        pass_chart=pass_rate_svg("pass-rates", rates, f"Per-function pass rates on {info.title}"),
        mistakes=mistakes,
        mistake_chart=mistakes_svg("mistakes", mistakes, f"Recognised mistakes on {info.title}"),
        form=form,
        **_view_helpers(view),
    )


@bp.get("/courses/<code>/assignments/<slug>/gradebook")
@login_required
def assignment(code: str, slug: str) -> Any:
    course, role = _staff_course(code)
    found = access.assignment_for(course, slug, role)
    return _assignment_page(course, role, found, RegradeAssignmentForm())


@bp.get("/courses/<code>/assignments/<slug>/gradebook.csv")
@login_required
def assignment_csv(code: str, slug: str) -> Any:
    course, role = _staff_course(code)
    found = access.assignment_for(course, slug, role)
    info, rows = _assignment_rows(course, found)
    return _csv_response(gb.assignment_csv(rows, info), f"{course.code}-{found.slug}-gradebook-{_today()}.csv")


@bp.post("/courses/<code>/assignments/<slug>/regrade")
@login_required
def regrade_assignment(code: str, slug: str) -> Any:
    course, role = _staff_course(code)
    found = access.assignment_for(course, slug, role)
    form = RegradeAssignmentForm()
    if not form.validate_on_submit():
        return _assignment_page(course, role, found, form), 400
    back = access.local_path(form.next.data) or url_for(".assignment", code=course.code, slug=found.slug)
    if found.current_version_id is None:
        flash("This assignment has no current spec version to regrade against; add one first.", "error")
        return redirect(back)
    if form.scope.data == "all":
        ids = facts_db.submission_ids(db(), found.id)
    else:
        _info, rows = _assignment_rows(course, found)
        ids = [c.counted.submission_id for c in (r.cell(found.id) for r in rows) if c.counted is not None]
    queued = requeue_for_regrade(db(), ids, by=access.user().id)
    db().commit()  # the rows are queued before any worker hears of them
    sent = _enqueue(queued)
    kind = "counted" if form.scope.data == "counted" else ""
    _flash_queued(queued, found.title, _current_version_number(found), kind)
    if not sent:
        flash("The queue could not be reached; the workers will pick the submissions up when it is back.", "warning")
    return redirect(back)


# ---------------------------------------------------------------------------------------
# One student, and regrading one submission.


@bp.get("/courses/<code>/students/<int:user_id>")
@login_required
def student(code: str, user_id: int) -> Any:
    course, role = _staff_course(code)
    found = facts_db.member(db(), course.id, user_id)
    if found is None:
        abort(404)
    person, member_role = found
    facts = facts_db.load(db(), course.id, user_id=user_id)
    entries = gb.history(user_id, facts.assignments, facts.submissions, facts.extensions)
    row = gb.build_rows([person], facts.assignments, facts.submissions, facts.extensions, utcnow())[0]
    return render_template(
        "gradebook/student.html",
        course=course,
        role=role,
        person=person,
        member_role=member_role,
        assignments=facts.assignments,
        row=row,
        entries=entries,
    )


@bp.post("/submissions/<int:submission_id>/regrade")
@login_required
def regrade_submission(submission_id: int) -> Any:
    sub, role = access.submission_for(submission_id)
    if not access.is_staff(role):
        abort(404)  # a student may not regrade, not even their own
    form = RegradeSubmissionForm()
    if not form.validate_on_submit():
        abort(400)  # only the CSRF token can be wrong, and CSRFProtect answers that first
    assignment = sub.assignment
    course = assignment.course
    # Back to the page the form was on (`next`), else to the submission, to watch it regrade.
    back = access.local_path(form.next.data) or submission_url(sub.id)
    if assignment.current_version_id is None:
        flash("This assignment has no current spec version to regrade against; add one first.", "error")
        return redirect(back)
    queued = requeue_for_regrade(db(), [sub.id], by=access.user().id)
    db().commit()
    sent = _enqueue(queued)
    _flash_queued(queued, f"{assignment.title} by {sub.user.display_name}", _current_version_number(assignment))
    if not sent:
        flash("The queue could not be reached; the workers will pick the submission up when it is back.", "warning")
    return redirect(back)
