"""Student pages: courses, assignments with handouts, submitting, results, history."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template
from flask_login import login_required
from sqlalchemy import select

from grader.store.models import Course, Membership
from grader.web.access import user
from grader.web.database import db

bp = Blueprint("student", __name__)


@bp.get("/")
@login_required
def home() -> Any:
    rows = db().execute(
        select(Course, Membership.role)
        .join(Membership, Membership.course_id == Course.id)
        .where(Membership.user_id == user().id)
        .order_by(Course.code)
    ).all()
    return render_template("student/home.html", courses=rows)
