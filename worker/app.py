"""The Celery application, configured for at-least-once delivery with the database as the
source of truth (see ../shared/design.md, "Reliability of the queue")."""

from __future__ import annotations

from celery import Celery

from grader.config import Settings

# Celery's hard limit must sit below the lease (grader.store.submissions.LEASE_SECONDS = 300)
# and well below the broker's visibility timeout, so a message is never redelivered while
# its first delivery is still being graded.
SOFT_TIME_LIMIT = 240
HARD_TIME_LIMIT = 270
VISIBILITY_TIMEOUT = 3600


def make_celery(settings: Settings) -> Celery:
    app = Celery("grader", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the database, not in a result backend
        task_default_queue=settings.queue,
        task_soft_time_limit=SOFT_TIME_LIMIT,
        task_time_limit=HARD_TIME_LIMIT,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        beat_schedule={
            "sweep-stuck-submissions": {"task": "grader.sweep", "schedule": settings.sweep_seconds},
        },
    )
    app.conf.grader_settings = settings
    return app
