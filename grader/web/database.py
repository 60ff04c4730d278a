"""The request's database session: one scoped session per app, removed after each request."""

from __future__ import annotations

from flask import Flask, current_app
from sqlalchemy.orm import Session, scoped_session

from grader.store.db import make_engine, make_sessionmaker


def init_app(app: Flask, database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = scoped_session(make_sessionmaker(engine))
    app.extensions["grader.engine"] = engine
    app.extensions["grader.db"] = sessions

    @app.teardown_appcontext
    def _remove(_exc: BaseException | None) -> None:
        sessions.remove()


def db() -> Session:
    """The current request's session."""
    return current_app.extensions["grader.db"]()  # type: ignore[no-any-return]
