"""The service's tables. The database is the source of truth; the broker only delivers ids.

The schema is created only by the Alembic migrations in `migrations/`; these classes are
what the code reads and writes, and a test checks that they match the migrated schema."""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from grader.store.db import UTCDateTime, utcnow

ROLES = ("student", "ta", "instructor")
STATUSES = ("queued", "running", "graded", "error")

# Stable constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # stored lower-case
    name: Mapped[str] = mapped_column(String(200), default="")
    # Argon2 hash; None means the account cannot log in with a password (yet).
    password_hash: Mapped[Optional[str]] = mapped_column(String(200))
    # The site-wide role: instructors may create courses. Per-course roles are memberships.
    role: Mapped[str] = mapped_column(String(20), default="student")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list["Membership"]] = relationship(back_populates="user", cascade="all, delete-orphan")

    # Flask-Login's protocol, kept here so the model needs no Flask import.
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        # The session (and remember cookie) names the password too, so changing it or
        # resetting it ends every other session of this account.
        return f"{self.id}.{self.session_stamp}"

    @property
    def session_stamp(self) -> str:
        import hashlib

        return hashlib.sha256((self.password_hash or "").encode()).hexdigest()[:16]

    @property
    def display_name(self) -> str:
        return self.name or self.email


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    # sha256 of the token; the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # to tell tokens apart in a list
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship()


class Course(Base):
    __tablename__ = "courses"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)  # URL slug, e.g. "cs231-f26"
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list["Membership"]] = relationship(back_populates="course", cascade="all, delete-orphan")
    assignments: Mapped[list["Assignment"]] = relationship(
        back_populates="course", cascade="all, delete-orphan", order_by="Assignment.id"
    )


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("course_id", "user_id", name="uq_memberships_course_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))  # one of ROLES

    course: Mapped[Course] = relationship(back_populates="memberships")
    user: Mapped[User] = relationship(back_populates="memberships")


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("course_id", "slug", name="uq_assignments_course_slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"), index=True)
    slug: Mapped[str] = mapped_column(String(64))  # the spec's id, e.g. "vjp"
    title: Mapped[str] = mapped_column(String(200))
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    open_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    due_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    # Late policy: this fraction of the score is lost per started day late, and nothing is
    # accepted more than `late_cutoff_days` after the due date (0: no late submissions).
    late_penalty_per_day: Mapped[float] = mapped_column(Float, default=0.0)
    late_cutoff_days: Mapped[int] = mapped_column(Integer, default=0)
    max_submissions: Mapped[Optional[int]] = mapped_column(Integer)  # None: unlimited
    current_version_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("assignment_versions.id", use_alter=True, ondelete="SET NULL")
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    course: Mapped[Course] = relationship(back_populates="assignments")
    versions: Mapped[list["AssignmentVersion"]] = relationship(
        back_populates="assignment",
        foreign_keys="AssignmentVersion.assignment_id",
        cascade="all, delete-orphan",
        order_by="AssignmentVersion.number",
    )
    current_version: Mapped[Optional["AssignmentVersion"]] = relationship(
        foreign_keys=[current_version_id], post_update=True
    )
    extensions: Mapped[list["Extension"]] = relationship(back_populates="assignment", cascade="all, delete-orphan")


class AssignmentVersion(Base):
    """One uploaded version of an assignment's spec folder (spec.yaml, handout, starter)."""

    __tablename__ = "assignment_versions"
    __table_args__ = (UniqueConstraint("assignment_id", "number", name="uq_assignment_versions_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per assignment
    spec_version: Mapped[str] = mapped_column(String(64))  # the spec's own `version` field
    files: Mapped[dict[str, str]] = mapped_column(JSONType)  # file name -> text
    digest: Mapped[str] = mapped_column(String(64))  # sha256 over the files
    max_score: Mapped[float] = mapped_column(Float)
    selftest_ok: Mapped[bool] = mapped_column(Boolean, default=False)
    selftest_report: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    assignment: Mapped[Assignment] = relationship(back_populates="versions", foreign_keys=[assignment_id])


class Extension(Base):
    __tablename__ = "extensions"
    __table_args__ = (UniqueConstraint("assignment_id", "user_id", name="uq_extensions_assignment_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    assignment: Mapped[Assignment] = relationship(back_populates="extensions")
    user: Mapped[User] = relationship()


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (
        Index("ix_submissions_assignment_user", "assignment_id", "user_id"),
        Index("ix_submissions_status", "status"),
        # /metrics reads the last hour's gradings (latency, rate, errors, workers) by this.
        Index("ix_submissions_graded_at", "graded_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The spec version it was (or will be) graded against; a regrade moves it forward.
    version_id: Mapped[int] = mapped_column(ForeignKey("assignment_versions.id"))
    filename: Mapped[str] = mapped_column(String(255))
    source: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    via: Mapped[str] = mapped_column(String(10), default="web")  # web | paste | api
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(10), default="queued")  # one of STATUSES
    score: Mapped[Optional[float]] = mapped_column(Float)
    max_score: Mapped[Optional[float]] = mapped_column(Float)
    result: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONType)
    error: Mapped[Optional[str]] = mapped_column(Text)  # why grading could not happen (status error)
    # Delivery: the task claims the row with a lease and writes only while it holds it.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[Optional[str]] = mapped_column(String(36))
    lease_expires_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    graded_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    grade_count: Mapped[int] = mapped_column(Integer, default=0)  # 1 after the first grading, 2 after a regrade, ...
    # The worker process (`host:pid`) that last claimed the row: /metrics counts live workers.
    claimed_by: Mapped[Optional[str]] = mapped_column(String(100))

    assignment: Mapped[Assignment] = relationship()
    user: Mapped[User] = relationship()
    version: Mapped[AssignmentVersion] = relationship()
