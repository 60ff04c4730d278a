from __future__ import annotations

from pathlib import Path

import pytest

from grader.spec import Assignment, load_builtin

SUBMISSIONS = Path(__file__).parent / "submissions"
BUILTINS = ("gates", "vjp", "mlp", "bp4")


@pytest.fixture(scope="session")
def assignments() -> dict[str, Assignment]:
    return {aid: load_builtin(aid) for aid in BUILTINS}
