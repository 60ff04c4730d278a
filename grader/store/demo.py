"""The demo course that `grader up` seeds: the built-in assignments, published, and one
account per role."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from grader.store import accounts, catalog
from grader.store.db import utcnow
from grader.store.models import Course

DEMO_COURSE = "demo"
DEMO_USERS = (
    ("student@example.com", "student", "Demo Student"),
    ("ta@example.com", "ta", "Demo TA"),
    ("instructor@example.com", "instructor", "Demo Instructor"),
)


@dataclass(frozen=True)
class DemoAccount:
    email: str
    role: str
    password: Optional[str]  # None when the account already existed (its password is unchanged)


def seed_demo(session: Session, passwords: Optional[dict[str, str]] = None) -> list[DemoAccount]:
    """Create the demo course and accounts if missing (idempotent). New accounts get the
    given or a random password. The caller commits."""
    course = session.scalar(select(Course).where(Course.code == DEMO_COURSE))
    if course is None:
        course = catalog.create_course(session, DEMO_COURSE, "Backpropagation (demo course)")
        due = (utcnow() + dt.timedelta(days=14)).replace(hour=23, minute=59, second=0, microsecond=0)
        for assignment in catalog.install_builtins(session, course, published=True, due_at=due):
            assignment.late_penalty_per_day = 0.1
            assignment.late_cutoff_days = 3
    made = []
    for email, role, name in DEMO_USERS:
        user = accounts.find_user(session, email)
        password = None
        if user is None:
            password = (passwords or {}).get(role) or secrets.token_urlsafe(9)
            user = accounts.create_user(session, email, role=role, password=password, name=name)
        accounts.set_membership(session, course, user, role)
        made.append(DemoAccount(email, role, password))
    session.flush()
    return made
