from __future__ import annotations

from pathlib import Path

import pytest

from grader.spec import Assignment, load_builtin

SUBMISSIONS = Path(__file__).parent / "submissions"
BUILTINS = ("gates", "vjp", "mlp", "bp4")


@pytest.fixture(scope="session")
def assignments() -> dict[str, Assignment]:
    return {aid: load_builtin(aid) for aid in BUILTINS}


from service_fixtures import (  # noqa: E402,F401 - fixtures for the service tests
    _fast_hashes,
    app,
    client,
    db_url,
    enqueued,
    pg_server_url,
    pg_url,
    session,
    sqlite_template,
    sqlite_url,
)
