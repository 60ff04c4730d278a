"""Deadlines, late penalties, submission limits and which submission counts.

Pure functions over plain values, shared by the web pages, the API, the gradebook and its
CSV export, so a student, a TA and the export never disagree about a score."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Optional, Sequence

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class LatePolicy:
    due_at: Optional[dt.datetime]  # the student's own due date (an extension replaces it)
    penalty_per_day: float = 0.0  # fraction of the score lost per started day late
    cutoff_days: int = 0  # nothing accepted later than this many days after due; 0: no late work

    @property
    def closes_at(self) -> Optional[dt.datetime]:
        """The last moment a submission is accepted."""
        if self.due_at is None:
            return None
        try:
            return self.due_at + self.cutoff_days * DAY
        except OverflowError:  # a due date at the end of time: never closes
            return dt.datetime.max.replace(tzinfo=dt.timezone.utc)

    def days_late(self, at: dt.datetime) -> int:
        """Started days after the due date: one second late is one day late."""
        if self.due_at is None or at <= self.due_at:
            return 0
        return math.ceil((at - self.due_at) / DAY)

    def multiplier(self, at: dt.datetime) -> float:
        return max(0.0, 1.0 - self.penalty_per_day * self.days_late(at))

    def describe(self) -> str:
        if self.due_at is None:
            return "no due date"
        if self.cutoff_days <= 0:
            return "no late submissions"
        if self.penalty_per_day <= 0:
            return f"late submissions accepted without penalty for {self.cutoff_days} day(s)"
        return (
            f"{_pct(self.penalty_per_day)} off per day late, "
            f"late submissions accepted for {self.cutoff_days} day(s)"
        )


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def effective_due(due_at: Optional[dt.datetime], extension: Optional[dt.datetime]) -> Optional[dt.datetime]:
    """An extension replaces the due date (it may only be later; an earlier one is ignored)."""
    if extension is None:
        return due_at
    if due_at is None:
        return extension
    return max(due_at, extension)


class NotAccepted(Exception):
    """A submission refused before it is stored; the message says why, for the student."""


def check_accepting(
    now: dt.datetime,
    published: bool,
    open_at: Optional[dt.datetime],
    policy: LatePolicy,
    used: int,
    max_submissions: Optional[int],
) -> None:
    if not published:
        raise NotAccepted("this assignment is not open for submissions")
    if open_at is not None and now < open_at:
        raise NotAccepted(f"this assignment opens at {fmt_time(open_at)}")
    closes = policy.closes_at
    if closes is not None and now > closes:
        if policy.cutoff_days <= 0:
            raise NotAccepted(f"the deadline was {fmt_time(policy.due_at)}; late submissions are not accepted")
        raise NotAccepted(f"late submissions closed at {fmt_time(closes)}")
    if max_submissions is not None and used >= max_submissions:
        raise NotAccepted(f"you have used all {max_submissions} submissions for this assignment")


def submissions_left(used: int, max_submissions: Optional[int]) -> Optional[int]:
    return None if max_submissions is None else max(0, max_submissions - used)


@dataclass(frozen=True)
class Scored:
    """What one submission is worth after the late policy."""

    submission_id: int
    raw: float
    max_score: float
    days_late: int
    final: float


def score_of(submission_id: int, raw: float, max_score: float, submitted_at: dt.datetime, policy: LatePolicy) -> Scored:
    return Scored(
        submission_id=submission_id,
        raw=raw,
        max_score=max_score,
        days_late=policy.days_late(submitted_at),
        final=round(raw * policy.multiplier(submitted_at), 6),
    )


def counting(graded: Sequence[tuple[int, dt.datetime]]) -> Optional[int]:
    """The id of the submission that counts: the latest graded one (the student's last word,
    as in most LMSs); ties on time go to the higher id. `graded` holds (id, submitted_at)."""
    if not graded:
        return None
    return max(graded, key=lambda pair: (pair[1], pair[0]))[0]


def fmt_time(t: Optional[dt.datetime]) -> str:
    if t is None:
        return "never"
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
