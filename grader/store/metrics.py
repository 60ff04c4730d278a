"""What an operator on call needs to know about grading, from the database: queue depth,
waiting time, submit-to-graded latency, throughput, failures and live workers.

Every query is bounded and served by an index (status, graded_at), so /metrics stays cheap
with a million rows: only queued and running rows and the last hour's gradings are read."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from grader.store.db import utcnow
from grader.store.models import Assignment, Course, Submission

# Latency windows, in minutes (the JSON keys are "5m" and "60m").
WINDOWS = (5, 60)
# At most this many recent gradings are read for percentiles; at a deadline one hour may
# hold more, and the newest are the ones that matter (`truncated` says so).
LATENCY_SAMPLE = 20_000
# A worker counts as seen when it claimed a row within this many minutes.
WORKER_WINDOW_MINUTES = 10


@dataclass(frozen=True)
class QueueDepth:
    course: str
    assignment: str
    assignment_id: int
    queued: int
    running: int


@dataclass(frozen=True)
class Latency:
    """Submit-to-graded seconds of first gradings (regrades would count the weeks between a
    submission and its regrade) graded within the window."""

    window_minutes: int
    count: int
    p50: Optional[float]
    p95: Optional[float]
    p99: Optional[float]
    graded_per_minute: float
    truncated: bool


@dataclass(frozen=True)
class Snapshot:
    at: dt.datetime
    queue: list[QueueDepth]
    queued_total: int
    running_total: int
    oldest_queued_age_seconds: Optional[float]
    latency: list[Latency]
    errors_last_hour: int
    retried_last_hour: int
    workers_seen: list[str] = field(default_factory=list)
    broker_queue_length: Optional[int] = None

    def as_json(self) -> dict[str, Any]:
        """The /metrics.json body. Its keys are a contract (benchmarks read them): add keys,
        never rename or remove one."""
        return {
            "at": self.at.isoformat(),
            "queue": {
                "queued": self.queued_total,
                "running": self.running_total,
                "oldest_queued_age_seconds": _round(self.oldest_queued_age_seconds),
                "broker_length": self.broker_queue_length,
                "by_assignment": [asdict(q) for q in self.queue],
            },
            "latency_seconds": {
                f"{lat.window_minutes}m": {
                    "count": lat.count,
                    "p50": _round(lat.p50),
                    "p95": _round(lat.p95),
                    "p99": _round(lat.p99),
                    "truncated": lat.truncated,
                }
                for lat in self.latency
            },
            "graded_per_minute": {f"{lat.window_minutes}m": round(lat.graded_per_minute, 3) for lat in self.latency},
            "last_hour": {"errors": self.errors_last_hour, "retried": self.retried_last_hour},
            "workers": {"window_minutes": WORKER_WINDOW_MINUTES, "seen": len(self.workers_seen), "ids": self.workers_seen},
        }


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def percentile(sorted_values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (NumPy's
    default), of values sorted ascending; None for no values."""
    if not sorted_values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q}: give a number from 0 to 100")
    rank = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def queue_depth(session: Session) -> list[QueueDepth]:
    rows = session.execute(
        select(Course.code, Assignment.slug, Submission.assignment_id, Submission.status, func.count())
        .join(Assignment, Assignment.id == Submission.assignment_id)
        .join(Course, Course.id == Assignment.course_id)
        .where(Submission.status.in_(("queued", "running")))
        .group_by(Course.code, Assignment.slug, Submission.assignment_id, Submission.status)
    ).all()
    by: dict[int, dict[str, Any]] = {}
    for code, slug, assignment_id, status, count in rows:
        entry = by.setdefault(assignment_id, {"course": code, "assignment": slug, "queued": 0, "running": 0})
        entry[status] = int(count)
    return [
        QueueDepth(e["course"], e["assignment"], aid, e["queued"], e["running"])
        for aid, e in sorted(by.items(), key=lambda item: (item[1]["course"], item[1]["assignment"]))
    ]


def oldest_queued(session: Session, now: dt.datetime) -> Optional[float]:
    """Seconds the longest-waiting first grading has been queued since it was submitted."""
    oldest = session.scalar(
        select(func.min(Submission.submitted_at)).where(Submission.status == "queued", Submission.grade_count == 0)
    )
    if oldest is None:
        return None
    return max(0.0, (now - oldest).total_seconds())


def latency(session: Session, now: dt.datetime, windows: Sequence[int] = WINDOWS, sample: int = LATENCY_SAMPLE) -> list[Latency]:
    longest = max(windows)
    rows = session.execute(
        select(Submission.submitted_at, Submission.graded_at)
        .where(
            Submission.status == "graded",
            Submission.grade_count == 1,
            Submission.graded_at >= now - dt.timedelta(minutes=longest),
            Submission.graded_at <= now,
        )
        .order_by(Submission.graded_at.desc())
        .limit(sample + 1)
    ).all()
    truncated = len(rows) > sample
    rows = rows[:sample]
    oldest_read = rows[-1].graded_at if rows else None
    found = []
    for minutes in windows:
        since = now - dt.timedelta(minutes=minutes)
        seconds = sorted(
            max(0.0, (graded - submitted).total_seconds()) for submitted, graded in rows if graded >= since
        )
        cut = truncated and oldest_read is not None and oldest_read > since
        found.append(
            Latency(
                window_minutes=minutes,
                count=len(seconds),
                p50=percentile(seconds, 50),
                p95=percentile(seconds, 95),
                p99=percentile(seconds, 99),
                graded_per_minute=len(seconds) / minutes,
                truncated=cut,
            )
        )
    return found


def failures(session: Session, now: dt.datetime) -> tuple[int, int]:
    """(rows that ended in `error` within the hour, rows that needed more than one attempt
    and were graded, or are still waiting, within the hour)."""
    hour_ago = now - dt.timedelta(hours=1)
    errors = session.scalar(
        select(func.count()).select_from(Submission).where(Submission.status == "error", Submission.graded_at >= hour_ago)
    )
    retried = session.scalar(
        select(func.count())
        .select_from(Submission)
        .where(
            Submission.attempts > 1,
            or_(
                Submission.graded_at >= hour_ago,
                and_(Submission.status.in_(("queued", "running")), Submission.started_at >= hour_ago),
            ),
        )
    )
    return int(errors or 0), int(retried or 0)


def workers_seen(session: Session, now: dt.datetime, minutes: int = WORKER_WINDOW_MINUTES) -> list[str]:
    """Worker processes that claimed a row within `minutes`: running rows, and rows finished
    since (both found by index; a worker idle for longer is not counted)."""
    since = now - dt.timedelta(minutes=minutes)
    rows = session.scalars(
        select(Submission.claimed_by)
        .where(
            Submission.claimed_by.is_not(None),
            or_(Submission.status == "running", Submission.graded_at >= since),
            Submission.started_at >= since,
        )
        .distinct()
        .limit(1000)
    ).all()
    return sorted(str(r) for r in rows)


def snapshot(session: Session, now: Optional[dt.datetime] = None, broker_queue_length: Optional[int] = None) -> Snapshot:
    now = now or utcnow()
    depth = queue_depth(session)
    errors, retried = failures(session, now)
    return Snapshot(
        at=now,
        queue=depth,
        queued_total=sum(q.queued for q in depth),
        running_total=sum(q.running for q in depth),
        oldest_queued_age_seconds=oldest_queued(session, now),
        latency=latency(session, now),
        errors_last_hour=errors,
        retried_last_hour=retried,
        workers_seen=workers_seen(session, now),
        broker_queue_length=broker_queue_length,
    )
