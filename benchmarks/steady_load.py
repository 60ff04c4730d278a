"""Steady load against the real service: a fixed offered rate of submissions through the
JSON API, with the queue depth over time.

    ./dev bench-steady [--rate 25] [--duration 60] [--workers 2] [--clients 16]

Starts the same stack as `./dev bench-burst` (benchmarks/stack.py: fresh PostgreSQL
database, own Redis queue, gunicorn, one `grader worker`; the per-user submit rate limit
raised for the run), then sends --rate submissions per second for --duration seconds, open
loop: the i-th is due at start + i/rate whatever happened to the earlier ones (a client
thread that is still busy delays it; the report says by how much). The mix is that of the
burst (--mix). Every 0.5 s it samples the database: rows queued, running and final.

Prints the machine, submit-to-graded latency p50/p95/p99 (client send time to the row's
graded_at), accepted and graded rates, lost and double-scored counts, the deepest queue,
and writes the samples as CSV and a line chart (SVG) to benchmarks/results/ (or --out-dir):
steady-<UTC time>.csv / .svg.
"""

from __future__ import annotations

import argparse
import csv
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import DEFAULT_MIX, stop_cleanly_on_sigterm, RESULTS, machine, parse_mix, percentile, plan  # noqa: E402
from benchmarks.load import FINAL, Figures, Sent, Submitter, counts_by_status, measure, report_lines, wait_final  # noqa: E402
from benchmarks.stack import BENCH_SUBMIT_RATE, Stack, StackError, Ticket  # noqa: E402

SAMPLE_SECONDS = 0.5


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the first submission was due
    queued: int
    running: int
    final: int
    sent: int  # submissions the clients had sent by then

    @property
    def depth(self) -> int:
        return self.queued + self.running


class Sampler(threading.Thread):
    """Samples the rows by status every `every` seconds until stopped."""

    def __init__(self, stack: Stack, t0: float, sent: list[Sent], every: float = SAMPLE_SECONDS) -> None:
        super().__init__(name="sampler", daemon=True)
        self.stack, self.t0, self.sent, self.every = stack, t0, sent, every
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        due = max(time.time(), self.t0)
        self._stop_event.wait(max(0.0, due - time.time()))
        while not self._stop_event.is_set():
            self.take()
            due += self.every
            self._stop_event.wait(max(0.0, due - time.time()))

    def take(self) -> Sample:
        counts = counts_by_status(self.stack)
        sample = Sample(
            t=round(time.time() - self.t0, 3),
            queued=counts["queued"],
            running=counts["running"],
            final=sum(counts[s] for s in FINAL),
            sent=sum(1 for s in self.sent if s.ticket.sent),
        )
        self.samples.append(sample)
        return sample

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def run_steady(
    rate: float = 25.0,
    duration: float = 60.0,
    workers: int = 2,
    clients: int = 16,
    students: int = 200,
    mix: Optional[dict[str, float]] = None,
    web: str = "gunicorn",
    seed: int = 1,
    stall_timeout: float = 120.0,
    out: Any = print,
) -> tuple[Figures, list[Sample]]:
    n = max(1, round(rate * duration))
    items = plan(n, mix or DEFAULT_MIX, seed=seed)
    with Stack(students=min(students, n), workers=workers, web=web) as stack:
        out(f"stack up: {stack.url}, database {stack.db_name}, queue {stack.queue}, {workers} worker process(es)")
        t0 = time.time() + 0.5
        sent = [Sent(item, Ticket(i, 0.0), scheduled=t0 + i / rate) for i, item in enumerate(items)]
        sampler = Sampler(stack, t0, sent)
        submitter = Submitter(stack, clients)
        sampler.start()
        try:
            futures = []
            for s in sent:
                wait = s.scheduled - time.time()
                if wait > 0:
                    time.sleep(wait)
                futures.append(submitter.submit(s))
            for future in futures:
                future.result()
            accepted = sum(1 for s in sent if s.ticket.id is not None)
            if not wait_final(stack, accepted, stall_timeout):
                out(f"no submission became final for {stall_timeout:g} s: stopped waiting")
            sampler.take()
        finally:
            submitter.close()
            sampler.stop()
        figures = measure(stack, sent)
    lag = [s.ticket.sent - s.scheduled for s in sent if s.ticket.sent]
    figures.data.update(
        rate=rate, duration=duration, workers=workers, clients=clients, students=min(students, n), web=web,
        submit_rate=BENCH_SUBMIT_RATE,
        send_lag_s={"p50": round(percentile(lag, 50), 4), "p95": round(percentile(lag, 95), 4), "max": round(max(lag, default=0), 4)},
        max_depth=max((x.depth for x in sampler.samples), default=0),
    )
    return figures, sampler.samples


def write_csv(path: Path, samples: Sequence[Sample]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["t_seconds", "queued", "running", "queued_plus_running", "final", "sent"])
        for s in samples:
            writer.writerow([f"{s.t:.3f}", s.queued, s.running, s.depth, s.final, s.sent])


def _nice_step(top: float) -> float:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if top / step <= 6:
            return float(step)
    return float(10 ** len(str(int(top))))


def chart_svg(samples: Sequence[Sample], title: str, load_ends: float) -> str:
    """A line chart of queued+running and running rows over time; a dashed line where the
    offered load stops. Plain SVG, no script, readable on its own."""
    width, height = 760, 320
    left, right, top, bottom = 52, 150, 34, 44
    pw, ph = width - left - right, height - top - bottom
    t_max = max([s.t for s in samples] + [load_ends, 1.0])
    d_max = max([s.depth for s in samples] + [1])
    x_step, y_step = _nice_step(t_max), _nice_step(d_max)
    x_top = x_step * -(-t_max // x_step)
    y_top = y_step * -(-d_max // y_step)

    def x(t: float) -> float:
        return left + pw * t / x_top

    def y(v: float) -> float:
        return top + ph - ph * v / y_top

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'font-family="system-ui, sans-serif" font-size="12" role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="20" font-size="14" fill="#1d2330">{escape(title)}</text>',
    ]
    v = 0.0
    while v <= y_top + 1e-9:
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#d9dde5"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" fill="#5d6575">{v:g}</text>')
        v += y_step
    t = 0.0
    while t <= x_top + 1e-9:
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#5d6575">{t:g}</text>')
        t += x_step
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle" fill="#1d2330">seconds since the first submission was due</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" text-anchor="middle" fill="#1d2330">rows</text>')
    out.append(f'<line x1="{x(load_ends):.1f}" y1="{top}" x2="{x(load_ends):.1f}" y2="{top + ph}" stroke="#5d6575" stroke-dasharray="4 4"/>')
    out.append(f'<text x="{x(load_ends) + 4:.1f}" y="{top + 12}" fill="#5d6575">load stops</text>')
    for name, colour, values in (
        ("queued + running", "#2456c9", [s.depth for s in samples]),
        ("running", "#c98a00", [s.running for s in samples]),
    ):
        points = " ".join(f"{x(s.t):.1f},{y(val):.1f}" for s, val in zip(samples, values))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"><title>{name}</title></polyline>')
    legend_y = top + 10
    for name, colour in (("queued + running", "#2456c9"), ("running", "#c98a00")):
        out.append(f'<line x1="{left + pw + 14}" y1="{legend_y}" x2="{left + pw + 34}" y2="{legend_y}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 40}" y="{legend_y + 4}" fill="#1d2330">{name}</text>')
        legend_y += 18
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#5d6575"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=25.0, help="submissions offered per second (default 25)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of offered load (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="grading processes (default 2)")
    parser.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--students", type=int, default=200, help="student accounts, one token each (default 200)")
    parser.add_argument("--mix", help="e.g. right=55,wrong=30,crashing=10,hostile=5")
    parser.add_argument("--web", choices=["gunicorn", "waitress"], default="gunicorn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stall-timeout", type=float, default=120.0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the CSV and SVG go (default benchmarks/results)")
    args = parser.parse_args(argv)
    if not args.rate > 0 or not args.duration > 0 or min(args.workers, args.clients, args.students) < 1:
        parser.error("--rate and --duration must be positive; --workers, --clients and --students at least 1")
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))

    stop_cleanly_on_sigterm()
    print(f"machine: {machine()}")
    print(f"steady load: {args.rate:g}/s for {args.duration:g} s, mix {', '.join(f'{k} {v:.0%}' for k, v in mix.items())}, "
          f"{args.clients} clients, {args.workers} worker process(es); per-user submit rate limit raised to {BENCH_SUBMIT_RATE}")
    fig, samples = run_steady(args.rate, args.duration, args.workers, args.clients, args.students, mix, args.web,
                              args.seed, args.stall_timeout)
    d = fig.data
    print("\n".join(report_lines(fig, f"steady load {args.rate:g}/s for {args.duration:g} s")))
    print(f"client send lag behind schedule: p50 {d['send_lag_s']['p50']:.3f} s, p95 {d['send_lag_s']['p95']:.3f} s, "
          f"max {d['send_lag_s']['max']:.3f} s")
    print(f"deepest queue (queued + running rows): {d['max_depth']}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"steady-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    write_csv(stem.with_suffix(".csv"), samples)
    title = (f"Queue depth: {args.rate:g}/s offered for {args.duration:g} s, {args.workers} workers, "
             f"p95 latency {d['latency_s']['p95']:.2f} s")
    stem.with_suffix(".svg").write_text(chart_svg(samples, title, args.duration))
    print(f"samples: {stem.with_suffix('.csv')}\nchart:   {stem.with_suffix('.svg')}")
    return 0 if d["lost"] == 0 and d["double_scored"] == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StackError as exc:
        sys.exit(f"the service stack did not start: {exc}")
