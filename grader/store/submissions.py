"""A submission's life: stored, claimed under a lease, graded (or failed), regraded.

Every state change is a conditional UPDATE, so two deliveries of the same message, a
worker that lost its lease, or a regrade racing a grading can never score a row twice."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from grader import logs
from grader.grade import MAX_SOURCE_BYTES, new_seed
from grader.policy import LatePolicy, NotAccepted, check_accepting, counting, effective_due
from grader.store.db import JsonText, UTCDateTime, utcnow
from grader.store.models import Assignment, AssignmentVersion, Extension, Submission, User

log = logging.getLogger("grader.submissions")

# A worker must finish within its lease; the job budget in a spec is 60 s by default and the
# Celery hard limit sits below this, so a live worker never loses its lease mid-grading.
LEASE_SECONDS = 300
# Grading attempts before a submission is given up on (status "error"): a row that kills
# its worker every time must not loop forever.
MAX_ATTEMPTS = 3


def log_event(event: str, submission_id: int, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line per state change, `submission.<event>`, with ids and timings for
    operators at a deadline (README, "Log lines"). Never pass source, output or error text:
    reasons are given as a short class (`reason="sandbox-failure"`)."""
    logs.event(log, f"submission.{event}", level, submission_id=submission_id, **fields)


def _ms(later: Optional[dt.datetime], earlier: Optional[dt.datetime]) -> Optional[int]:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds() * 1000)


def assignment_policy(assignment: Assignment, extension: Optional[dt.datetime] = None) -> LatePolicy:
    """The assignment's late policy, for a student with this extension (or none)."""
    return LatePolicy(
        due_at=effective_due(assignment.due_at, extension),
        penalty_per_day=assignment.late_penalty_per_day,
        cutoff_days=assignment.late_cutoff_days,
    )


# Statements every submission runs, built once: building one (and its cache key) costs about
# as much CPU as executing it.
_EXTENSION = select(Extension.due_at).where(
    Extension.assignment_id == bindparam("assignment_id"), Extension.user_id == bindparam("user_id")
)
_USED = select(func.count(Submission.id)).where(
    Submission.assignment_id == bindparam("assignment_id"), Submission.user_id == bindparam("user_id")
)
# Sets each row's id to itself: nothing in the session to bring up to date.
_LOCK_USER = (
    update(User).where(User.id == bindparam("user_id")).values(id=User.id).execution_options(synchronize_session=False)
)


def policy_for(session: Session, assignment: Assignment, user_id: int) -> LatePolicy:
    ext = session.scalar(_EXTENSION, {"assignment_id": assignment.id, "user_id": user_id})
    return assignment_policy(assignment, ext)


def used_submissions(session: Session, assignment_id: int, user_id: int) -> int:
    return session.scalar(_USED, {"assignment_id": assignment_id, "user_id": user_id}) or 0


def counting_id(session: Session, assignment_id: int, user_id: int) -> Optional[int]:
    """The id of the student's submission that counts for the assignment (policy.counting
    over their graded ones), or None when none is graded."""
    graded = session.execute(
        select(Submission.id, Submission.submitted_at).where(
            Submission.assignment_id == assignment_id,
            Submission.user_id == user_id,
            Submission.status == "graded",
            Submission.score.is_not(None),
        )
    ).all()
    return counting([(row.id, row.submitted_at) for row in graded])


def create_submission(
    session: Session,
    assignment: Assignment,
    user: User,
    data: bytes,
    filename: str,
    via: str = "web",
    now: Optional[dt.datetime] = None,
    enforce: bool = True,
) -> Submission:
    """Store a submission as queued (the caller commits, then enqueues its id). Raises
    NotAccepted with a reason for the student when the assignment does not take it.
    `enforce=False` is for staff submitting on a student's behalf (no dates, no limit)."""
    now = now or utcnow()
    if len(data) > MAX_SOURCE_BYTES:
        raise NotAccepted(f"the file is {len(data)} bytes; the limit is {MAX_SOURCE_BYTES // 1024} KiB")
    if assignment.current_version_id is None:
        raise NotAccepted("this assignment has no spec yet")
    if enforce:
        limited = assignment.max_submissions is not None
        if limited:
            # Serialise a student's concurrent submissions so the limit cannot be raced past:
            # a no-op UPDATE of their row locks it on PostgreSQL and takes SQLite's write lock
            # (SELECT ... FOR UPDATE is ignored there) before anything is counted. Without a
            # limit there is nothing to count or race: no lock, no count (two round trips,
            # and a dead row version of the user per submission).
            session.execute(_LOCK_USER, {"user_id": user.id})
        check_accepting(
            now,
            assignment.published,
            assignment.open_at,
            policy_for(session, assignment, user.id),
            used_submissions(session, assignment.id, user.id) if limited else 0,
            assignment.max_submissions,
        )
    submission = Submission(
        assignment_id=assignment.id,
        user_id=user.id,
        version_id=assignment.current_version_id,
        filename=_clean_filename(filename),
        source=data,
        size=len(data),
        digest=hashlib.sha256(data).hexdigest(),
        via=via,
        submitted_at=now,
        seed=new_seed(),
        status="queued",
        enqueued_at=now,
    )
    session.add(submission)
    session.flush()
    log_event(
        "created",
        submission.id,
        user_id=user.id,
        assignment_id=assignment.id,
        course_id=assignment.course_id,
        size=len(data),
        via=via,
    )
    return submission


def _clean_filename(name: str) -> str:
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "submission.py"


@dataclass(frozen=True)
class Work:
    """What grading a claimed row needs, read by the claim's own statement. The source and
    the last problem seen are kept out of the repr: they never reach a log line."""

    source: bytes = field(repr=False)
    seed: int
    last_error: Optional[str] = field(repr=False)
    version_id: int
    version_number: int
    version_digest: str


@dataclass(frozen=True)
class Claim:
    submission_id: int
    token: str
    attempt: int
    work: Work = field(repr=False, compare=False)


# The worker's two statements per grading, the claim and the result, are built once as
# Core statements with bound parameters: building an ORM statement for each task, and
# executing it through the ORM's bulk-update path, cost more CPU than the round trip.
_rows = Submission.__table__.c
_versions = AssignmentVersion.__table__.c


def _of_version(column: Any) -> Any:
    return select(column).where(_versions.id == _rows.version_id).correlate(Submission.__table__).scalar_subquery()


# What a claim returns: the claimed row's timings for the log line and everything grading
# needs, so the worker makes no second read (a round trip, and a transaction, per task).
_CLAIMED = (
    _rows.attempts,
    _rows.submitted_at,
    _rows.enqueued_at,
    _rows.grade_count,
    _rows.source,
    _rows.seed,
    _rows.error,
    _rows.version_id,
    _of_version(_versions.number).label("version_number"),
    _of_version(_versions.digest).label("version_digest"),
)
_NOW = bindparam("now", type_=UTCDateTime)
_CLAIM = (
    update(Submission.__table__)
    .where(
        _rows.id == bindparam("submission_id"),
        or_(_rows.status == "queued", and_(_rows.status == "running", _rows.lease_expires_at < _NOW)),
    )
    .values(
        status="running",
        lease_token=bindparam("token"),
        lease_expires_at=bindparam("expires", type_=UTCDateTime),
        attempts=_rows.attempts + 1,
        started_at=_NOW,
        claimed_by=bindparam("worker"),
    )
    .returning(*_CLAIMED)
)
_CLAIMED_BY = select(*_CLAIMED).where(
    _rows.id == bindparam("submission_id"), _rows.lease_token == bindparam("token"), _rows.status == "running"
)
_FINISH = (
    update(Submission.__table__)
    .where(_rows.id == bindparam("submission_id"), _rows.lease_token == bindparam("token"), _rows.status == "running")
    .values(
        status="graded",
        score=bindparam("score"),
        max_score=bindparam("max"),
        result=bindparam("document"),
        error=None,
        lease_token=None,
        lease_expires_at=None,
        graded_at=_NOW,
        grade_count=_rows.grade_count + 1,
    )
    .returning(_rows.submitted_at)
)


def claim(
    session: Session,
    submission_id: int,
    now: Optional[dt.datetime] = None,
    lease_seconds: float = LEASE_SECONDS,
    worker: Optional[str] = None,
    token: Optional[str] = None,
) -> Optional[Claim]:
    """Take the row for grading: queued, or running with an expired lease (its worker died).
    None when someone else holds it or it is already graded. Commits. The worker passes
    its configured lease (Settings.lease_seconds), which its Celery time limits sit below.
    `worker` names the claiming process (default `host:pid`), kept on the row for /metrics.
    A caller that tries a claim again after a broken connection passes the same `token`
    each time: if the first try committed unheard, the row is running under that token and
    is taken up as claimed (instead of skipped, and left running until its lease ends)."""
    now = now or utcnow()
    worker = (worker or logs.process_id())[:100]
    token = token or str(uuid.uuid4())
    params = {"submission_id": submission_id, "token": token}
    found = session.execute(
        _CLAIM, {**params, "now": now, "expires": now + dt.timedelta(seconds=lease_seconds), "worker": worker}
    ).one_or_none()
    session.commit()
    if found is None:
        found = session.execute(_CLAIMED_BY, params).one_or_none()
        session.commit()  # nothing stays open in the database while the row is graded
        if found is None:
            return None
    log_event(
        "claimed",
        submission_id,
        attempt=found.attempts,
        worker=worker,
        wait_ms=_ms(now, found.submitted_at),
        queued_ms=_ms(now, found.enqueued_at),
        regrade=True if found.grade_count > 0 else None,
    )
    work = Work(
        source=found.source,
        seed=found.seed,
        last_error=found.error,
        version_id=found.version_id,
        version_number=found.version_number,
        version_digest=found.version_digest,
    )
    return Claim(submission_id, token, found.attempts, work)


def _written(session: Session, held: Claim, status: str, stamp: Any, now: dt.datetime) -> bool:
    """Whether the row already shows this very write: its new status, stamped with exactly
    `now`. A write that committed but whose acknowledgement was lost (the connection broke
    after COMMIT) matches nothing when tried again, since it cleared the lease; this tells
    it apart from a lost lease, so it is neither reported as one nor made again."""
    return session.scalar(
        select(func.count())
        .select_from(Submission)
        .where(Submission.id == held.submission_id, Submission.status == status, stamp == now)
    ) == 1


def storable(value: Any) -> Any:
    """The result with every string made storable everywhere: PostgreSQL's JSONB refuses
    NUL characters and JSON encoders lone surrogates, and a student's printed output or
    exception text may hold either (they would make the row ungradable, attempt after
    attempt). NUL becomes U+FFFD, as does any unencodable character."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


def storable_json(result: dict[str, Any]) -> JsonText:
    """`json.dumps(storable(result))`, the text the result is stored as, without walking
    the result in Python unless it needs it: json.dumps escapes every character outside
    ASCII, so a NUL shows as `\\u0000` and any surrogate as `\\udxxx`; with neither in the
    text, storable() would change no string. (A false alarm, e.g. a printed backslash
    followed by `ud`, only takes the slow path.)"""
    text = json.dumps(result)
    if "\\u0000" in text or "\\ud" in text:
        text = json.dumps(storable(result))
    return JsonText(text)


def finish(session: Session, held: Claim, result: dict[str, Any], now: Optional[dt.datetime] = None) -> bool:
    """Write the grading result, only while the lease is still ours. Commits. A caller that
    tries again after a broken connection passes the same `now` each time (see `_written`)."""
    now = now or utcnow()
    submitted_at = session.execute(
        _FINISH,
        {
            "submission_id": held.submission_id,
            "token": held.token,
            "score": float(result["score"]),
            "max": float(result["max_score"]),
            "document": storable_json(result),
            "now": now,
        },
    ).scalar_one_or_none()
    session.commit()
    if submitted_at is None:
        if not _written(session, held, "graded", Submission.graded_at, now):
            log_event("lease_lost", held.submission_id, logging.WARNING, attempt=held.attempt, outcome="graded")
            return False
        submitted_at = session.scalar(select(Submission.submitted_at).where(Submission.id == held.submission_id))
    timing = result.get("timing") if isinstance(result.get("timing"), dict) else {}
    log_event(
        "graded",
        held.submission_id,
        attempt=held.attempt,
        score=result.get("score"),
        max_score=result.get("max_score"),
        reference_ms=timing.get("reference_ms"),
        run_ms=timing.get("run_ms"),
        compare_ms=timing.get("compare_ms"),
        grading_ms=timing.get("total_ms"),
        total_ms=_ms(now, submitted_at),
    )
    return True


def fail(
    session: Session, held: Claim, reason: str, now: Optional[dt.datetime] = None, kind: str = "unspecified"
) -> bool:
    """Grading cannot happen (a broken spec, repeated worker deaths): status error, with the
    reason for staff. Only while the lease is ours. Commits. `kind` is the reason's class for
    the log line (the reason itself may quote a spec or a submission, so it is not logged)."""
    now = now or utcnow()
    done = session.execute(
        update(Submission)
        .where(Submission.id == held.submission_id, Submission.lease_token == held.token)
        .values(status="error", error=reason[:4000], lease_token=None, lease_expires_at=None, graded_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    ok = done.rowcount == 1 or _written(session, held, "error", Submission.graded_at, now)  # type: ignore[attr-defined]
    if ok:
        log_event("error", held.submission_id, logging.WARNING, attempt=held.attempt, reason=kind)
    else:
        log_event("lease_lost", held.submission_id, logging.WARNING, attempt=held.attempt, outcome="error")
    return ok


def release(
    session: Session,
    held: Claim,
    now: Optional[dt.datetime] = None,
    count_attempt: bool = False,
    note: Optional[str] = None,
    kind: str = "unspecified",
) -> bool:
    """Give the row back to the queue (this worker cannot grade now, e.g. its sandbox broke);
    the attempt is not counted against the submission unless `count_attempt` (a time limit
    or a sandbox failure that the submission itself may cause: counted, so MAX_ATTEMPTS
    ends the loop). `note` is kept in `error` for staff as the last problem seen; `kind` is
    its class for the log line (`submission.failed` when counted, else `.released`). Commits."""
    now = now or utcnow()
    extra: dict[str, Any] = {} if note is None else {"error": note[:4000]}
    done = session.execute(
        update(Submission)
        .where(Submission.id == held.submission_id, Submission.lease_token == held.token)
        .values(
            status="queued",
            lease_token=None,
            lease_expires_at=None,
            attempts=Submission.attempts if count_attempt else Submission.attempts - 1,
            enqueued_at=now,
            **extra,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    ok = done.rowcount == 1 or _written(session, held, "queued", Submission.enqueued_at, now)  # type: ignore[attr-defined]
    if ok:
        level = logging.WARNING if count_attempt else logging.INFO
        log_event("failed" if count_attempt else "released", held.submission_id, level, attempt=held.attempt, reason=kind)
    else:
        log_event("lease_lost", held.submission_id, logging.WARNING, attempt=held.attempt, outcome="released")
    return ok


def requeue_for_regrade(
    session: Session, ids: Sequence[int], now: Optional[dt.datetime] = None, by: Optional[int] = None
) -> list[int]:
    """Put submissions back in the queue against their assignment's current spec version.
    A grading in flight loses its lease and its result is discarded. The caller commits and
    then enqueues the returned ids. `by` is the id of the user who asked (for the log)."""
    now = now or utcnow()
    if not ids:
        return []
    rows = session.execute(
        select(Submission.id, Assignment.current_version_id)
        .join(Assignment, Assignment.id == Submission.assignment_id)
        .where(Submission.id.in_(list(ids)))
    ).all()
    done = []
    for sid, version_id in rows:
        if version_id is None:
            continue
        session.execute(
            update(Submission)
            .where(Submission.id == sid)
            .values(
                status="queued",
                version_id=version_id,
                lease_token=None,
                lease_expires_at=None,
                attempts=0,
                error=None,
                enqueued_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        log_event("regrade", sid, by_user_id=by, version_id=version_id)
        done.append(sid)
    return done


def stuck(
    session: Session, queued_for: float, now: Optional[dt.datetime] = None, limit: int = 500, by: str = "sweeper"
) -> list[int]:
    """Rows whose message may have been lost: queued for longer than `queued_for` seconds
    since they were last enqueued, or running past their lease. The sweeper re-enqueues them
    and stamps `enqueued_at`, so a slow queue is not flooded with duplicates. Each is logged
    as `submission.requeued` with why, and `by` (who is re-sending it)."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=queued_for)
    rows = list(
        session.execute(
            select(Submission.id, Submission.status, Submission.attempts)
            .where(
                or_(
                    and_(Submission.status == "queued", Submission.enqueued_at < cutoff),
                    and_(Submission.status == "running", Submission.lease_expires_at < now, Submission.enqueued_at < cutoff),
                )
            )
            .order_by(Submission.id)
            .limit(limit)
        ).all()
    )
    ids = [row.id for row in rows]
    for row in rows:
        why = "lease-expired" if row.status == "running" else "queued-too-long"
        log_event("requeued", row.id, logging.WARNING, by=by, why=why, attempt=row.attempts)
    if ids:
        session.execute(
            update(Submission)
            .where(Submission.id.in_(ids))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
    return ids
