"""Instructor pages: courses, rosters, roles, assignments (specs, dates, policies), publishing."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort
from flask_login import login_required

bp = Blueprint("instructor", __name__)


@bp.get("/courses/new")
@login_required
def new_course() -> Any:
    abort(404)
