"""Users, passwords, API tokens, course memberships and roster import."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import secrets
from dataclasses import dataclass, field
import datetime as dt
from typing import Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from grader.store.db import utcnow
from grader.store.models import ROLES, ApiToken, Course, Membership, User

_hasher = PasswordHasher()
TOKEN_PREFIX = "bpg_"
MIN_PASSWORD = 8
EMAIL_RE = re.compile(r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")
# Verified against when the email is unknown, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("not a real password")


class AccountError(ValueError):
    """Bad account input; the message is meant for the person who typed it."""


def normalize_email(email: str) -> str:
    email = (email or "").strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 254:
        raise AccountError(f"{email!r} is not an email address")
    return email


def check_role(role: str) -> str:
    role = (role or "").strip().lower()
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    return role


def use_cheap_hashing_for_tests() -> None:
    """Argon2 with its cheapest parameters: the test suite creates many accounts, and the
    production cost (tens of ms each) would only slow it down. Never called by the service."""
    global _hasher, _DUMMY_HASH
    from argon2.profiles import CHEAPEST

    _hasher = PasswordHasher.from_parameters(CHEAPEST)
    _DUMMY_HASH = _hasher.hash("not a real password")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(user: Optional[User], password: str) -> bool:
    if user is None or not user.password_hash:
        try:
            _hasher.verify(_DUMMY_HASH, password)
        except VerificationError:
            pass
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def find_user(session: Session, email: str) -> Optional[User]:
    try:
        email = normalize_email(email)
    except AccountError:
        return None
    return session.scalar(select(User).where(User.email == email))


def authenticate(session: Session, email: str, password: str) -> Optional[User]:
    user = find_user(session, email)
    ok = verify_password(user, password)
    if not ok or user is None or not user.active:
        return None
    if _hasher.check_needs_rehash(user.password_hash or ""):
        user.password_hash = _hasher.hash(password)
    return user


def create_user(
    session: Session, email: str, role: str = "student", password: Optional[str] = None, name: str = ""
) -> User:
    email = normalize_email(email)
    role = check_role(role)
    if find_user(session, email) is not None:
        raise AccountError(f"a user with email {email} already exists")
    user = User(email=email, role=role, name=name.strip()[:200])
    if password is not None:
        user.password_hash = hash_password(password)
    session.add(user)
    session.flush()
    return user


def initial_password() -> str:
    """A random first password for a new account, handed out once (12 URL-safe characters).
    It starts with a letter or digit, so a spreadsheet opening a CSV of new accounts never
    reads it as a formula (a leading '-' would be)."""
    while True:
        password = secrets.token_urlsafe(9)
        if password[0].isalnum():
            return password


def set_password(user: User, password: str) -> None:
    user.password_hash = hash_password(password)


def set_membership(session: Session, course: Course, user: User, role: str) -> Membership:
    role = check_role(role)
    membership = session.scalar(
        select(Membership).where(Membership.course_id == course.id, Membership.user_id == user.id)
    )
    if membership is None:
        membership = Membership(course_id=course.id, user_id=user.id, role=role)
        session.add(membership)
    else:
        membership.role = role
    session.flush()
    return membership


def course_role(session: Session, user: User, course_id: int) -> Optional[str]:
    return session.scalar(
        select(Membership.role).where(Membership.course_id == course_id, Membership.user_id == user.id)
    )


TOKEN_USE_RESOLUTION = dt.timedelta(minutes=1)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, user: User, name: str = "") -> str:
    """A new API token for `user`; the caller shows it once. Only its hash is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:100], token_hash=_token_hash(token), prefix=token[:12]))
    session.flush()
    return token


# Built once: every API request runs it, and building a statement (and its cache key) costs
# about as much CPU as executing it.
_TOKEN_ROW = select(ApiToken).options(joinedload(ApiToken.user)).where(ApiToken.token_hash == bindparam("token_hash"))


def user_for_token(session: Session, token: str) -> Optional[User]:
    if not token or len(token) > 200:
        return None
    row = session.scalar(_TOKEN_ROW, {"token_hash": _token_hash(token)})
    if row is None or row.revoked or not row.user.active:
        return None
    now = utcnow()
    # The account page shows when a token was last used, to the minute. Writing it on every
    # request would cost a commit per call at a deadline, when a script polls its results.
    if row.last_used_at is None or now - row.last_used_at >= TOKEN_USE_RESOLUTION:
        row.last_used_at = now
    return row.user


@dataclass
class RosterReport:
    created: list[tuple[str, str]] = field(default_factory=list)  # (email, initial password)
    updated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


MAX_ROSTER_ROWS = 5000


def import_roster(session: Session, course: Course, text: str) -> RosterReport:
    """CSV with a header row: `email` (required), `name`, `role` (default student),
    `password` (optional). New accounts without a password get a random one, reported once
    so the instructor can hand it out. Bad rows are reported by line; good rows still import."""
    report = RosterReport()
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "email" not in fields:
        raise AccountError("the roster needs a header row with an 'email' column (optional: name, role, password)")
    reader.fieldnames = fields
    for line, row in enumerate(reader, start=2):
        if line - 1 > MAX_ROSTER_ROWS:
            report.errors.append(f"more than {MAX_ROSTER_ROWS} rows; the rest were not imported")
            break
        row = {k: (v or "").strip() for k, v in row.items() if k}
        if not any(row.values()):
            continue
        try:
            email = normalize_email(row.get("email", ""))
            role = check_role(row.get("role") or "student")
            user = find_user(session, email)
            password = row.get("password") or None
            if user is None:
                initial = password or initial_password()
                # The site-wide role stays "student": creating courses is for accounts an
                # operator makes instructors (grader users add), not for roster entries.
                user = create_user(session, email, role="student", password=initial, name=row.get("name", ""))
                report.created.append((email, "" if password else initial))
            else:
                # An existing account keeps its name: an instructor of one course must not
                # rename people as they appear in other courses.
                report.updated.append(email)
            set_membership(session, course, user, role)
        except AccountError as exc:
            report.errors.append(f"line {line}: {exc}")
    return report
