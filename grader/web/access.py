"""Who may see what. Anything a user may not see is a 404, not a 403, so ids and course
codes cannot be probed."""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit

from flask import abort
from flask_login import current_user
from sqlalchemy import select

from grader.store.models import Assignment, Course, Membership, Submission, User
from grader.web.database import db

STAFF = ("ta", "instructor")


def user() -> User:
    return current_user  # type: ignore[return-value]


def role_in(course_id: int, who: Optional[User] = None) -> Optional[str]:
    who = who or user()
    return db().scalar(select(Membership.role).where(Membership.course_id == course_id, Membership.user_id == who.id))


def course_for(code: str, *roles: str) -> tuple[Course, str]:
    """The course with this code if the current user has one of `roles` in it (any role
    when none are given), with that role; else 404."""
    course = db().scalar(select(Course).where(Course.code == code))
    if course is None:
        abort(404)
    role = role_in(course.id)
    if role is None or (roles and role not in roles):
        abort(404)
    return course, role


def assignment_for(course: Course, slug: str, role: str) -> Assignment:
    """An assignment of `course`; students see only published ones."""
    assignment = db().scalar(select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == slug))
    if assignment is None or (role == "student" and not assignment.published):
        abort(404)
    return assignment


def submission_for(submission_id: int, who: Optional[User] = None) -> tuple[Submission, str]:
    """A submission the user may read: their own, or any in a course they are staff of.
    Returns it with the viewer's role in its course ("owner" for a student's own)."""
    who = who or user()
    sub = db().get(Submission, submission_id)
    if sub is None:
        abort(404)
    role = role_in(sub.assignment.course_id, who)
    if role in STAFF:
        return sub, role
    if sub.user_id == who.id and role is not None:
        return sub, "owner"
    abort(404)


def is_staff(role: Optional[str]) -> bool:
    return role in STAFF


def courses_of(who: User) -> list[tuple[Course, str]]:
    """The user's courses with their role in each, by course code."""
    return [
        (course, role)
        for course, role in db().execute(
            select(Course, Membership.role)
            .join(Membership, Membership.course_id == Course.id)
            .where(Membership.user_id == who.id)
            .order_by(Course.code)
        ).all()
    ]


def local_path(target: Optional[str]) -> Optional[str]:
    """`target` if it is a path on this site, else None: a redirect to anywhere else (an
    open redirect) is a phishing gift."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target
