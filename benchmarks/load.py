"""Driving a running stack (benchmarks/stack.py) with submissions over the JSON API, and
measuring what happened from the client's clock and the database rows.

Submit time is the client's (just before the request); graded time is the row's
`graded_at` (both on this machine's clock). A submission is final when its row is
`graded` or `error`; an accepted id whose row never gets there is lost; a row with
`grade_count` above 1 was scored twice."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from benchmarks.common import Item, percentile
from benchmarks.cpu import report_lines as cpu_report_lines
from benchmarks.stack import Client, Stack, Ticket, iter_rows

FINAL = ("graded", "error")


@dataclass
class Sent:
    """One planned submission and what became of it at the client."""

    item: Item
    ticket: Ticket
    scheduled: float = 0.0  # steady load: when it was due to be sent


class Submitter:
    """A pool of `clients` threads, each with its own keep-alive connection; the i-th
    submission goes out under the token of student i mod M."""

    def __init__(self, stack: Stack, clients: int) -> None:
        self.stack = stack
        self.pool = ThreadPoolExecutor(max_workers=clients, thread_name_prefix="client")
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = Client(self.stack.url)
            with self._lock:
                self._clients.append(client)
        return client

    def _send(self, sent: Sent) -> Sent:
        student = self.stack.students[sent.ticket.index % len(self.stack.students)]
        item = sent.item
        self._client().submit(student.token, item.assignment, f"{item.assignment}.py", item.data, sent.ticket)
        return sent

    def submit(self, sent: Sent) -> Any:
        return self.pool.submit(self._send, sent)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for client in self._clients:
            client.close()


def burst(stack: Stack, items: Sequence[Item], clients: int) -> list[Sent]:
    """Send every item as fast as `clients` threads can; returns when all are answered."""
    submitter = Submitter(stack, clients)
    sent = [Sent(item, Ticket(i, 0.0)) for i, item in enumerate(items)]
    try:
        for future in [submitter.submit(s) for s in sent]:
            future.result()
    finally:
        submitter.close()
    return sent


def counts_by_status(stack: Stack) -> Counter[str]:
    from sqlalchemy import func, select

    from grader.store.models import Submission

    with stack.sessions() as session:
        return Counter(dict(session.execute(select(Submission.status, func.count()).group_by(Submission.status)).all()))


def wait_final(stack: Stack, expected: int, timeout: float, on_sample: Optional[Callable[[Counter[str]], None]] = None) -> bool:
    """Wait until `expected` rows are final (or `timeout` seconds pass without any row
    becoming final); True when all are."""
    last_final, last_progress = -1, time.monotonic()
    while True:
        counts = counts_by_status(stack)
        if on_sample is not None:
            on_sample(counts)
        final = sum(counts[s] for s in FINAL)
        if final >= expected:
            return True
        if final != last_final:
            last_final, last_progress = final, time.monotonic()
        elif time.monotonic() - last_progress > timeout:
            return False
        time.sleep(0.2)


@dataclass
class Figures:
    """The measured outcome of one run, and the numbers for the report."""

    data: dict[str, Any] = field(default_factory=dict)
    latency_by_kind: dict[str, list[float]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def _pcts(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values, q), 4) for q in (50, 95, 99)} | {"max": round(max(values), 4) if values else float("nan")}


def _why(result: Any) -> str:
    """The first thing that went wrong in a result, in a few words (for a right file that
    lost marks: under load, usually a time limit)."""
    if not result:
        return "no result"
    for part in result.get("parts", []):
        for trial in part.get("trials", []):
            if trial.get("status") != "passed":
                said = " ".join(trial.get("messages") or [])[:160]
                return f"{part.get('function')}: {trial.get('status')} {said}".strip()
    return " ".join(result.get("messages") or [])[:160] or "?"


def measure(stack: Stack, sent: Sequence[Sent]) -> Figures:
    """Read every row back and compute the figures (see the module docstring)."""
    from sqlalchemy import select

    from grader.store.models import Submission

    accepted = [s for s in sent if s.ticket.id is not None]
    refused = Counter(s.ticket.status or s.ticket.error.split(":", 1)[0] for s in sent if s.ticket.id is None)
    rows = {row.id: row for row in iter_rows(stack, [s.ticket.id for s in accepted])}  # type: ignore[misc]
    with stack.sessions() as session:
        all_ids = set(session.scalars(select(Submission.id)))
    unknown_rows = sorted(all_ids - {s.ticket.id for s in accepted})

    statuses: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    latency: list[float] = []
    latency_by_kind: dict[str, list[float]] = defaultdict(list)
    accept_ms, wait_ms, grading_ms, overhead_ms = [], [], [], []
    phases: dict[str, list[float]] = defaultdict(list)
    worker_seconds: Counter[str] = Counter()
    lost, double, right_not_full, wrong_full = [], [], [], []
    graded_times: list[float] = []
    for s in accepted:
        row = rows.get(s.ticket.id)  # type: ignore[arg-type]
        kind = s.item.kind
        accept_ms.append((s.ticket.answered - s.ticket.sent) * 1000)
        if row is None or row.status not in FINAL:
            lost.append(s.ticket.id)
            statuses[row.status if row is not None else "missing"] += 1
            continue
        statuses[row.status] += 1
        by_kind[kind][row.status] += 1
        if row.grade_count > 1:
            double.append(row.id)
        if row.status == "graded":
            full = row.score is not None and row.max_score is not None and row.score >= row.max_score - 1e-9
            if kind == "right" and not full:
                right_not_full.append(f"{row.id} ({s.item.assignment}/{s.item.name}: {row.score}/{row.max_score}; {_why(row.result)})")
            if kind != "right" and full:
                wrong_full.append(f"{row.id} ({s.item.assignment}/{s.item.name})")
        graded = row.graded_at.timestamp()
        graded_times.append(graded)
        seconds = graded - s.ticket.sent
        latency.append(seconds)
        latency_by_kind[kind].append(seconds)
        if row.started_at is not None:
            wait_ms.append((row.started_at.timestamp() - row.submitted_at.timestamp()) * 1000)
            in_worker = (graded - row.started_at.timestamp()) * 1000
            worker_seconds[kind] += in_worker / 1000
            timing = (row.result or {}).get("timing") or {}
            if "total_ms" in timing:
                grading_ms.append(timing["total_ms"])
                overhead_ms.append(in_worker - timing["total_ms"])
                for phase in ("reference_ms", "run_ms", "compare_ms"):
                    if phase in timing:
                        phases[phase].append(timing[phase])

    first_sent = min((s.ticket.sent for s in sent), default=0.0)
    last_answered = max((s.ticket.answered for s in sent), default=0.0)
    first_accepted = min((s.ticket.answered for s in accepted), default=0.0)
    last_graded = max(graded_times, default=0.0)
    submit_span = max(last_answered - first_sent, 1e-9)
    grade_span = max(last_graded - first_accepted, 1e-9)

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2) if values else float("nan")

    data: dict[str, Any] = {
        "submitted": len(sent),
        "accepted": len(accepted),
        "refused": dict(refused),
        "final": len(graded_times),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "double_scored": len(double),
        "double_scored_ids": double[:20],
        "rows_not_accepted_by_client": len(unknown_rows),
        "statuses": dict(statuses),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "right_not_full_marks": right_not_full,
        "not_right_but_full_marks": wrong_full,
        "accepted_per_s": round(len(accepted) / submit_span, 2),
        "graded_per_s": round(len(graded_times) / grade_span, 2),
        "submit_seconds": round(submit_span, 3),
        "grade_seconds": round(grade_span, 3),
        "wall_seconds": round(max(last_graded, last_answered) - first_sent, 3),
        "latency_s": _pcts(latency),
        "latency_s_by_kind": {k: _pcts(v) for k, v in sorted(latency_by_kind.items())},
        "profile_median_ms": {
            "http_accept (client, request to 202)": med(accept_ms),
            "queue_wait (row created to claimed)": med(wait_ms),
            "grading (grade_bytes total)": med(grading_ms),
            **{f"  {p.removesuffix('_ms')}": med(v) for p, v in phases.items()},
            "worker_overhead (claim + spec + result write, outside grade_bytes)": med(overhead_ms),
        },
        "worker_seconds_by_kind": {k: round(v, 2) for k, v in sorted(worker_seconds.items())},
        # Of the grading processes' time from the first accepted to the last graded, the
        # share spent between claiming a row and writing its result; the rest is Celery
        # (fetching, dispatching, acknowledging) and waiting for work.
        "worker_busy_fraction": round(sum(worker_seconds.values()) / (grade_span * stack.workers), 3),
    }
    return Figures(data, dict(latency_by_kind))


def report_lines(fig: Figures, title: str) -> list[str]:
    d = fig.data
    lat = d["latency_s"]
    lines = [
        f"== {title}",
        f"submitted {d['submitted']}, accepted {d['accepted']}" + (f", refused {d['refused']}" if d["refused"] else ""),
        f"accepted/s {d['accepted_per_s']:.1f} (all answered in {d['submit_seconds']:.1f} s)",
        f"graded/s   {d['graded_per_s']:.1f} (first accepted to last graded: {d['grade_seconds']:.1f} s)",
        f"submit-to-graded latency: p50 {lat['p50']:.3f} s, p95 {lat['p95']:.3f} s, p99 {lat['p99']:.3f} s, max {lat['max']:.3f} s",
        "  by kind: " + "; ".join(f"{k} p50 {v['p50']:.2f} s p95 {v['p95']:.2f} s" for k, v in d["latency_s_by_kind"].items()),
        f"final status: {d['statuses']}; by kind: {d['by_kind']}",
        f"lost: {d['lost']}" + (f" {d['lost_ids']}" if d["lost"] else "")
        + f"; double-scored: {d['double_scored']}" + (f" {d['double_scored_ids']}" if d["double_scored"] else "")
        + f"; rows the client never saw accepted: {d['rows_not_accepted_by_client']}",
        f"right files short of full marks: {len(d['right_not_full_marks'])}"
        + (f" e.g. {d['right_not_full_marks'][:3]}" if d["right_not_full_marks"] else "")
        + f"; other files with full marks: {len(d['not_right_but_full_marks'])}"
        + (f" e.g. {d['not_right_but_full_marks'][:3]}" if d["not_right_but_full_marks"] else ""),
        f"wall time {d['wall_seconds']:.1f} s",
        "where the time goes (medians per submission, ms):",
        *[f"  {k:<72} {v:>9.2f}" for k, v in d["profile_median_ms"].items()],
        f"worker seconds (claimed to graded) by kind: {d['worker_seconds_by_kind']}",
        f"the grading processes spent {d['worker_busy_fraction']:.0%} of the run between claiming a row and writing "
        "its result (the rest: Celery fetching and acknowledging, and waiting for work)",
    ]
    if "cpu_seconds" in d:
        lines += cpu_report_lines(d["cpu_seconds"], d["final"])
    return lines
