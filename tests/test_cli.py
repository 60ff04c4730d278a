"""The `grader` console script, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SUBMISSIONS


def grader(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("grader", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "grader.cli"]
    return subprocess.run(
        [*command, *args], input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=120
    )


def test_grade_json_correct_file() -> None:
    proc = grader("grade", "vjp", str(SUBMISSIONS / "vjp" / "correct_plain.py"), "--json", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"assignment", "score", "max_score", "status", "parts", "seed"} <= set(result)
    assert result["assignment"] == "vjp" and result["status"] == "graded" and result["seed"] == 4
    assert result["score"] == result["max_score"] == 8
    for part in result["parts"]:
        assert {"function", "score", "max_score", "feedback"} <= set(part)


def test_grade_json_wrong_file_still_exits_zero() -> None:
    proc = grader("grade", "vjp", str(SUBMISSIONS / "vjp" / "wrong_transposed_dW.py"), "--json")
    assert proc.returncode == 0
    result = json.loads(proc.stdout)
    assert result["score"] < result["max_score"]
    assert "transposed" in json.dumps(result)


def test_grade_human_readable(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def relu_backward(dout, x):\n    return dout *\n")
    proc = grader("grade", "vjp", str(broken))
    assert proc.returncode == 0
    assert "Score: 0 / 8" in proc.stdout
    assert "SyntaxError at line 2" in proc.stdout


def test_grade_reads_stdin() -> None:
    data = (SUBMISSIONS / "gates" / "correct_plain.py").read_bytes()
    proc = grader("grade", "gates", "-", "--json", stdin=data)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["score"] == 8


def test_grade_spec_folder_path() -> None:
    folder = Path(__file__).parents[1] / "assignments" / "mlp"
    proc = grader("grade", str(folder), str(SUBMISSIONS / "mlp" / "correct_plain.py"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["assignment"] == "mlp"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("grade", "nonesuch", "x.py"), "unknown assignment 'nonesuch'"),
        (("grade", "vjp", "/no/such/file.py"), "cannot read /no/such/file.py"),
    ],
)
def test_grade_cannot_happen_exits_nonzero(args: tuple[str, ...], words: str) -> None:
    proc = grader(*args)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert proc.stdout == ""


def test_grade_directory_is_not_a_file(tmp_path: Path) -> None:
    proc = grader("grade", "vjp", str(tmp_path))
    assert proc.returncode != 0
    assert proc.stdout == ""


def test_assignments_list() -> None:
    proc = grader("assignments", "list", "--json")
    assert proc.returncode == 0
    rows = {row["id"]: row for row in json.loads(proc.stdout)}
    assert set(rows) == {"gates", "vjp", "mlp", "bp4"}
    assert rows["vjp"]["functions"] == ["relu_backward", "matmul_backward", "affine_backward"]
    assert "bp4" in grader("assignments", "list").stdout


def test_assignments_check_ok_and_bad(tmp_path: Path) -> None:
    proc = grader("assignments", "check", "bp4", "--solution", str(SUBMISSIONS / "bp4" / "correct_vectorised.py"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test passed" in proc.stdout and "reference solution: 8/8" in proc.stdout

    folder = tmp_path / "broken"
    shutil.copytree(Path(__file__).parents[1] / "assignments" / "vjp", folder)
    spec = folder / "spec.yaml"
    spec.write_text(spec.read_text().replace("y = x @ W + b", "y = x @ V + b"))
    proc = grader("assignments", "check", str(folder))
    assert proc.returncode == 1
    assert "affine_backward" in proc.stderr and "'V'" in proc.stderr


def test_a_spec_whose_trials_cannot_be_made_is_a_grading_error(tmp_path: Path) -> None:
    import yaml

    folder = tmp_path / "probe"
    shutil.copytree(Path(__file__).parent / "fixtures" / "probe", folder)
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec["functions"][0]["constraints"] = [{"expr": "2 * x", "away_from": 0, "margin": 100.0}]
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    submission = tmp_path / "s.py"
    submission.write_text("def double(x):\n    return 2 * x\n")
    proc = grader("grade", str(folder), str(submission), "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "cannot grade" in proc.stderr and "constraint" in proc.stderr and "Traceback" not in proc.stderr
    check = grader("assignments", "check", str(folder), "--solution", str(submission))
    assert check.returncode == 1 and "still fails" in check.stdout and "Traceback" not in check.stderr
