"""Instructor pages: courses, rosters, roles, assignments (specs, dates, policies), publishing.

Every page here is for the course's instructors only; anyone else gets a 404 (TAs and
students included), so course codes and assignment ids cannot be probed. Spec uploads are
validated and self-tested in the request (about a second at most); a version that fails
its self-test is stored for fixing but never becomes current, so it cannot be published
or graded against."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_login import login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from wtforms import BooleanField, HiddenField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields import DateTimeLocalField
from wtforms.validators import ValidationError
from wtforms.validators import DataRequired, Length, Optional as Blank

from grader.policy import fmt_time
from grader.spec import SpecError, builtin_dir, builtin_ids
from grader.spec.load import SPEC_FILE
from grader.store import accounts, catalog, specs
from grader.store import submissions as subs
from grader.store.db import utcnow
from grader.store.models import ROLES, Assignment, AssignmentVersion, Course, Extension, Membership, Submission, User
from grader.web.access import assignment_for, course_for, user
from grader.web.database import db
from grader.web.selftest_report import parse_report

try:  # WTForms 3.3 deprecates (value, label) tuples as choices; older versions only take those
    from wtforms.fields.choices import SelectChoice as _SelectChoice
except ImportError:  # pragma: no cover
    _SelectChoice = None

log = logging.getLogger("grader.web.instructor")

bp = Blueprint("instructor", __name__)

UTC = dt.timezone.utc
# Course codes that would shadow other pages' URLs (/courses/new is this blueprint's).
RESERVED_CODES = ("new",)
MAX_ROSTER_BYTES = 2 << 20
MAX_ZIP_BYTES = 5 << 20  # the request cap (6 MiB) is above this, so the error here is the clear one
MAX_PENALTY_PCT = 100.0
MAX_CUTOFF_DAYS = 365
MAX_SUBMISSIONS = 10_000
# The text form's files; any other files of the version it was opened on are kept as they are.
FORM_FILES = (("spec_yaml", SPEC_FILE), ("handout_md", "handout.md"), ("starter_py", "starter.py"),
              ("solution_py", specs.SOLUTION_FILE))
ROLE_LABELS = {"student": "Student", "ta": "TA", "instructor": "Instructor"}


def _choices(pairs: Sequence[tuple[str, str]]) -> list[Any]:
    return [_SelectChoice(value, label) if _SelectChoice else (value, label) for value, label in pairs]


# ---------------------------------------------------------------------------------- forms


class CourseForm(FlaskForm):
    code = StringField("Course code", validators=[DataRequired("give the course a code"), Length(max=64)])
    title = StringField("Title", validators=[DataRequired("give the course a title"), Length(max=200)])
    builtins = BooleanField("Add the built-in assignments as unpublished drafts")


class MemberForm(FlaskForm):
    email = StringField("Email", validators=[DataRequired("give the member's email"), Length(max=254)])
    name = StringField("Name (for a new account)", validators=[Length(max=200)])
    role = SelectField("Role", choices=_choices([(r, ROLE_LABELS[r]) for r in ROLES]), default="student")


class RosterForm(FlaskForm):
    roster = FileField("Roster (CSV)")


class ZipSpecForm(FlaskForm):
    archive = FileField("Spec folder (zip)")
    regrade = BooleanField("Regrade all submissions against the new version")


class TextSpecForm(FlaskForm):
    spec_yaml = TextAreaField(SPEC_FILE, validators=[DataRequired(f"{SPEC_FILE} is empty")])
    handout_md = TextAreaField("handout.md")
    starter_py = TextAreaField("starter.py")
    solution_py = TextAreaField("solution.py (optional: a reference solution the self-test must give full marks)")
    base_version = HiddenField()
    regrade = BooleanField("Regrade all submissions against the new version")


def _parse_number(text: Optional[str]) -> Optional[float]:
    text = (text or "").strip().rstrip("%").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a number")
    return value


def _parse_int(text: Optional[str]) -> Optional[int]:
    text = (text or "").strip()
    if not text:
        return None
    if not re.fullmatch(r"[+-]?\d{1,9}", text):
        raise ValueError("not a whole number")
    return int(text)


def datetime_local_value(value: Optional[dt.datetime]) -> str:
    """A UTC time as an HTML datetime-local value, with seconds only when it has them (so
    saving a form unchanged never moves a deadline)."""
    if value is None:
        return ""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S" if value.second else "%Y-%m-%dT%H:%M")


class UTCDateTimeField(DateTimeLocalField):
    """An `<input type="datetime-local">` read and shown in UTC (pages label it so)."""

    def __init__(self, label: str, validators: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("format", ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"])
        kwargs.setdefault("invalid_value_message", "not a date and time (YYYY-MM-DD HH:MM, in UTC)")
        super().__init__(label, validators, tz=UTC, **kwargs)

    def _value(self) -> str:
        if self.raw_data:
            return " ".join(self.raw_data)
        return datetime_local_value(self.data)

    def pre_validate(self, form: Any) -> None:
        # A date far in the future overflows once a cutoff of days is added to it, and
        # would break every page that shows the assignment.
        if self.data is not None and not (2000 <= self.data.year <= 2100):
            raise ValidationError("give a date between the years 2000 and 2100")


class SettingsForm(FlaskForm):
    open_at = UTCDateTimeField("Opens at (UTC)", validators=[Blank()])
    due_at = UTCDateTimeField("Due at (UTC)", validators=[Blank()])
    late_mode = RadioField(
        "Late submissions",
        choices=_choices([
            ("none", "Not accepted: the due date is final"),
            ("penalty", "Accepted with a penalty per started day late, up to a cutoff"),
        ]),
        default="none",
    )
    penalty_pct = StringField("Penalty per started day late (%)", validators=[Length(max=20)])
    cutoff_days = StringField("Accepted for (days after the due date)", validators=[Length(max=20)])
    max_submissions = StringField("Submissions per student (blank: unlimited)", validators=[Length(max=20)])

    # Parsed values, filled by validate().
    penalty: float = 0.0
    cutoff: int = 0
    limit: Optional[int] = None

    def validate(self, extra_validators: Any = None) -> bool:
        ok = super().validate(extra_validators)
        if self.open_at.data and self.due_at.data and self.due_at.data <= self.open_at.data:
            self.due_at.errors.append(f"the due date must be after the opening date ({fmt_time(self.open_at.data)})")
            ok = False
        try:
            self.limit = _parse_int(self.max_submissions.data)
        except ValueError:
            self.max_submissions.errors.append("a whole number of submissions, or blank for unlimited")
            ok = False
        else:
            if self.limit is not None and not 1 <= self.limit <= MAX_SUBMISSIONS:
                self.max_submissions.errors.append(
                    f"between 1 and {MAX_SUBMISSIONS}, or blank for unlimited (0 would refuse every submission)"
                )
                ok = False
        if self.late_mode.data != "penalty":
            self.penalty, self.cutoff = 0.0, 0
            return ok
        if not self.due_at.data and not self.due_at.errors:
            self.late_mode.errors.append("late submissions need a due date to be late from; set one above")
            ok = False
        try:
            pct = _parse_number(self.penalty_pct.data)
        except ValueError:
            self.penalty_pct.errors.append("a number of percent, e.g. 10 (0 for no penalty)")
            ok = False
        else:
            if pct is None:
                self.penalty_pct.errors.append("give the penalty per day in percent (0 for no penalty)")
                ok = False
            elif pct < 0:
                self.penalty_pct.errors.append("the penalty cannot be negative")
                ok = False
            elif pct > MAX_PENALTY_PCT:
                self.penalty_pct.errors.append("the penalty cannot be more than 100% per day")
                ok = False
            else:
                self.penalty = pct / 100.0
        try:
            cutoff = _parse_int(self.cutoff_days.data)
        except ValueError:
            self.cutoff_days.errors.append("a whole number of days, e.g. 3")
            ok = False
        else:
            if cutoff is None:
                self.cutoff_days.errors.append("give the number of days late submissions are accepted")
                ok = False
            elif not 1 <= cutoff <= MAX_CUTOFF_DAYS:
                self.cutoff_days.errors.append(f"between 1 and {MAX_CUTOFF_DAYS} days")
                ok = False
            else:
                self.cutoff = cutoff
        return ok


class ExtensionForm(FlaskForm):
    email = StringField("Student email", validators=[DataRequired("give the student's email"), Length(max=254)])
    due_at = UTCDateTimeField("New due date (UTC)", validators=[DataRequired("give the new due date")])


# -------------------------------------------------------------------------------- helpers


def _instructor_course(code: str) -> Course:
    course, _role = course_for(code, "instructor")
    return course


def _instructor_assignment(code: str, slug: str) -> tuple[Course, Assignment]:
    course = _instructor_course(code)
    return course, assignment_for(course, slug, "instructor")


def _enqueue(ids: Sequence[int]) -> None:
    """Hand ids to the workers; only ever called after the rows are committed."""
    if ids:
        current_app.extensions["grader.enqueue"](list(ids))


def _form_value(name: str) -> str:
    return (request.form.get(name) or "").strip().lower()


def _no_store(response: Response) -> Response:
    """Pages that show initial passwords must not be kept by caches or the back button."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _csv_cell(value: str) -> str:
    # A spreadsheet treats a cell starting with these as a formula (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def accounts_csv(rows: Sequence[tuple[str, str]]) -> str:
    """New accounts as CSV (email, initial password), ready for a mail merge."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["email", "password"])
    for email, password in rows:
        writer.writerow([_csv_cell(email), _csv_cell(password)])
    return out.getvalue()


def _csv_data_url(rows: Sequence[tuple[str, str]]) -> str:
    """The CSV as a data: URL, so the download is made from this very response and the
    passwords are never stored or sent again."""
    payload = base64.b64encode(("\ufeff" + accounts_csv(rows)).encode("utf-8")).decode("ascii")
    return "data:text/csv;charset=utf-8;base64," + payload


@dataclass
class NewAccounts:
    """Accounts created by this request, with the passwords to hand out (shown once)."""

    rows: list[tuple[str, str]] = field(default_factory=list)  # (email, password; "" if it came from the CSV)
    filename: str = "new-accounts.csv"

    @property
    def data_url(self) -> str:
        return _csv_data_url([(e, p) for e, p in self.rows if p])

    @property
    def generated(self) -> int:
        return sum(1 for _e, p in self.rows if p)


_CACHE_PREFIX: Optional[re.Pattern[str]] = None


def clean_spec_error(message: str) -> str:
    """A SpecError names the file it came from; for an upload that is the private cache
    folder the files were written to, which means nothing to the instructor."""
    global _CACHE_PREFIX
    if _CACHE_PREFIX is None:
        _CACHE_PREFIX = re.compile(re.escape(str(specs.cache_root())) + r"/[.0-9a-f][^/\s]*/")
    return _CACHE_PREFIX.sub("", message)


@dataclass
class Attempt:
    """The outcome of validating and self-testing an upload: `error` when it did not load."""

    checked: Optional[catalog.Checked] = None
    error: Optional[str] = None


def check_upload(files: specs.SpecFiles) -> Attempt:
    try:
        return Attempt(checked=catalog.check_files(files))
    except SpecError as exc:
        return Attempt(error=clean_spec_error(str(exc)))
    except Exception as exc:  # noqa: BLE001 - an instructor's spec must never turn into a 500
        # A spec that passes validation can still break trial generation or the sandbox in
        # ways the loader does not foresee; the instructor needs the reason, operators the trace.
        log.exception("self-test crashed")
        return Attempt(error=f"the self-test could not run: {type(exc).__name__}: {clean_spec_error(str(exc))}")


def _text_files(form: TextSpecForm, base: Optional[AssignmentVersion]) -> tuple[specs.SpecFiles, Optional[str]]:
    """The text form's files, plus the other files of the version the form was opened on."""
    files: specs.SpecFiles = {}
    if base is not None:
        files.update({name: text for name, text in base.files.items() if name not in dict(FORM_FILES).values()})
    total = 0
    for attr, name in FORM_FILES:
        # Browsers send textareas with CRLF line ends; store what the author's editor would.
        text = (getattr(form, attr).data or "").replace("\r\n", "\n")
        if not text.strip():
            continue
        size = len(text.encode("utf-8"))
        if size > specs.MAX_FILE_BYTES:
            return {}, f"{name}: larger than {specs.MAX_FILE_BYTES // 1024} KiB"
        total += size
        files[name] = text
    if total > specs.MAX_TOTAL_BYTES:
        return {}, f"the files add up to more than {specs.MAX_TOTAL_BYTES >> 20} MiB"
    return files, None


def _zip_files(form: ZipSpecForm) -> tuple[specs.SpecFiles, Optional[str]]:
    upload = form.archive.data
    if upload is None or not getattr(upload, "filename", ""):
        return {}, "choose a zip file of the spec folder to upload"
    data = upload.read(MAX_ZIP_BYTES + 1)
    if len(data) > MAX_ZIP_BYTES:
        return {}, f"the zip file is larger than {MAX_ZIP_BYTES >> 20} MiB"
    if not data:
        return {}, "the uploaded file is empty"
    try:
        return specs.files_from_zip(data), None
    except SpecError as exc:
        return {}, str(exc)


def _submission_counts(course: Course) -> dict[int, int]:
    rows = db().execute(
        select(Submission.assignment_id, func.count(Submission.id))
        .join(Assignment, Assignment.id == Submission.assignment_id)
        .where(Assignment.course_id == course.id)
        .group_by(Submission.assignment_id)
    ).all()
    return {aid: n for aid, n in rows}


def _submission_ids(assignment: Assignment) -> list[int]:
    return list(db().scalars(select(Submission.id).where(Submission.assignment_id == assignment.id).order_by(Submission.id)))


def _instructor_count(course: Course) -> int:
    return db().scalar(
        select(func.count(Membership.id)).where(Membership.course_id == course.id, Membership.role == "instructor")
    ) or 0


def publish_refusal(assignment: Assignment) -> Optional[str]:
    """Why this assignment cannot be published, or None when it can."""
    version = assignment.current_version
    if version is None or not version.selftest_ok:
        if assignment.versions:
            latest = assignment.versions[-1]
            return (
                f"no version of this spec has passed its self-test yet (version {latest.number} failed: "
                "see its report below, fix the spec and store a new version)"
            )
        return "the assignment has no spec yet"
    return None


def _version_summary(version: AssignmentVersion) -> str:
    lines = version.selftest_report.splitlines()
    problems = sum(1 for line in lines if line.startswith("problem: "))
    warnings = sum(1 for line in lines if line.startswith("warning: "))
    verdict = "self-test passed" if version.selftest_ok else f"self-test failed ({problems} problem(s))"
    return verdict + (f", {warnings} warning(s)" if warnings else "")


# ---------------------------------------------------------------------------------- courses


@bp.route("/courses/new", methods=["GET", "POST"])
@login_required
def new_course() -> Any:
    if user().role != "instructor":
        abort(404)
    form = CourseForm()
    if form.validate_on_submit():
        code = (form.code.data or "").strip().lower()
        if code in RESERVED_CODES:
            form.code.errors.append(f"{code!r} is reserved for the site's own pages; choose another code")
        else:
            try:
                course = catalog.create_course(db(), code, form.title.data or "")
                accounts.set_membership(db(), course, user(), "instructor")
                added = catalog.install_builtins(db(), course, published=False) if form.builtins.data else []
                db().commit()
            except catalog.CatalogError as exc:
                db().rollback()
                form.code.errors.append(str(exc))
            except IntegrityError:
                db().rollback()  # another request took the code between the check and the insert
                form.code.errors.append(f"a course with code {code!r} already exists")
            else:
                flash(
                    f"Course {course.code} created"
                    + (f" with {len(added)} built-in assignments (unpublished)." if added else "."),
                    "success",
                )
                return redirect(url_for("instructor.course", code=course.code))
    status = 400 if form.is_submitted() else 200
    return render_template("instructor/new_course.html", form=form, builtins=builtin_ids()), status


def _course_page(course: Course, status: int = 200, **context: Any) -> Any:
    members = db().execute(
        select(Membership, User).join(User, User.id == Membership.user_id).where(Membership.course_id == course.id)
    ).all()
    order = {"instructor": 0, "ta": 1, "student": 2}
    members.sort(key=lambda row: (order.get(row[0].role, 3), row[1].email))
    counts = _submission_counts(course)
    role_counts = {r: sum(1 for m, _u in members if m.role == r) for r in ROLES}
    response = make_response(
        render_template(
            "instructor/course.html",
            course=course,
            members=members,
            role_counts=role_counts,
            roles=[(r, ROLE_LABELS[r]) for r in ROLES],
            assignments=course.assignments,
            counts=counts,
            member_form=context.pop("member_form", None) or MemberForm(formdata=None),
            roster_form=context.pop("roster_form", None) or RosterForm(formdata=None),
            **context,
        ),
        status,
    )
    return _no_store(response) if context.get("new_accounts") else response


@bp.get("/courses/<code>/manage")
@login_required
def course(code: str) -> Any:
    return _course_page(_instructor_course(code))


@bp.post("/courses/<code>/manage/members")
@login_required
def add_member(code: str) -> Any:
    course = _instructor_course(code)
    form = MemberForm()
    if not form.validate_on_submit():
        return _course_page(course, 400, member_form=form)
    try:
        email = accounts.normalize_email(form.email.data or "")
        role = accounts.check_role(form.role.data or "")
    except accounts.AccountError as exc:
        form.email.errors.append(str(exc))
        return _course_page(course, 400, member_form=form)
    found = accounts.find_user(db(), email)
    new_accounts = None
    if found is None:
        password = accounts.initial_password()
        try:
            # Site-wide role "student" whatever the course role: only an operator makes
            # accounts that may create courses (grader users add --role instructor).
            found = accounts.create_user(db(), email, role="student", password=password, name=form.name.data or "")
        except (accounts.AccountError, IntegrityError):  # created by another request just now
            db().rollback()
            form.email.errors.append(f"an account for {email} was created at the same moment; try again")
            return _course_page(course, 400, member_form=form)
        new_accounts = NewAccounts([(email, password)], f"{course.code}-new-account.csv")
        message = f"Created the account {email} and added it as {ROLE_LABELS[role]}."
    else:
        before = accounts.course_role(db(), found, course.id)
        if before == "instructor" and role != "instructor" and _instructor_count(course) <= 1:
            form.role.errors.append(f"{email} is the course's only instructor; make someone else instructor first")
            return _course_page(course, 400, member_form=form)
        if before is None:
            message = f"Added {email} as {ROLE_LABELS[role]}."
        elif before == role:
            message = f"{email} is already {ROLE_LABELS[role]} in this course."
        else:
            message = f"{email} was {ROLE_LABELS[before]}; now {ROLE_LABELS[role]}."
    try:
        accounts.set_membership(db(), course, found, role)
        db().commit()
    except IntegrityError:  # the same person added twice at once
        db().rollback()
        form.email.errors.append(f"{email} was added by someone else at the same moment; check the list")
        return _course_page(course, 400, member_form=form)
    if new_accounts is None:
        flash(message, "success")
        return _members_page(course)
    # Rendered, not redirected: the password must reach the instructor once and only here.
    return _course_page(course, new_accounts=new_accounts, notice=message)


def _members_page(course: Course) -> Any:
    return redirect(url_for("instructor.course", code=course.code) + "#members")


def _membership(course: Course, user_id: int) -> Membership:
    membership = db().scalar(select(Membership).where(Membership.course_id == course.id, Membership.user_id == user_id))
    if membership is None:
        abort(404)
    return membership


@bp.post("/courses/<code>/manage/members/<int:user_id>/role")
@login_required
def change_role(code: str, user_id: int) -> Any:
    course = _instructor_course(code)
    membership = _membership(course, user_id)
    role = _form_value("role")
    if role not in ROLES:
        flash(f"Unknown role {role!r}.", "error")
        return _members_page(course)
    email = membership.user.email
    if membership.role == "instructor" and role != "instructor" and _instructor_count(course) <= 1:
        flash(f"{email} is the course's only instructor; make someone else instructor first.", "error")
        return _members_page(course)
    before = membership.role
    membership.role = role
    db().commit()
    flash(f"{email}: {ROLE_LABELS[before]} → {ROLE_LABELS[role]}.", "success")
    if user_id == user().id and role != "instructor":
        return redirect(url_for("student.home"))  # no longer allowed on this page
    return _members_page(course)


@bp.post("/courses/<code>/manage/members/<int:user_id>/remove")
@login_required
def remove_member(code: str, user_id: int) -> Any:
    course = _instructor_course(code)
    membership = _membership(course, user_id)
    email = membership.user.email
    if membership.role == "instructor" and _instructor_count(course) <= 1:
        flash(f"{email} is the course's only instructor and cannot be removed.", "error")
        return _members_page(course)
    db().delete(membership)
    db().commit()
    flash(f"Removed {email} from {course.code} (their submissions are kept).", "success")
    if user_id == user().id:
        return redirect(url_for("student.home"))
    return _members_page(course)


@bp.post("/courses/<code>/manage/roster")
@login_required
def import_roster(code: str) -> Any:
    course = _instructor_course(code)
    form = RosterForm()
    if not form.validate_on_submit():
        return _course_page(course, 400, roster_form=form)
    upload = form.roster.data
    if upload is None or not getattr(upload, "filename", ""):
        form.roster.errors.append("choose a CSV file to upload")
        return _course_page(course, 400, roster_form=form)
    raw = upload.read(MAX_ROSTER_BYTES + 1)
    if len(raw) > MAX_ROSTER_BYTES:
        form.roster.errors.append(f"the roster is larger than {MAX_ROSTER_BYTES >> 20} MiB; split it")
        return _course_page(course, 400, roster_form=form)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        form.roster.errors.append("the roster is not UTF-8 text; save it as \"CSV UTF-8\" and upload it again")
        return _course_page(course, 400, roster_form=form)
    try:
        report = accounts.import_roster(db(), course, text)
    except (accounts.AccountError, csv.Error) as exc:
        db().rollback()
        form.roster.errors.append(f"the roster cannot be read: {exc}")
        return _course_page(course, 400, roster_form=form)
    if _instructor_count(course) == 0:
        # A roster row may demote the last instructor (even the one importing): refuse it all.
        db().rollback()
        form.roster.errors.append("the roster would leave the course without an instructor; nothing was imported")
        return _course_page(course, 400, roster_form=form)
    db().commit()
    new_accounts = NewAccounts(list(report.created), f"{course.code}-new-accounts.csv") if report.created else None
    if accounts.course_role(db(), user(), course.id) != "instructor":
        flash("The roster changed your own role in this course.", "warning")
    return _course_page(course, new_accounts=new_accounts, roster_report=report)


# ------------------------------------------------------------------------------ assignments


def _store_version(
    course: Course,
    attempt: Attempt,
    assignment: Optional[Assignment],
    regrade: bool,
) -> tuple[Optional[AssignmentVersion], Optional[str]]:
    """Store a checked upload as the next version; regrade if asked and it became current.
    Returns the version, or an error message for the form."""
    assert attempt.checked is not None
    try:
        version = catalog.add_version(db(), course, attempt.checked, user(), assignment=assignment)
    except catalog.CatalogError as exc:
        db().rollback()
        return None, str(exc)
    except IntegrityError:
        db().rollback()
        return None, "another version was stored at the same moment; look at the version history and try again"
    target = version.assignment
    became_current = target.current_version_id == version.id
    queued: list[int] = []
    if regrade and became_current:
        queued = subs.requeue_for_regrade(db(), _submission_ids(target), by=user().id)
    db().commit()
    _enqueue(queued)  # after the commit: a worker must find the rows queued against the new version
    if became_current:
        message = f"Version {version.number} passed its self-test and is now current."
        if queued:
            message += f" {len(queued)} submission(s) queued for regrading."
        flash(message, "success")
    else:
        message = (
            f"Version {version.number} was stored but failed its self-test, so it is not current "
            "and cannot be published; see its report below."
        )
        if regrade:
            message += " Nothing was regraded."
        flash(message, "error")
    return version, None


def _new_assignment_page(text_form: TextSpecForm, zip_form: ZipSpecForm, course: Course, status: int = 200,
                         **context: Any) -> Any:
    return render_template(
        "instructor/new_assignment.html", course=course, text_form=text_form, zip_form=zip_form,
        examples=builtin_ids(), **context
    ), status


def _new_from(course: Course, files: specs.SpecFiles, error: Optional[str],
              text_form: TextSpecForm, zip_form: ZipSpecForm, which: str) -> Any:
    """Check and store an upload as a new assignment, or show the form again with the error."""
    existing = None
    attempt = Attempt(error=error)
    if attempt.error is None:
        slug = specs.spec_id(files)
        existing = db().scalar(select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == slug))
        if existing is not None:
            # Not silently a new version of it: that is done (with a regrade offer) on its own page.
            attempt.error = (
                f"this course already has an assignment with id {slug!r}; "
                "store a new version from its settings page instead"
            )
        else:
            attempt = check_upload(files)
    version = None
    if attempt.error is None:
        version, attempt.error = _store_version(course, attempt, None, regrade=False)
    if version is None:
        return _new_assignment_page(
            text_form, zip_form, course, 400, error_for=which, existing=existing, spec_error=attempt.error
        )
    return redirect(url_for("instructor.assignment", code=course.code, slug=version.assignment.slug)
                    + f"#version-{version.number}")


@bp.route("/courses/<code>/manage/assignments/new", methods=["GET", "POST"])
@login_required
def new_assignment(code: str) -> Any:
    course = _instructor_course(code)
    zip_form = ZipSpecForm(formdata=None)
    text_form = TextSpecForm()
    if not text_form.is_submitted():
        example = request.args.get("example", "")
        if example in builtin_ids():
            # A working spec to start from is the quickest way to learn the format.
            files = specs.files_from_folder(builtin_dir() / example)
            for attr, name in FORM_FILES:
                getattr(text_form, attr).data = files.get(name, "")
        return _new_assignment_page(text_form, zip_form, course)
    if not text_form.validate():
        return _new_assignment_page(text_form, zip_form, course, 400)
    files, error = _text_files(text_form, None)
    return _new_from(course, files, error, text_form, zip_form, "text")


@bp.post("/courses/<code>/manage/assignments/new/zip")
@login_required
def new_assignment_zip(code: str) -> Any:
    course = _instructor_course(code)
    zip_form = ZipSpecForm()
    text_form = TextSpecForm(formdata=None)
    if not zip_form.validate_on_submit():
        return _new_assignment_page(text_form, zip_form, course, 400)
    files, error = _zip_files(zip_form)
    return _new_from(course, files, error, text_form, zip_form, "zip")


def _assignment_page(course: Course, assignment: Assignment, status: int = 200, **context: Any) -> Any:
    versions = list(assignment.versions)
    base = versions[-1] if versions else None
    n_subs = _submission_counts(course).get(assignment.id, 0)
    text_form: TextSpecForm = context.pop("text_form", None) or _prefilled_text_form(base)
    zip_form: ZipSpecForm = context.pop("zip_form", None) or ZipSpecForm(formdata=None)
    for form in (text_form, zip_form):
        form.regrade.label.text = f"Regrade all {n_subs} submission(s) against the new version (if it passes its self-test)"
    policy = subs.assignment_policy(assignment)
    extensions = [
        (ext, student, subs.assignment_policy(assignment, ext.due_at).closes_at)
        for ext, student in db().execute(
            select(Extension, User).join(User, User.id == Extension.user_id)
            .where(Extension.assignment_id == assignment.id).order_by(User.email)
        ).all()
    ]
    creator_ids = {v.created_by_id for v in versions if v.created_by_id is not None}
    creators = dict(db().execute(select(User.id, User.email).where(User.id.in_(creator_ids))).all()) if creator_ids else {}
    extra_files = sorted(n for n in (base.files if base else {}) if n not in dict(FORM_FILES).values())
    return render_template(
        "instructor/assignment.html",
        course=course,
        assignment=assignment,
        versions=list(reversed(versions)),
        version_summary=_version_summary,
        parse_report=parse_report,
        base=base,
        extra_files=extra_files,
        n_subs=n_subs,
        policy=policy,
        refusal=publish_refusal(assignment),
        extensions=extensions,
        creators=creators,
        now=utcnow(),
        datetime_local_value=datetime_local_value,
        settings_form=context.pop("settings_form", None) or _prefilled_settings(assignment),
        extension_form=context.pop("extension_form", None) or ExtensionForm(formdata=None),
        text_form=text_form,
        zip_form=zip_form,
        **context,
    ), status


def _prefilled_text_form(base: Optional[AssignmentVersion]) -> TextSpecForm:
    form = TextSpecForm(formdata=None)
    if base is not None:
        for attr, name in FORM_FILES:
            getattr(form, attr).data = base.files.get(name, "")
        form.base_version.data = str(base.number)
    return form


def _prefilled_settings(assignment: Assignment) -> SettingsForm:
    form = SettingsForm(formdata=None)
    form.open_at.data = assignment.open_at
    form.due_at.data = assignment.due_at
    late = assignment.late_cutoff_days > 0
    form.late_mode.data = "penalty" if late else "none"
    form.penalty_pct.data = f"{assignment.late_penalty_per_day * 100:g}" if late else ""
    form.cutoff_days.data = str(assignment.late_cutoff_days) if late else ""
    form.max_submissions.data = "" if assignment.max_submissions is None else str(assignment.max_submissions)
    return form


@bp.get("/courses/<code>/assignments/<slug>/manage")
@login_required
def assignment(code: str, slug: str) -> Any:
    course, target = _instructor_assignment(code, slug)
    return _assignment_page(course, target)


def _back(course: Course, assignment: Assignment, anchor: str = "") -> Any:
    return redirect(url_for("instructor.assignment", code=course.code, slug=assignment.slug) + anchor)


@bp.post("/courses/<code>/assignments/<slug>/manage/settings")
@login_required
def assignment_settings(code: str, slug: str) -> Any:
    course, target = _instructor_assignment(code, slug)
    form = SettingsForm()
    if not form.validate_on_submit():
        return _assignment_page(course, target, 400, settings_form=form)
    target.open_at = form.open_at.data
    target.due_at = form.due_at.data
    target.late_penalty_per_day = form.penalty
    target.late_cutoff_days = form.cutoff
    target.max_submissions = form.limit
    db().commit()
    flash("Dates and policies saved.", "success")
    return _back(course, target, "#settings")


@bp.post("/courses/<code>/assignments/<slug>/manage/publish")
@login_required
def publish(code: str, slug: str) -> Any:
    course, target = _instructor_assignment(code, slug)
    want = _form_value("published")
    if want not in ("1", "0"):
        abort(400)
    if want == "1":
        reason = publish_refusal(target)
        if reason is not None:
            flash(f"Not published: {reason}.", "error")
            return _back(course, target)
        target.published = True
        db().commit()
        flash("Published: students of the course can see it" + ("." if target.open_at is None else
              f" and submit from {fmt_time(target.open_at)}."), "success")
    else:
        target.published = False
        db().commit()
        flash("Unpublished: students no longer see it; its submissions are kept.", "success")
    return _back(course, target)


@bp.post("/courses/<code>/assignments/<slug>/manage/extensions")
@login_required
def set_extension(code: str, slug: str) -> Any:
    course, target = _instructor_assignment(code, slug)
    form = ExtensionForm()
    if not form.validate_on_submit():
        return _assignment_page(course, target, 400, extension_form=form)
    student = accounts.find_user(db(), form.email.data or "")
    role = accounts.course_role(db(), student, course.id) if student is not None else None
    email = (form.email.data or "").strip()
    if student is None or role is None:
        form.email.errors.append(f"no member of this course has the email {email!r}")
    elif role != "student":
        form.email.errors.append(f"{student.email} is {ROLE_LABELS[role]} in this course, not a student")
    due = form.due_at.data
    if target.due_at is None:
        form.due_at.errors.append("this assignment has no due date; set one before granting extensions")
    elif due is not None and due <= target.due_at:
        form.due_at.errors.append(f"an extension must be later than the due date ({fmt_time(target.due_at)})")
    if form.email.errors or form.due_at.errors or student is None or due is None:
        return _assignment_page(course, target, 400, extension_form=form)
    row = db().scalar(select(Extension).where(Extension.assignment_id == target.id, Extension.user_id == student.id))
    if row is None:
        db().add(Extension(assignment_id=target.id, user_id=student.id, due_at=due))
        verb = "granted"
    else:
        row.due_at = due
        verb = "changed"
    try:
        db().commit()
    except IntegrityError:  # two instructors granting the same extension at once
        db().rollback()
        form.email.errors.append("the extension was changed by someone else at the same moment; try again")
        return _assignment_page(course, target, 400, extension_form=form)
    flash(f"Extension {verb}: {student.email} is now due {fmt_time(due)}.", "success")
    return _back(course, target, "#extensions")


@bp.post("/courses/<code>/assignments/<slug>/manage/extensions/<int:extension_id>/remove")
@login_required
def remove_extension(code: str, slug: str, extension_id: int) -> Any:
    course, target = _instructor_assignment(code, slug)
    row = db().get(Extension, extension_id)
    if row is None or row.assignment_id != target.id:
        abort(404)
    email = row.user.email
    db().delete(row)
    db().commit()
    flash(f"Extension of {email} removed: the assignment's due date applies again.", "success")
    return _back(course, target, "#extensions")


def _new_version(course: Course, target: Assignment, files: specs.SpecFiles, error: Optional[str],
                 regrade: bool, **forms: Any) -> Any:
    current = target.current_version
    if error is None and current is not None and specs.digest(files) == current.digest:
        error = f"these files are identical to version {current.number}, the current one; nothing to store"
    attempt = Attempt()
    if error is None:
        attempt = check_upload(files)
        error = attempt.error
    if error is not None:
        return _assignment_page(course, target, 400, spec_error=error, **forms)
    version, error = _store_version(course, attempt, target, regrade)
    if version is None:
        return _assignment_page(course, target, 400, spec_error=error, **forms)
    return _back(course, target, f"#version-{version.number}")


@bp.post("/courses/<code>/assignments/<slug>/manage/versions")
@login_required
def edit_spec(code: str, slug: str) -> Any:
    course, target = _instructor_assignment(code, slug)
    form = TextSpecForm()
    if not form.validate_on_submit():
        return _assignment_page(course, target, 400, text_form=form, error_for="text")
    base = None
    if (form.base_version.data or "").isdigit():
        base = next((v for v in target.versions if v.number == int(form.base_version.data or 0)), None)
    files, error = _text_files(form, base)
    return _new_version(course, target, files, error, bool(form.regrade.data), text_form=form, error_for="text")


@bp.post("/courses/<code>/assignments/<slug>/manage/versions/zip")
@login_required
def upload_version(code: str, slug: str) -> Any:
    course, target = _instructor_assignment(code, slug)
    form = ZipSpecForm()
    if not form.validate_on_submit():
        return _assignment_page(course, target, 400, zip_form=form, error_for="zip")
    files, error = _zip_files(form)
    return _new_version(course, target, files, error, bool(form.regrade.data), zip_form=form, error_for="zip")


@bp.get("/courses/<code>/assignments/<slug>/manage/versions/<int:number>.zip")
@login_required
def version_zip(code: str, slug: str, number: int) -> Any:
    """A stored version as a spec folder zip, the same shape an upload takes."""
    course, target = _instructor_assignment(code, slug)
    version = next((v for v in target.versions if v.number == number), None)
    if version is None:
        abort(404)
    folder = f"{target.slug}-v{version.number}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in sorted(version.files.items()):
            archive.writestr(f"{folder}/{name}", text)
    buffer.seek(0)
    return send_file(buffer, mimetype="application/zip", as_attachment=True, download_name=f"{folder}.zip")
