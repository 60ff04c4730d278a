"""The Celery application, configured for at-least-once delivery with the database as the
source of truth (see ../shared/design.md, "Reliability of the queue")."""

from __future__ import annotations

from celery import Celery

from grader.config import Settings

# Celery's limits are fractions of the lease a worker holds on its submission
# (Settings.lease_seconds, 300 s by default: soft 240 s, hard 270 s). The hard limit sits
# below the lease, so a live worker never loses its row mid-grading, and both sit far below
# the broker's visibility timeout, so Redis never redelivers a message whose first delivery
# is still being graded. A spec's own job budget (60 s by default) ends grading long before.
SOFT_FRACTION = 0.8
HARD_FRACTION = 0.9
VISIBILITY_TIMEOUT = 3600


def time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) task time limits in seconds for these settings."""
    return settings.lease_seconds * SOFT_FRACTION, settings.lease_seconds * HARD_FRACTION


def visibility_timeout(settings: Settings) -> float:
    return max(float(VISIBILITY_TIMEOUT), 4 * settings.lease_seconds)


def make_celery(settings: Settings) -> Celery:
    """The Celery app for `settings`; the grading tasks are registered on it by
    worker.tasks.register (the web app only sends task names, so it does not need them)."""
    soft, hard = time_limits(settings)
    app = Celery("grader", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the database, not in a result backend
        task_default_queue=settings.queue,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        broker_connection_retry_on_startup=True,
        # Keep retrying while the broker is away (a Redis restart): the worker reconnects
        # instead of exiting, and the sweeper re-enqueues what the restart lost.
        broker_connection_max_retries=None,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        # One grading at a time per pool process and no result backend: nothing to gain
        # from Celery's own events or mingling, and they cost broker round trips.
        worker_send_task_events=False,
        beat_schedule={
            "sweep-stuck-submissions": {"task": "grader.sweep", "schedule": settings.sweep_seconds},
        },
    )
    if _is_redis(settings.broker_url):
        # Only Redis knows this option; the SQLAlchemy transport passes its transport
        # options to create_engine, which refuses unknown keywords.
        app.conf.broker_transport_options = {"visibility_timeout": visibility_timeout(settings)}
    app.conf.grader_settings = settings
    return app


def _is_redis(url: str) -> bool:
    return url.split("://", 1)[0] in ("redis", "rediss", "redis+socket", "sentinel")
