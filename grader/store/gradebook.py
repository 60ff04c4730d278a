"""The queries behind the gradebooks: a handful of set-based SELECTs per page (never one
per student), turned into the plain values `grader.gradebook` computes with."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session

from grader.gradebook import AssignmentInfo, Made, StatusCounts, StudentInfo, SubmissionInfo
from grader.gradebook import mistakes_of as gb_mistakes_of
from grader.store.models import Assignment, AssignmentVersion, Extension, Membership, Submission, User

# Bound parameters per IN (...) list: well below SQLite's and PostgreSQL's limits.
CHUNK = 500


@dataclass
class Facts:
    """What a gradebook needs to know about a course (or one of its assignments)."""

    students: list[StudentInfo]
    assignments: list[AssignmentInfo]
    submissions: list[SubmissionInfo]
    extensions: dict[tuple[int, int], dt.datetime]


def students_of(session: Session, course_id: int) -> list[StudentInfo]:
    """Members of the course with the role student, by name."""
    rows = session.execute(
        select(User.id, User.email, User.name)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.course_id == course_id, Membership.role == "student")
    ).all()
    students = [StudentInfo(uid, email, name or "") for uid, email, name in rows]
    students.sort(key=lambda s: s.sort_name)
    return students


def member(session: Session, course_id: int, user_id: int) -> Optional[tuple[StudentInfo, str]]:
    """A member of the course (any role) with that role; None for anyone else."""
    row = session.execute(
        select(User.id, User.email, User.name, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.course_id == course_id, User.id == user_id)
    ).first()
    if row is None:
        return None
    return StudentInfo(row.id, row.email, row.name or ""), row.role


def assignments_of(session: Session, course_id: int, assignment_id: Optional[int] = None) -> list[AssignmentInfo]:
    """The course's assignments (or just one), by due date (undated last), with the points of
    their current spec version."""
    query = (
        select(Assignment, AssignmentVersion.max_score)
        .outerjoin(AssignmentVersion, AssignmentVersion.id == Assignment.current_version_id)
        .where(Assignment.course_id == course_id)
        .order_by(Assignment.due_at.is_(None), Assignment.due_at, Assignment.id)
    )
    if assignment_id is not None:
        query = query.where(Assignment.id == assignment_id)
    return [
        AssignmentInfo(
            id=a.id,
            slug=a.slug,
            title=a.title,
            published=a.published,
            max_score=max_score,
            due_at=a.due_at,
            penalty_per_day=a.late_penalty_per_day or 0.0,
            cutoff_days=a.late_cutoff_days or 0,
        )
        for a, max_score in session.execute(query).all()
    ]


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i : i + CHUNK])


def submissions_of(
    session: Session, assignment_ids: Sequence[int], user_id: Optional[int] = None
) -> list[SubmissionInfo]:
    """Every submission to these assignments (optionally of one user), without the source
    or the result JSON, which a gradebook does not need."""
    out: list[SubmissionInfo] = []
    for chunk in _chunks(list(assignment_ids)):
        query = select(
            Submission.id,
            Submission.assignment_id,
            Submission.user_id,
            Submission.submitted_at,
            Submission.status,
            Submission.score,
            Submission.max_score,
        ).where(Submission.assignment_id.in_(chunk))
        if user_id is not None:
            query = query.where(Submission.user_id == user_id)
        out.extend(SubmissionInfo(*row) for row in session.execute(query).all())
    return out


def extensions_of(session: Session, assignment_ids: Sequence[int]) -> dict[tuple[int, int], dt.datetime]:
    out = {}
    for chunk in _chunks(list(assignment_ids)):
        rows = session.execute(
            select(Extension.assignment_id, Extension.user_id, Extension.due_at).where(
                Extension.assignment_id.in_(chunk)
            )
        ).all()
        out.update({(aid, uid): due for aid, uid, due in rows})
    return out


def load(
    session: Session, course_id: int, assignment_id: Optional[int] = None, user_id: Optional[int] = None
) -> Facts:
    """The facts for a course gradebook, one assignment's gradebook (`assignment_id`) or one
    student's page (`user_id`; the students list is then left empty)."""
    assignments = assignments_of(session, course_id, assignment_id)
    ids = [a.id for a in assignments]
    return Facts(
        students=students_of(session, course_id) if user_id is None else [],
        assignments=assignments,
        submissions=submissions_of(session, ids, user_id),
        extensions=extensions_of(session, ids),
    )


def results_of(session: Session, submission_ids: Sequence[int]) -> dict[int, Any]:
    """The stored result JSON of these submissions (for per-function pass rates)."""
    out: dict[int, Any] = {}
    for chunk in _chunks(list(submission_ids)):
        rows = session.execute(select(Submission.id, Submission.result).where(Submission.id.in_(chunk))).all()
        out.update({sid: result for sid, result in rows})
    return out


# PostgreSQL unnests the result JSON itself, so only (submission, function, output, mistake)
# rows cross the wire instead of whole results with every trial. Anything of an unexpected
# JSON type (an old or odd result) unnests to nothing rather than failing the page.
_PG_MISTAKES = text(
    """
    SELECT s.id, p.value ->> 'function', o.value ->> 'name', m.value #>> '{}'
    FROM submissions AS s
    CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(s.result -> 'parts') = 'array'
        THEN s.result -> 'parts' ELSE '[]'::jsonb END) AS p
    CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(p.value -> 'outputs') = 'array'
        THEN p.value -> 'outputs' ELSE '[]'::jsonb END) AS o
    CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(o.value -> 'mistakes') = 'array'
        THEN o.value -> 'mistakes' ELSE '[]'::jsonb END) AS m
    WHERE s.id IN :ids AND jsonb_typeof(m.value) = 'string' AND jsonb_typeof(p.value -> 'function') = 'string'
    """
).bindparams(bindparam("ids", expanding=True))


def mistakes_of(session: Session, submission_ids: Sequence[int]) -> dict[int, list[Made]]:
    """The recognised mistakes (function, output, mistake) of these submissions, read in
    chunks; submissions without any are left out."""
    out: dict[int, list[Made]] = {}
    postgres = session.get_bind().dialect.name == "postgresql"
    for chunk in _chunks(list(submission_ids)):
        if postgres:
            for sid, function, output, mistake in session.execute(_PG_MISTAKES, {"ids": chunk}).all():
                if mistake:
                    out.setdefault(sid, []).append((function, output or "", mistake))
            continue
        # Elsewhere (SQLite) only the parts are read, and reduced to their mistakes chunk by chunk.
        rows = session.execute(select(Submission.id, Submission.result["parts"]).where(Submission.id.in_(chunk))).all()
        for sid, parts in rows:
            made = gb_mistakes_of({"parts": parts})
            if made:
                out[sid] = made
    return out


def status_counts(session: Session, assignment_id: int) -> StatusCounts:
    rows = session.execute(
        select(Submission.status, func.count(Submission.id))
        .where(Submission.assignment_id == assignment_id)
        .group_by(Submission.status)
    ).all()
    return StatusCounts({status: int(n) for status, n in rows})


def submission_ids(session: Session, assignment_id: int) -> list[int]:
    """Every submission of an assignment, oldest first (a regrade of "all")."""
    return list(
        session.scalars(
            select(Submission.id).where(Submission.assignment_id == assignment_id).order_by(Submission.id)
        )
    )
