"""Endpoints for operators: `/healthz` for load balancers and healthchecks (public, says only
which dependency is down), and `/metrics` (Prometheus text) and `/metrics.json` for people
and scrapers (a bearer token from GRADER_METRICS_TOKEN, or a logged-in site instructor).

Access to the metrics: with an `Authorization: Bearer` header, only the configured token
opens them (401 otherwise; a session cookie does not rescue a wrong token). Without one,
they are for users whose site-wide role is instructor (the people who run courses here);
anyone else gets the app's 404, as for any page they may not see."""

from __future__ import annotations

import hmac
import logging
import math
from typing import Any, Optional

from flask import Blueprint, Response, abort, current_app, jsonify
from flask import request as flask_request
from flask_login import current_user
from sqlalchemy import text

from grader.config import Settings
from grader.store import metrics
from grader.store.db import make_engine
from grader.web.database import db
from grader.web.extensions import limiter

log = logging.getLogger("grader.web.ops")

bp = Blueprint("ops", __name__)

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REDIS_SCHEMES = ("redis", "rediss")
# kombu's Redis transport keeps messages of priority p > 0 under "<queue>\x06\x16<p>".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_TIMEOUT = 2.0


def _settings() -> Settings:
    return current_app.extensions["grader.settings"]  # type: ignore[no-any-return]


def _is_redis(url: str) -> bool:
    return url.split("://", 1)[0] in REDIS_SCHEMES


def _redis() -> Any:
    """A Redis client for the broker, one per app, with short timeouts: a check that hangs
    is worse than one that says the broker is down."""
    client = current_app.extensions.get("grader.ops.redis")
    if client is None:
        import redis

        client = redis.Redis.from_url(
            _settings().broker_url, socket_connect_timeout=_TIMEOUT, socket_timeout=_TIMEOUT, health_check_interval=0
        )
        current_app.extensions["grader.ops.redis"] = client
    return client


def _sql_ok(url: str, key: str) -> bool:
    engine = current_app.extensions.get(key)
    if engine is None:
        engine = current_app.extensions[key] = make_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return True


def database_ok() -> bool:
    try:
        return _sql_ok(_settings().database_url, "grader.engine")
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable" here
        log.warning("healthz: the database is not reachable (%s)", type(exc).__name__)
        return False


def broker_ok() -> bool:
    url = _settings().broker_url
    try:
        if _is_redis(url):
            return bool(_redis().ping())
        if url.startswith("sqla+"):
            # kombu's SQLAlchemy transport connects lazily, on the first message: ask its
            # database directly (`grader up` uses it when no redis-server is installed).
            return _sql_ok(url.removeprefix("sqla+"), "grader.ops.broker_engine")
        from kombu import Connection

        with Connection(url, connect_timeout=_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=1, timeout=_TIMEOUT)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable" here
        log.warning("healthz: the broker is not reachable (%s)", type(exc).__name__)
        return False


def broker_queue_length() -> Optional[int]:
    """Messages waiting in the broker's grading queue; None unless the broker is Redis (or
    when it cannot be asked: the database figures still stand)."""
    settings = _settings()
    if not _is_redis(settings.broker_url):
        return None
    try:
        pipe = _redis().pipeline(transaction=False)
        for step in _PRIORITY_STEPS:
            pipe.llen(settings.queue if step == 0 else f"{settings.queue}{_PRIORITY_SEP}{step}")
        return int(sum(pipe.execute()))
    except Exception as exc:  # noqa: BLE001
        log.warning("metrics: cannot read the broker's queue length (%s)", type(exc).__name__)
        return None


@bp.get("/healthz")
@limiter.exempt
def healthz() -> Any:
    down = [name for name, ok in (("database", database_ok()), ("broker", broker_ok())) if not ok]
    response = jsonify(status="ok" if not down else "unavailable", down=down)
    response.status_code = 503 if down else 200
    response.headers["Cache-Control"] = "no-store"
    return response


def _require_access() -> None:
    """Returns for the metrics token or a logged-in site instructor; aborts with 401 for a
    wrong token and 404 for everyone else."""
    header = flask_request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        expected = _settings().metrics_token
        if scheme.lower() == "bearer" and expected and hmac.compare_digest(token.strip().encode(), expected.encode()):
            return
        abort(Response("a valid metrics token is needed\n", 401, {"WWW-Authenticate": 'Bearer realm="grader-metrics"'}))
    if current_user.is_authenticated and getattr(current_user, "role", None) == "instructor":
        return
    abort(404)


def _snapshot() -> metrics.Snapshot:
    _require_access()
    return metrics.snapshot(db(), broker_queue_length=broker_queue_length())


def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/metrics")
def prometheus() -> Response:
    body = prometheus_text(_snapshot())
    return _private(Response(body, 200, {"Content-Type": PROMETHEUS_TYPE}))


@bp.get("/metrics.json")
def metrics_json() -> Response:
    return _private(jsonify(_snapshot().as_json()))


# --- the Prometheus text exposition format (version 0.0.4) ------------------------------------


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: Optional[float], **labels: str) -> None:
        shown = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def prometheus_text(snap: metrics.Snapshot) -> str:
    out = _Exposition()
    for status in ("queued", "running"):
        name = f"grader_submissions_{status}"
        out.family(name, "gauge", f"Submissions {status} in the database.")
        out.sample(name, getattr(snap, f"{status}_total"))
        out.family(f"{name}_by_assignment", "gauge", f"Submissions {status} in the database, by assignment.")
        for q in snap.queue:
            out.sample(f"{name}_by_assignment", getattr(q, status), course=q.course, assignment=q.assignment)
    out.family("grader_queue_oldest_age_seconds", "gauge", "Seconds the longest-waiting first grading has been queued (0: none).")
    out.sample("grader_queue_oldest_age_seconds", snap.oldest_queued_age_seconds or 0.0)
    if snap.broker_queue_length is not None:
        out.family("grader_broker_queue_length", "gauge", "Messages waiting in the broker's grading queue (Redis LLEN).")
        out.sample("grader_broker_queue_length", snap.broker_queue_length)
    out.family("grader_grading_latency_seconds", "gauge", "Submit-to-graded seconds of first gradings, by window and quantile.")
    for lat in snap.latency:
        window = f"{lat.window_minutes}m"
        for quantile, value in (("0.5", lat.p50), ("0.95", lat.p95), ("0.99", lat.p99)):
            out.sample("grader_grading_latency_seconds", value, window=window, quantile=quantile)
    out.family("grader_graded", "gauge", "First gradings finished within the window.")
    for lat in snap.latency:
        out.sample("grader_graded", lat.count, window=f"{lat.window_minutes}m")
    out.family("grader_graded_per_minute", "gauge", "First gradings per minute over the window.")
    for lat in snap.latency:
        out.sample("grader_graded_per_minute", round(lat.graded_per_minute, 3), window=f"{lat.window_minutes}m")
    out.family("grader_errors_last_hour", "gauge", "Submissions that ended in status error within the last hour.")
    out.sample("grader_errors_last_hour", snap.errors_last_hour)
    out.family("grader_retried_last_hour", "gauge", "Submissions that needed more than one grading attempt, last hour.")
    out.sample("grader_retried_last_hour", snap.retried_last_hour)
    minutes = metrics.WORKER_WINDOW_MINUTES
    out.family("grader_workers_seen", "gauge", f"Worker processes that claimed a submission in the last {minutes} minutes.")
    out.sample("grader_workers_seen", len(snap.workers_seen))
    return out.text()
