"""The self-test checks that the trials of a grading catch every declared mutant and the
generic mistakes (transposed, sign, factor 2), with the grader's own comparator."""

from __future__ import annotations

import copy
import html
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from grader.catching import Caught, MutantCheck
from grader.selftest import self_test
from grader.spec import Assignment
from grader.spec.load import parse_spec

from conftest import BUILTINS

# dW = (1 + lam) * x.T @ dout; the mutant drops the lam term. `lam` is chosen per test.
SPEC = """
id: probe
title: probe
version: 1
dims:
  B: [2, 6]
  D: [2, 6]
  M: [2, 6]
inputs:
  x: {shape: [B, D]}
  W: {shape: [D, M]}
  lam: {type: float, dist: {uniform: [0.5, 1.0]}}
trials:
  random: 6
  hidden: 2
functions:
  - name: scaled_backward
    args: [dout, x, W, lam]
    forward: |
      y = x @ (W + lam * W)
    upstream: {dout: y}
    returns: {grad: W, name: dW}
    mutants:
      - name: regularisation term missing
        message: The lam * W term is missing.
        forward: |
          y = x @ W
"""

STARTER = "def scaled_backward(dout, x, W, lam):\n    raise NotImplementedError\n"


def _spec(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(SPEC)
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value  # type: ignore[index]
    return data


def _report(data: dict[str, Any], seeds: tuple[int, ...] = (0,)) -> Any:
    report = self_test(parse_spec(data), seeds=seeds)
    # The probe has no starter file; everything else must be clean for these tests to mean anything.
    return report, [p for p in report.problems if not p.startswith("starter file")]


def test_a_mutant_the_trials_catch_is_reported_with_its_count() -> None:
    report, problems = _report(_spec(), seeds=(0, 1))
    assert not problems and not report.warnings, report.warnings
    (check,) = report.mutants
    assert check.name == "regularisation term missing"
    assert check.first.trials == 6 and check.first.failed == 6 and check.first.failed_hidden == 2
    assert [g.seed for g in check.gradings] == [0, 1] and not check.missed_seeds
    note = "\n".join(report.notes)
    assert "mutant 'regularisation term missing' fails 6 of 6 trials (4 visible, 2 hidden): caught" in note


def test_a_mutant_below_the_tolerance_is_never_caught_and_warned_of() -> None:
    # lam ~ 1e-10: the missing term changes dW by 1e-10 relative, far inside rtol 1e-7.
    report, problems = _report(_spec(inputs__lam={"type": "float", "dist": {"uniform": [1.0e-10, 2.0e-10]}}))
    assert not problems
    (check,) = report.mutants
    assert check.first.failed == 0 and check.verdict == "NOT CAUGHT"
    (warning,) = [w for w in report.warnings if "regularisation term missing" in w]
    assert "fails none of the 6 trials" in warning and "too weak to catch it" in warning
    assert "within the tolerance" in warning and "e.g. add a trial" in warning
    assert "fails 0 of 6 trials (0 visible, 0 hidden): NOT CAUGHT" in "\n".join(report.notes)
    assert "each caught by every grading" not in "\n".join(report.notes)


def test_a_mutant_equal_to_the_reference_is_warned_of() -> None:
    report, problems = _report(_spec(functions__0__mutants=[{"name": "same", "message": "x", "forward": "y = x @ (W + W * lam)\n"}]))
    assert not problems
    (warning,) = [w for w in report.warnings if "'same'" in w]
    assert "fails none" in warning and "gives the expected answers on every trial" in warning


def test_a_mutant_caught_only_on_hidden_trials_gets_a_note() -> None:
    report, problems = _report(_spec(trials={"random": 3, "hidden": 3}))
    assert not problems
    assert report.mutants[0].hidden_only
    assert any("caught on hidden trials only" in n for n in report.notes)
    assert not any("regularisation term missing" in w for w in report.warnings)


def test_a_mutant_missed_by_one_grading_only_is_warned_of() -> None:
    check = MutantCheck("f", "m", (Caught(0, 5, 1, 3, 0), Caught(1, 5, 1, 0, 0)), 0.5)
    assert check.missed_seeds == [1] and check.verdict.startswith("caught with this seed, not with seed 1")
    from grader.catching import mutant_warning

    fn = parse_spec(_spec()).functions[0]
    warning = mutant_warning(fn, check, parse_spec(_spec()).spec.tolerance)
    assert warning is not None and "fails none of the trials with seed 1" in warning


def test_every_trial_square_warns_that_a_transpose_is_caught_by_values_only() -> None:
    # No random trial: only a case where D == M, so dW is square in every trial.
    report, problems = _report(
        _spec(trials={"random": 0, "cases": [{"label": "square", "equal": ["D", "M"], "repeat": 3}]})
    )
    assert not problems
    (warning,) = [w for w in report.warnings if "transposed" in w]
    assert "every trial with seed 0 has D == M" in warning and "add a case where D != M" in warning


def test_a_declared_square_output_gets_a_note_not_a_warning() -> None:
    data = _spec(inputs__W={"shape": ["D", "D"]})
    report, problems = _report(data)
    assert not problems
    assert not any("transposed" in w for w in report.warnings)
    assert any("square by its declared shape" in n for n in report.notes)


def test_a_symmetric_output_warns_that_a_transpose_is_never_caught() -> None:
    # d/dW of sum(dout * (W + W.T)) is dout + dout.T: symmetric, so its transpose passes.
    data = _spec(
        inputs__W={"shape": ["D", "D"]},
        inputs__x={"shape": ["D", "D"]},
        functions__0={
            "name": "sym_backward",
            "args": ["dout", "W"],
            "forward": "y = W + transpose(W)\n",
            "upstream": {"dout": "y"},
            "returns": {"grad": "W", "name": "dW"},
        },
    )
    report, problems = _report(data)
    assert not problems, problems
    (warning,) = [w for w in report.warnings if "transposed" in w]
    assert "a transposed dW is never caught" in warning


def test_an_output_zero_on_every_trial_warns_of_sign_and_factor() -> None:
    data = _spec(functions__0__forward="y = x @ (W - W)\n", functions__0__mutants=[])
    report, problems = _report(data)
    assert not problems, problems
    assert any("sign error or a factor of 2 in dW is never caught" in w for w in report.warnings), report.warnings


def test_builtin_specs_have_no_catching_warnings(assignments: dict[str, Assignment]) -> None:
    for aid in BUILTINS:
        report = self_test(assignments[aid], seeds=(0, 1))
        assert report.ok and not report.warnings, (aid, report.warnings)
        assert all(not c.missed_seeds for c in report.mutants), aid
        assert not any("transposed" in n for n in report.notes), aid


def test_cli_check_prints_the_mutant_report(tmp_path: Path) -> None:
    folder = tmp_path / "probe"
    folder.mkdir()
    data = _spec(inputs__lam={"type": "float", "dist": {"uniform": [1.0e-10, 2.0e-10]}})
    (folder / "spec.yaml").write_text(yaml.safe_dump(copy.deepcopy(data)))
    (folder / "starter.py").write_text(STARTER)
    (folder / "handout.md").write_text("# probe\n")
    proc = subprocess.run(
        [sys.executable, "-m", "grader.cli", "assignments", "check", str(folder)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr  # warnings do not fail the check
    assert "warning: scaled_backward: mutant 'regularisation term missing' fails none" in proc.stdout
    assert "\n        mutant 'regularisation term missing' fails 0 of 6 trials" in proc.stdout



# --- the report on the instructor's spec page ----------------------------------------------


def test_report_text_is_arranged_with_a_mutant_table() -> None:
    from grader.store.catalog import report_text
    from grader.web.selftest_report import parse_report

    report, _ = _report(_spec(inputs__lam={"type": "float", "dist": {"uniform": [1.0e-10, 2.0e-10]}}), seeds=(0, 1))
    view = parse_report(report_text(report))
    assert view.problems == [p for p in report.problems]
    assert view.warnings == report.warnings
    (table,) = view.mutants
    assert table.function == "scaled_backward" and "seed 0: 6 trials, 4 visible, 2 hidden" in table.heading
    (row,) = table.rows
    assert (row.name, row.failed, row.trials, row.failed_visible, row.failed_hidden, row.verdict) == (
        "regularisation term missing", 0, 6, 0, 0, "NOT CAUGHT"
    )
    assert not table.all_caught
    assert any("gradient entries match finite differences" in n for n in view.notes)
    # Anything unrecognised stays a note.
    assert parse_report("hello\nnote: a\n  b").notes == ["hello", "a\n  b"]


def test_spec_page_shows_an_uncaught_mutant(client: Any) -> None:
    from service_fixtures import login
    from test_web_instructor import NEW, post, spec_form, text

    login(client, "instructor")
    data = _spec(inputs__lam={"type": "float", "dist": {"uniform": [1.0e-10, 2.0e-10]}})
    files = {"spec.yaml": yaml.safe_dump(data), "handout.md": "# probe\n", "starter.py": STARTER}
    response = post(client, NEW, spec_form(files))
    assert response.status_code == 302, text(response)
    page = html.unescape(text(client.get(response.headers["Location"].split("#")[0])))
    assert "self-test passed, 1 warning(s)" in page  # warnings do not stop a version becoming current
    assert "mutant 'regularisation term missing' fails none of the 6 trials" in page
    table = re.search(r'<table class="compact mutant-table">.*?</table>', page, re.S)
    assert table, "no mutant table on the page"
    row = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", table.group(0)))
    assert "regularisation term missing 0 of 6 0 0 NOT CAUGHT" in row
