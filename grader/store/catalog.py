"""Courses and assignments: adding a spec version (validated and self-tested first), loading
the built-ins into a course, and the loaded spec a submission is graded against."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from grader.runner.base import Runner
from grader.selftest import SelfTestReport, self_test
from grader.spec import Assignment as LoadedSpec
from grader.spec import SpecError, builtin_dir, builtin_ids
from grader.store import specs
from grader.store.models import Assignment, AssignmentVersion, Course, User


class CatalogError(ValueError):
    """A course or assignment operation refused; the message is for the instructor."""


def create_course(session: Session, code: str, title: str) -> Course:
    code = (code or "").strip().lower()
    if not code or len(code) > 64 or not all(ch.isalnum() or ch in "-_" for ch in code):
        raise CatalogError("a course code is 1-64 letters, digits, '-' or '_' (it appears in URLs)")
    if session.scalar(select(Course).where(Course.code == code)) is not None:
        raise CatalogError(f"a course with code {code!r} already exists")
    course = Course(code=code, title=(title or code).strip()[:200])
    session.add(course)
    session.flush()
    return course


@dataclass
class Checked:
    """A spec folder that loaded; `report` says whether it may be published."""

    files: specs.SpecFiles
    spec: LoadedSpec
    report: SelfTestReport

    @property
    def ok(self) -> bool:
        return self.report.ok


def check_files(files: specs.SpecFiles, runner: Optional[Runner] = None) -> Checked:
    """Validate and self-test spec files. Raises SpecError when the spec does not load at
    all; self-test problems (trials, finite differences, starter, reference solution) are
    in the report."""
    spec = specs.load_files(files)
    solution = files.get(specs.SOLUTION_FILE)
    report = self_test(spec, solution=solution.encode("utf-8") if solution is not None else None, runner=runner)
    return Checked(files, spec, report)


def report_text(report: SelfTestReport) -> str:
    lines = [f"problem: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def add_version(
    session: Session,
    course: Course,
    checked: Checked,
    user: Optional[User] = None,
    assignment: Optional[Assignment] = None,
) -> AssignmentVersion:
    """Store a checked spec as the next version of `assignment` (or of a new assignment,
    unpublished, in `course`). A spec that failed its self-test is stored but not made
    current, so it can be fixed without breaking grading."""
    slug = checked.spec.id
    if assignment is None:
        assignment = session.scalar(select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == slug))
    if assignment is None:
        assignment = Assignment(course_id=course.id, slug=slug, title=checked.spec.spec.title, published=False)
        session.add(assignment)
        session.flush()
    elif assignment.slug != slug:
        raise CatalogError(f"this spec's id is {slug!r}, but the assignment is {assignment.slug!r}; ids cannot change")
    number = 1 + max((v.number for v in assignment.versions), default=0)
    version = AssignmentVersion(
        assignment_id=assignment.id,
        number=number,
        spec_version=checked.spec.spec.version,
        files=checked.files,
        digest=specs.digest(checked.files),
        max_score=checked.spec.max_score,
        selftest_ok=checked.ok,
        selftest_report=report_text(checked.report),
        created_by_id=user.id if user else None,
    )
    session.add(version)
    session.flush()
    if checked.ok:
        assignment.current_version_id = version.id
        assignment.title = checked.spec.spec.title
    session.flush()
    return version


def loaded_spec(version: AssignmentVersion) -> LoadedSpec:
    """The spec a submission is graded against, loaded once per process. The cache is keyed
    by digest, so a version's files (tens of kilobytes read from the database) are only
    loaded the first time."""
    spec = specs.cached(version.digest)
    return spec if spec is not None else specs.load_files(version.files, known_digest=version.digest)


def install_builtins(
    session: Session,
    course: Course,
    published: bool = True,
    due_at: Optional[dt.datetime] = None,
    ids: Optional[list[str]] = None,
) -> list[Assignment]:
    """Load the built-in assignments into `course` (the demo course of `grader up`). The
    built-ins are checked by the test suite, so only the quick checks run here."""
    added = []
    for aid in ids or builtin_ids():
        files = specs.files_from_folder(builtin_dir() / aid)
        try:
            spec = specs.load_files(files)
        except SpecError as exc:
            raise CatalogError(f"built-in assignment {aid}: {exc}") from None
        checked = Checked(files, spec, SelfTestReport(notes=["built-in assignment: checked by the test suite"]))
        version = add_version(session, course, checked)
        assignment = version.assignment
        assignment.published = published
        assignment.due_at = due_at
        added.append(assignment)
    session.flush()
    return added
