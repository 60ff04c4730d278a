"""Charts as server-rendered SVG: no JavaScript, no chart library, nothing for the CSP to
block (colours are presentation attributes, not style attributes). Each chart is an image
with a <title> and <desc> for screen readers, and every bar carries its own <title> with
the exact numbers; the pages also print the numbers in a table next to the picture."""

from __future__ import annotations

from typing import Sequence

from markupsafe import Markup, escape

from grader.gradebook import Bin, MistakeCount, PassRate

FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"'
BAR = "#2456c9"
PASS = "#1f7a3f"
PARTIAL = "#c98a00"
MISTAKE = "#b3261e"
GRID = "#d9dde5"
INK = "#1d2330"
MUTED = "#5d6575"


def _n(x: float) -> str:
    """A coordinate or a number for a label, without float noise."""
    return f"{x:.2f}".rstrip("0").rstrip(".") or "0"


def _ticks(top: int) -> list[int]:
    """Up to about five integer gridlines from 0 to at least `top`."""
    if top <= 0:
        return [0, 1]
    step = 1
    for candidate in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        step = candidate
        if top / candidate <= 5:
            break
    else:
        step = max(1, -(-top // 5))
    last = -(-top // step) * step
    return list(range(0, last + 1, step))


def _open(chart_id: str, width: int, height: int, title: str, desc: str) -> list[str]:
    cid = escape(chart_id)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-labelledby="{cid}-title {cid}-desc" {FONT} font-size="12">',
        f'<title id="{cid}-title">{escape(title)}</title>',
        f'<desc id="{cid}-desc">{escape(desc)}</desc>',
    ]


def histogram_svg(chart_id: str, bins: Sequence[Bin], title: str, x_label: str = "final score") -> Markup:
    """Vertical bars, one per score bin, with the count above each bar."""
    width, height = 560, 270
    left, right, top, bottom = 44, 14, 24, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    counts = [b.count for b in bins]
    ticks = _ticks(max(counts, default=0))
    y_max = ticks[-1] or 1
    total = sum(counts)
    desc = f"{total} student(s) with a score, by {x_label}: " + "; ".join(
        f"{b.label}: {b.count}" for b in bins
    )
    out = _open(chart_id, width, height, title, desc)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / y_max

    for t in ticks:
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_n(y(t))}" y2="{_n(y(t))}" stroke="{GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{_n(y(t) + 4)}" text-anchor="end" fill="{MUTED}" aria-hidden="true">{t}</text>'
        )
    slot = plot_w / max(1, len(bins))
    for i, b in enumerate(bins):
        x = left + i * slot + 2
        h = plot_h * b.count / y_max
        out.append(
            f'<rect class="bar" x="{_n(x)}" y="{_n(y(b.count))}" width="{_n(slot - 4)}" height="{_n(h)}" fill="{BAR}">'
            f"<title>{escape(b.label)}: {b.count} student(s)</title></rect>"
        )
        if b.count:
            out.append(
                f'<text x="{_n(x + (slot - 4) / 2)}" y="{_n(y(b.count) - 4)}" text-anchor="middle" fill="{INK}" '
                f'aria-hidden="true">{b.count}</text>'
            )
    # Bin edges under the axis.
    edges = [b.low for b in bins] + ([bins[-1].high] if bins else [])
    for i, edge in enumerate(edges):
        x = left + i * slot
        out.append(
            f'<text x="{_n(x)}" y="{top + plot_h + 16}" text-anchor="middle" fill="{MUTED}" font-size="11" '
            f'aria-hidden="true">{escape(_n(edge))}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="{INK}" stroke-width="1"/>'
    )
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 12}" text-anchor="middle" fill="{INK}" aria-hidden="true">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text x="12" y="{top + plot_h / 2:.0f}" text-anchor="middle" fill="{INK}" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.0f})" aria-hidden="true">students</text>'
    )
    out.append("</svg>")
    return Markup("\n".join(out))


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def pass_rate_svg(chart_id: str, rates: Sequence[PassRate], title: str) -> Markup:
    """Horizontal bars, one per function: the share of counted submissions that passed it
    (solid) and that earned part of its points (lighter, stacked after)."""
    width = 560
    left, right, top, row_h, bottom = 190, 110, 24, 30, 30
    plot_w = width - left - right
    height = top + row_h * max(1, len(rates)) + bottom
    desc = "Share of counted submissions that passed each function: " + "; ".join(
        f"{r.function}: {round(r.rate * 100)}% ({r.passed} of {r.total}), {r.partial} partly" for r in rates
    )
    if not rates:
        desc = "No counted submissions yet."
    out = _open(chart_id, width, height, title, desc)
    bottom_y = top + row_h * max(1, len(rates))
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + plot_w * frac
        out.append(f'<line x1="{_n(x)}" x2="{_n(x)}" y1="{top - 4}" y2="{bottom_y}" stroke="{GRID}" stroke-width="1"/>')
        out.append(
            f'<text x="{_n(x)}" y="{bottom_y + 16}" text-anchor="middle" fill="{MUTED}" font-size="11" '
            f'aria-hidden="true">{round(frac * 100)}%</text>'
        )
    for i, r in enumerate(rates):
        y = top + i * row_h
        passed_w = plot_w * r.rate
        partial_w = plot_w * (r.partial / r.total if r.total else 0.0)
        out.append(
            f'<text x="{left - 8}" y="{y + row_h / 2 + 4:.0f}" text-anchor="end" fill="{INK}" '
            f'font-family="ui-monospace, Menlo, Consolas, monospace" aria-hidden="true">{escape(_short(r.function))}</text>'
        )
        out.append(
            f'<rect class="bar" x="{left}" y="{y + 5}" width="{_n(passed_w)}" height="{row_h - 10}" fill="{PASS}">'
            f"<title>{escape(r.function)}: passed by {r.passed} of {r.total} ({round(r.rate * 100)}%)</title></rect>"
        )
        if r.partial:
            out.append(
                f'<rect class="bar partial" x="{_n(left + passed_w)}" y="{y + 5}" width="{_n(partial_w)}" '
                f'height="{row_h - 10}" fill="{PARTIAL}" fill-opacity="0.55">'
                f"<title>{escape(r.function)}: partly passed by {r.partial} of {r.total}</title></rect>"
            )
        out.append(
            f'<text x="{width - right + 8}" y="{y + row_h / 2 + 4:.0f}" fill="{INK}" aria-hidden="true">'
            f"{round(r.rate * 100)}% ({r.passed}/{r.total})</text>"
        )
    if not rates:
        out.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{top + row_h / 2 + 4:.0f}" text-anchor="middle" fill="{MUTED}">'
            "no counted submissions yet</text>"
        )
    out.append("</svg>")
    return Markup("\n".join(out))


def mistakes_svg(chart_id: str, counts: Sequence[MistakeCount], title: str) -> Markup:
    """Horizontal bars, one per recognised mistake (function, output and name above its
    bar): how many students made it on any submission (light) and how many still make it
    in the submission that counts (solid, drawn over it)."""
    width = 640
    left, right, top, row_h, bottom = 12, 150, 24, 42, 30
    plot_w = width - left - right
    rows = max(1, len(counts))
    height = top + row_h * rows + bottom
    ticks = _ticks(max((len(c.ever) for c in counts), default=0))
    x_max = ticks[-1] or 1
    desc = "Students per recognised mistake, in the submission that counts and on any submission: " + "; ".join(
        f"{c.label}: {len(c.counted)} now, {len(c.ever)} at some point" for c in counts
    )
    if not counts:
        desc = "No recognised mistakes yet."
    out = _open(chart_id, width, height, title, desc)
    bottom_y = top + row_h * rows

    def x(v: float) -> float:
        return left + plot_w * v / x_max

    for t in ticks:
        out.append(f'<line x1="{_n(x(t))}" x2="{_n(x(t))}" y1="{top - 4}" y2="{bottom_y}" stroke="{GRID}" stroke-width="1"/>')
        out.append(
            f'<text x="{_n(x(t))}" y="{bottom_y + 16}" text-anchor="middle" fill="{MUTED}" font-size="11" '
            f'aria-hidden="true">{t}</text>'
        )
    for i, c in enumerate(counts):
        y = top + i * row_h
        out.append(
            f'<text x="{left}" y="{y + 12}" fill="{INK}" font-size="11" aria-hidden="true">'
            f"{escape(_short(c.label, 90))}</text>"
        )
        out.append(
            f'<rect class="bar ever" x="{left}" y="{y + 17}" width="{_n(x(len(c.ever)) - left)}" height="{row_h - 22}" '
            f'fill="{MISTAKE}" fill-opacity="0.3"><title>{escape(c.label)}: made by {len(c.ever)} student(s) '
            "on some submission</title></rect>"
        )
        out.append(
            f'<rect class="bar counted" x="{left}" y="{y + 17}" width="{_n(x(len(c.counted)) - left)}" '
            f'height="{row_h - 22}" fill="{MISTAKE}"><title>{escape(c.label)}: still made by {len(c.counted)} '
            "student(s) in the submission that counts</title></rect>"
        )
        out.append(
            f'<text x="{width - right + 8}" y="{y + 32}" fill="{INK}" aria-hidden="true">'
            f"{len(c.counted)} now · {len(c.ever)} ever</text>"
        )
    if not counts:
        out.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{top + row_h / 2 + 4:.0f}" text-anchor="middle" fill="{MUTED}">'
            "no recognised mistakes yet</text>"
        )
    out.append("</svg>")
    return Markup("\n".join(out))
