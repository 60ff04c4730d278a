"""Engines and sessions for the service's database (PostgreSQL in production, SQLite for the
embedded default). Plain SQLAlchemy, so the worker and the CLI use it without Flask."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Optional

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in Python, naive UTC in the column: SQLite keeps no time zone, and
    mixing aware and naive values in comparisons is a bug waiting for a deadline."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use grader.store.db.utcnow()")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc)


def normalize_url(url: str) -> str:
    """Accept the URLs operators paste (postgres://, postgresql://) and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class JsonText(str):
    """A JSON document already serialised, for a JSON column: stored as it is, where any other
    value is serialised first. The worker serialises a result once, to check it is storable,
    and does not pay for it a second time."""


def _json_dumps(value: Any) -> str:
    return value if isinstance(value, JsonText) else json.dumps(value)


PG_CONNECT_TIMEOUT = 10  # seconds to establish a PostgreSQL connection


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    kwargs.setdefault("json_serializer", _json_dumps)
    if url.startswith("sqlite"):
        # Web threads and the worker share one file: wait for locks instead of failing.
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if "connect_timeout" not in url:
        # libpq waits for a silent host (packets dropped) as long as TCP does, minutes:
        # /healthz, a web request or a worker's retry would hang with it.
        kwargs.setdefault("connect_args", {"connect_timeout": PG_CONNECT_TIMEOUT})
    return create_engine(url, **kwargs)



def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
