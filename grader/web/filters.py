"""Jinja filters shared by every page."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from flask import Flask

from grader.policy import fmt_time


def fmt_score(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def fmt_pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def iso(value: Optional[dt.datetime]) -> str:
    return "" if value is None else value.astimezone(dt.timezone.utc).isoformat()


def init_app(app: Flask) -> None:
    app.jinja_env.filters.update(time=fmt_time, score=fmt_score, pct=fmt_pct, iso=iso)
