"""Handing submission ids to the workers. The web app only sends task names and ids, so it
does not import the worker's code; the row is always committed before its id is sent."""

from __future__ import annotations

import logging
from typing import Iterable, Protocol

from celery import Celery

from grader.config import Settings
from grader.store.submissions import log_event

GRADE_TASK = "grader.grade_submission"
SWEEP_TASK = "grader.sweep"


class Enqueuer(Protocol):
    def __call__(self, submission_ids: Iterable[int]) -> None: ...


class CeleryEnqueuer:
    def __init__(self, settings: Settings) -> None:
        from worker.app import make_celery

        self.celery: Celery = make_celery(settings)
        self.queue = settings.queue

    def __call__(self, submission_ids: Iterable[int]) -> None:
        for sid in submission_ids:
            try:
                self.celery.send_task(GRADE_TASK, args=[int(sid)], queue=self.queue)
            except Exception as exc:  # noqa: BLE001 - the broker being down must not lose the row
                # The row is committed as queued; the sweeper re-enqueues it when the broker is back.
                log_event("enqueue_failed", int(sid), logging.ERROR, error=type(exc).__name__, retry="sweeper")
            else:
                log_event("enqueued", int(sid), queue=self.queue)
