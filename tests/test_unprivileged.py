"""The sandbox works for an unprivileged worker, not only as root.

Production workers should not run as root. This runs `grader sandbox` and `grader grade`
as `nobody`, with a virtual environment made from the system's Python (the test venv's
interpreter may live under /root, out of nobody's reach) and cached per dependency pins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to the unprivileged user"),
    pytest.mark.skipif(not SYSTEM_PYTHON.exists() or not shutil.which("setpriv"), reason="needs /usr/bin/python3 and setpriv"),
]


@pytest.fixture(scope="module")
def venv() -> Path:
    pins = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    path = Path(f"/tmp/grader-unprivileged-{pins}")
    if not (path / "ok").exists():
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(path)], check=True)
        deps = ["numpy==2.4.6", "pydantic==2.13.4", "PyYAML==6.0.3", "click==8.4.0"]
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", *deps], check=True, timeout=600)
        (path / "ok").write_text(pins)
    # The grader itself comes from this checkout, as the worker's code would.
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)
    return path


def as_nobody(venv: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(venv / "bin" / "python"), "-m", "grader.cli", *args],
        env=env, cwd="/tmp", input=stdin, capture_output=True, text=True, timeout=300,
    )


def test_grading_as_nobody(venv: Path) -> None:
    for part in [ROOT, *ROOT.parents]:
        if part.stat().st_mode & 0o005 != 0o005:
            pytest.skip(f"{part} is not readable by other users, so nobody cannot import the grader")
    probe = as_nobody(venv, "sandbox", "--json")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    layers = json.loads(probe.stdout)["layers"]
    assert all(layers[name]["ok"] for name in ("bwrap", "userns", "landlock", "seccomp"))

    submission = (ROOT / "tests" / "submissions" / "vjp" / "wrong_jacobian.py").read_text()
    graded = as_nobody(venv, "grade", "vjp", "-", "--json", "--seed", "5", stdin=submission)
    assert graded.returncode == 0, graded.stderr
    result = json.loads(graded.stdout)
    assert result["score"] == 3 and "ran out of memory" in json.dumps(result)
