"""TA and instructor pages: gradebooks, reading submissions, regrades, CSV export, charts."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("gradebook", __name__)
