"""Gradebook rows, sorting, filtering, statistics and CSV export, from plain values.

No Flask and no SQL: `grader.store.gradebook` loads the facts, the TA pages render what is
computed here, and the CSV export writes the same numbers, so the page, the export and the
student's own view (through `grader.policy`) never disagree about a score."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

from grader.policy import LatePolicy, Scored, counting, effective_due, score_of

# A student's latest submission is in one of these; "pending" covers queued and running.
PENDING = ("queued", "running")


@dataclass(frozen=True)
class StudentInfo:
    id: int
    email: str
    name: str = ""

    @property
    def display_name(self) -> str:
        return self.name or self.email

    @property
    def sort_name(self) -> tuple[str, str]:
        return (self.display_name.casefold(), self.email)


@dataclass(frozen=True)
class AssignmentInfo:
    id: int
    slug: str
    title: str
    published: bool
    max_score: Optional[float]  # of the current spec version; None when there is none
    due_at: Optional[dt.datetime]
    penalty_per_day: float = 0.0
    cutoff_days: int = 0

    def policy(self, extension: Optional[dt.datetime] = None) -> LatePolicy:
        """The same policy `grader.store.submissions.policy_for` builds, without a query per
        student: an extension replaces the due date."""
        return LatePolicy(
            due_at=effective_due(self.due_at, extension),
            penalty_per_day=self.penalty_per_day,
            cutoff_days=self.cutoff_days,
        )


@dataclass(frozen=True)
class SubmissionInfo:
    id: int
    assignment_id: int
    user_id: int
    submitted_at: dt.datetime
    status: str
    score: Optional[float]
    max_score: Optional[float]


# Extensions: (assignment id, user id) -> that student's own due date.
Extensions = Mapping[tuple[int, int], dt.datetime]


@dataclass(frozen=True)
class Cell:
    """One student on one assignment."""

    assignment: AssignmentInfo
    policy: LatePolicy
    submissions: int = 0
    counted: Optional[Scored] = None  # the latest graded submission, after the late policy
    latest_id: Optional[int] = None
    latest_status: Optional[str] = None
    last_submitted_at: Optional[dt.datetime] = None
    # Days late of the counted submission; of the latest one while nothing is graded yet.
    days_late: Optional[int] = None
    missing: bool = False  # published, past the student's own due date, nothing submitted

    @property
    def raw(self) -> Optional[float]:
        return None if self.counted is None else self.counted.raw

    @property
    def final(self) -> Optional[float]:
        return None if self.counted is None else self.counted.final

    @property
    def late(self) -> bool:
        return bool(self.days_late)

    @property
    def state(self) -> str:
        """What the cell shows when there is no score: why there is none."""
        if self.counted is not None:
            return "graded"
        if self.latest_status in PENDING:
            return "pending"
        if self.latest_status == "error":
            return "error"
        if self.missing:
            return "missing"
        return "none"


@dataclass(frozen=True)
class Row:
    student: StudentInfo
    cells: dict[int, Cell]  # assignment id -> cell
    total: float
    total_max: float

    def cell(self, assignment_id: int) -> Cell:
        return self.cells[assignment_id]

    @property
    def missing(self) -> bool:
        return any(c.missing for c in self.cells.values())

    @property
    def late(self) -> bool:
        return any(c.late for c in self.cells.values())


def build_cell(
    assignment: AssignmentInfo,
    policy: LatePolicy,
    submissions: Sequence[SubmissionInfo],
    now: dt.datetime,
) -> Cell:
    """One student's submissions to one assignment -> the cell. The counted submission is the
    latest graded one (`policy.counting`), scored with the student's own late policy."""
    graded = {s.id: s for s in submissions if s.status == "graded" and s.score is not None}
    counted_id = counting([(s.id, s.submitted_at) for s in graded.values()])
    counted: Optional[Scored] = None
    if counted_id is not None:
        s = graded[counted_id]
        max_score = s.max_score if s.max_score is not None else (assignment.max_score or 0.0)
        counted = score_of(s.id, float(s.score or 0.0), max_score, s.submitted_at, policy)
    latest = max(submissions, key=lambda s: (s.submitted_at, s.id), default=None)
    if counted is not None:
        days_late: Optional[int] = counted.days_late
    elif latest is not None:
        days_late = policy.days_late(latest.submitted_at)
    else:
        days_late = None
    missing = (
        latest is None
        and assignment.published
        and policy.due_at is not None
        and now > policy.due_at
    )
    return Cell(
        assignment=assignment,
        policy=policy,
        submissions=len(submissions),
        counted=counted,
        latest_id=latest.id if latest else None,
        latest_status=latest.status if latest else None,
        last_submitted_at=latest.submitted_at if latest else None,
        days_late=days_late,
        missing=missing,
    )


def build_rows(
    students: Iterable[StudentInfo],
    assignments: Sequence[AssignmentInfo],
    submissions: Iterable[SubmissionInfo],
    extensions: Extensions,
    now: dt.datetime,
) -> list[Row]:
    """Every student x every assignment, sorted by name. Submissions of users who are not
    in `students` (staff trying an assignment out) are ignored. A total counts a missing
    score as 0 out of the assignment's points."""
    by_key: dict[tuple[int, int], list[SubmissionInfo]] = {}
    for s in submissions:
        by_key.setdefault((s.user_id, s.assignment_id), []).append(s)
    rows = []
    for student in students:
        cells = {}
        for a in assignments:
            policy = a.policy(extensions.get((a.id, student.id)))
            cells[a.id] = build_cell(a, policy, by_key.get((student.id, a.id), []), now)
        total = round(sum(c.final or 0.0 for c in cells.values()), 6)
        total_max = round(sum(a.max_score or 0.0 for a in assignments), 6)
        rows.append(Row(student, cells, total, total_max))
    rows.sort(key=lambda r: r.student.sort_name)
    return rows


@dataclass(frozen=True)
class HistoryEntry:
    """One submission on a student's page, with what it is worth and whether it counts."""

    submission: SubmissionInfo
    assignment: AssignmentInfo
    days_late: int
    scored: Optional[Scored]  # graded submissions only
    counts: bool

    @property
    def final(self) -> Optional[float]:
        return None if self.scored is None else self.scored.final


def history(
    student_id: int,
    assignments: Sequence[AssignmentInfo],
    submissions: Iterable[SubmissionInfo],
    extensions: Extensions,
) -> list[HistoryEntry]:
    """A student's submissions to `assignments`, newest first, each scored with that
    student's own late policy; `counts` marks the one per assignment that counts."""
    by_id = {a.id: a for a in assignments}
    mine = [s for s in submissions if s.user_id == student_id and s.assignment_id in by_id]
    counted_ids = set()
    for a in assignments:
        graded = [(s.id, s.submitted_at) for s in mine if s.assignment_id == a.id and s.status == "graded" and s.score is not None]
        cid = counting(graded)
        if cid is not None:
            counted_ids.add(cid)
    out = []
    for s in sorted(mine, key=lambda s: (s.submitted_at, s.id), reverse=True):
        a = by_id[s.assignment_id]
        policy = a.policy(extensions.get((a.id, student_id)))
        scored = None
        if s.status == "graded" and s.score is not None:
            max_score = s.max_score if s.max_score is not None else (a.max_score or 0.0)
            scored = score_of(s.id, float(s.score), max_score, s.submitted_at, policy)
        out.append(HistoryEntry(s, a, policy.days_late(s.submitted_at), scored, s.id in counted_ids))
    return out


# ---------------------------------------------------------------------------------------
# Viewing: which rows, in which order. The parameters come from the query string, so the
# page works without JavaScript and a view can be bookmarked or shared with a colleague.

MAX_QUERY = 200
STATUS_FILTERS = ("queued", "running", "graded", "error", "none")


@dataclass(frozen=True)
class View:
    q: str = ""
    missing: bool = False
    late: bool = False
    status: str = ""  # assignment gradebook only: the latest submission's status ("none": no submission)
    sort: str = "name"
    desc: bool = False
    problems: tuple[str, ...] = ()  # parameters that were ignored, said on the page

    def args(self, **changes: object) -> dict[str, str]:
        """Query-string arguments for this view with `changes` applied; defaults left out."""
        values: dict[str, object] = {
            "q": self.q,
            "missing": self.missing,
            "late": self.late,
            "status": self.status,
            "sort": self.sort,
            "desc": self.desc,
        }
        values.update(changes)
        out = {}
        for key in ("q", "status"):
            if values[key]:
                out[key] = str(values[key])
        for key in ("missing", "late"):
            if values[key]:
                out[key] = "1"
        if values["sort"] and values["sort"] != "name":
            out["sort"] = str(values["sort"])
        if values["desc"]:
            out["dir"] = "desc"
        return out

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.missing or self.late or self.status)


def _flag(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "on", "true", "yes")


def parse_view(args: Mapping[str, str], sorts: Iterable[str], statuses: bool = False) -> View:
    """Read the view from query-string arguments. Unknown values are ignored with a note for
    the page, never an error: a stale bookmark should still open the gradebook."""
    problems = []
    q = (args.get("q") or "").strip()
    if len(q) > MAX_QUERY:
        q = q[:MAX_QUERY]
        problems.append(f"the search text was cut to {MAX_QUERY} characters")
    sort = (args.get("sort") or "name").strip()
    if sort not in set(sorts):
        problems.append(f"there is no column {sort[:60]!r} to sort by; sorted by name")
        sort = "name"
    direction = (args.get("dir") or "asc").strip().lower()
    if direction not in ("asc", "desc"):
        problems.append(f"unknown sort direction {direction[:10]!r}; sorted ascending")
    desc = direction == "desc"
    status = ""
    if statuses:
        status = (args.get("status") or "").strip().lower()
        if status and status not in STATUS_FILTERS:
            problems.append(f"unknown status {status[:30]!r} ignored (one of {', '.join(STATUS_FILTERS)})")
            status = ""
    return View(
        q=q,
        missing=_flag(args.get("missing")),
        late=_flag(args.get("late")),
        status=status,
        sort=sort,
        desc=desc,
        problems=tuple(problems),
    )


def _matches_text(student: StudentInfo, q: str) -> bool:
    needle = q.casefold()
    return needle in student.name.casefold() or needle in student.email.casefold()


def filter_rows(rows: Iterable[Row], view: View, assignment_id: Optional[int] = None) -> list[Row]:
    """Rows matching the view. With `assignment_id` (the assignment gradebook), "missing",
    "late" and the status filter look at that assignment only; otherwise at any assignment."""
    out = []
    for row in rows:
        if view.q and not _matches_text(row.student, view.q):
            continue
        if assignment_id is not None:
            cell = row.cell(assignment_id)
            if view.missing and not cell.missing:
                continue
            if view.late and not cell.late:
                continue
            if view.status and (cell.latest_status or "none") != view.status:
                continue
        else:
            if view.missing and not row.missing:
                continue
            if view.late and not row.late:
                continue
        out.append(row)
    return out


SortKey = Callable[[Row], object]


def course_sorts(assignments: Sequence[AssignmentInfo]) -> dict[str, SortKey]:
    """Sortable columns of the course gradebook: name, email, total and each assignment
    (as "a:<slug>", by final score)."""
    sorts: dict[str, SortKey] = {
        "name": lambda r: r.student.sort_name,
        "email": lambda r: r.student.email,
        "total": lambda r: r.total,
    }
    for a in assignments:
        sorts[f"a:{a.slug}"] = (lambda aid: lambda r: r.cell(aid).final)(a.id)
    return sorts


def assignment_sorts(assignment_id: int) -> dict[str, SortKey]:
    """Sortable columns of an assignment gradebook."""

    def cell(r: Row) -> Cell:
        return r.cell(assignment_id)

    return {
        "name": lambda r: r.student.sort_name,
        "email": lambda r: r.student.email,
        "raw": lambda r: cell(r).raw,
        "late": lambda r: cell(r).days_late,
        "final": lambda r: cell(r).final,
        "submissions": lambda r: cell(r).submissions,
        "last": lambda r: cell(r).last_submitted_at,
        "status": lambda r: cell(r).latest_status,
    }


def sort_rows(rows: Sequence[Row], key: SortKey, desc: bool = False) -> list[Row]:
    """Sorted by `key`, ties by name; rows without a value (no score, no submission) go last
    in either direction, where a TA expects "nothing here yet" rather than among the zeros."""
    by_name = sorted(rows, key=lambda r: r.student.sort_name)
    present = [r for r in by_name if key(r) is not None]
    absent = [r for r in by_name if key(r) is None]
    present.sort(key=key, reverse=desc)  # type: ignore[arg-type]  # stable: ties keep name order
    return present + absent


# ---------------------------------------------------------------------------------------
# Statistics for the charts.


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    last: bool = False  # the last bin includes its upper edge (full marks)

    @property
    def label(self) -> str:
        close = "]" if self.last else ")"
        return f"[{_num(self.low)}, {_num(self.high)}{close}"


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def histogram(values: Sequence[float], max_score: Optional[float], bins: int = 10) -> list[Bin]:
    """Equal-width bins over [0, max_score]; the last one includes full marks. A score above
    the maximum (graded against an older, larger version) counts in the last bin."""
    top = max_score if max_score and max_score > 0 else max([*values, 1.0])
    width = top / bins
    counts = [0] * bins
    for v in values:
        i = 0 if v <= 0 else min(bins - 1, int(math.floor(v / width + 1e-9)))
        counts[i] += 1
    return [
        Bin(round(i * width, 6), round((i + 1) * width, 6), counts[i], last=(i == bins - 1)) for i in range(bins)
    ]


@dataclass(frozen=True)
class Summary:
    scored: int
    mean: Optional[float]
    median: Optional[float]
    minimum: Optional[float]
    maximum: Optional[float]


def summary(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0, None, None, None, None)
    return Summary(
        len(values),
        round(statistics.fmean(values), 6),
        round(statistics.median(values), 6),
        min(values),
        max(values),
    )


@dataclass(frozen=True)
class PassRate:
    function: str
    passed: int = 0
    partial: int = 0
    failed: int = 0
    not_run: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.partial + self.failed + self.not_run

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def parts_of(result: Optional[Mapping[str, object]]) -> list[tuple[str, str]]:
    """(function, status) of each part of a stored result; tolerant of odd or old results."""
    if not isinstance(result, Mapping):
        return []
    parts = result.get("parts")
    if not isinstance(parts, list):
        return []
    out = []
    for p in parts:
        if isinstance(p, Mapping) and isinstance(p.get("function"), str):
            out.append((str(p["function"]), str(p.get("status") or "")))
    return out


def pass_rates(results: Iterable[Sequence[tuple[str, str]]], functions: Sequence[str] = ()) -> list[PassRate]:
    """Per function, how many of the given (counted) submissions passed it completely,
    partly, not at all, or never ran it. `functions` fixes the order (the spec's); functions
    only seen in results (an older version) follow."""
    tallies: dict[str, dict[str, int]] = {name: {} for name in functions}
    for parts in results:
        for name, status in parts:
            kind = status if status in ("passed", "partial", "not_run") else "failed"
            tally = tallies.setdefault(name, {})
            tally[kind] = tally.get(kind, 0) + 1
    return [
        PassRate(name, t.get("passed", 0), t.get("partial", 0), t.get("failed", 0), t.get("not_run", 0))
        for name, t in tallies.items()
    ]


# A recognised mistake in one output of one function: (function, output, mistake name).
Made = tuple[str, str, str]


def mistakes_of(result: Optional[Mapping[str, object]]) -> list[Made]:
    """The recognised mistakes of a stored result, per part and output (`outputs[].mistakes`);
    tolerant of odd or old results, which simply have none."""
    if not isinstance(result, Mapping) or not isinstance(result.get("parts"), list):
        return []
    out: list[Made] = []
    for part in result["parts"]:  # type: ignore[union-attr]
        if not isinstance(part, Mapping) or not isinstance(part.get("function"), str):
            continue
        outputs = part.get("outputs")
        for o in outputs if isinstance(outputs, list) else []:
            if not isinstance(o, Mapping) or not isinstance(o.get("mistakes"), list):
                continue
            name = str(o.get("name") or "")
            out.extend((str(part["function"]), name, m) for m in o["mistakes"] if isinstance(m, str) and m)
    return out


@dataclass(frozen=True)
class MistakeCount:
    """How many students made one recognised mistake: still in the submission that counts,
    and on any graded submission (a student who fixed it is in `ever` only)."""

    function: str
    output: str
    mistake: str
    counted: tuple[StudentInfo, ...]  # by name
    ever: tuple[StudentInfo, ...]  # by name; includes every student in `counted`

    @property
    def fixed(self) -> tuple[StudentInfo, ...]:
        """Made it on an earlier submission, not in the one that counts."""
        now = {s.id for s in self.counted}
        return tuple(s for s in self.ever if s.id not in now)

    @property
    def label(self) -> str:
        where = f"{self.function} · {self.output}" if self.output else self.function
        return f"{where}: {self.mistake}"


def mistake_counts(
    students: Iterable[StudentInfo],
    counted: Mapping[int, Iterable[Made]],
    submitted: Iterable[tuple[int, Iterable[Made]]],
    functions: Sequence[str] = (),
) -> list[MistakeCount]:
    """Per recognised mistake, the distinct `students` whose counted submission made it
    (`counted`: student id -> its mistakes) and who made it on any graded submission
    (`submitted`: one (student id, mistakes) per submission). Anyone not in `students`
    (staff trying the assignment) is left out. Ordered by function as in the spec (`functions`;
    others after), then most students first, so the top of each function is what the next
    lecture should address."""
    by_id = {s.id: s for s in students}
    now: dict[Made, set[int]] = {}
    ever: dict[Made, set[int]] = {}
    for sid, made in counted.items():
        if sid in by_id:
            for key in set(made):
                now.setdefault(key, set()).add(sid)
                ever.setdefault(key, set()).add(sid)  # the counted submission is one of theirs
    for sid, made in submitted:
        if sid in by_id:
            for key in set(made):
                ever.setdefault(key, set()).add(sid)
    order = {name: i for i, name in enumerate(functions)}

    def people(ids: set[int]) -> tuple[StudentInfo, ...]:
        return tuple(sorted((by_id[i] for i in ids), key=lambda s: s.sort_name))

    out = [MistakeCount(f, o, m, people(now.get((f, o, m), set())), people(ids)) for (f, o, m), ids in ever.items()]
    out.sort(key=lambda c: (order.get(c.function, len(order)), c.function, -len(c.counted), -len(c.ever), c.output, c.mistake))
    return out


# ---------------------------------------------------------------------------------------
# CSV export in a shape LMS gradebook imports accept: one row per student, identified by
# email (Canvas' "SIS Login ID", Moodle's and Blackboard's email/username match), then one
# column per assignment named "<Title> (<points>)". A student without a score gets an empty
# cell, not 0, so the LMS applies its own missing-work policy instead of a zero.

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse(text: str) -> str:
    """A spreadsheet runs a cell that starts with = + - @ (or a tab/CR before one) as a
    formula; a leading apostrophe makes it text. Student names and titles are user input."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_number(value: Optional[float]) -> str:
    if value is None:
        return ""
    return _num(value)


def column_title(assignment: AssignmentInfo) -> str:
    if assignment.max_score is None:
        return assignment.title
    return f"{assignment.title} ({_num(assignment.max_score)})"


def _write(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    buf = io.StringIO()
    # QUOTE_MINIMAL with \r\n line ends: what RFC 4180 and the LMS importers expect.
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow([defuse(h) for h in header])
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def _identity(student: StudentInfo) -> list[str]:
    return [defuse(student.name), defuse(student.email), defuse(student.email)]


IDENTITY_COLUMNS = ("Name", "Email", "SIS Login ID")


def course_csv(rows: Sequence[Row], assignments: Sequence[AssignmentInfo]) -> str:
    """The course gradebook: final scores (after late penalties) per assignment. No total
    column: an LMS import would take it for one more assignment."""
    header = [*IDENTITY_COLUMNS, *(column_title(a) for a in assignments)]
    body = ([*_identity(r.student), *(csv_number(r.cell(a.id).final) for a in assignments)] for r in rows)
    return _write(header, body)


def assignment_csv(rows: Sequence[Row], assignment: AssignmentInfo) -> str:
    """One assignment in detail. The final score column carries the LMS-style title, so the
    file imports as that assignment; the other columns are for reading (importers let you
    ignore them)."""
    header = [
        *IDENTITY_COLUMNS,
        column_title(assignment),
        "Raw score",
        "Days late",
        "Submissions",
        "Last submitted (UTC)",
        "Latest status",
    ]
    body = []
    for r in rows:
        c = r.cell(assignment.id)
        body.append(
            [
                *_identity(r.student),
                csv_number(c.final),
                csv_number(c.raw),
                "" if c.days_late is None else str(c.days_late),
                str(c.submissions),
                "" if c.last_submitted_at is None else c.last_submitted_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                c.latest_status or "",
            ]
        )
    return _write(header, body)


@dataclass
class StatusCounts:
    """Submissions of an assignment by status (every submission, not one per student)."""

    counts: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
