"""Size limits on what a spec may declare, and the self-test's time budget: an oversized
spec is refused at validation with the input, dimensions and limit named; a slow one stops
at the budget with a problem; the web upload shows either without making it current."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from grader.selftest import BUDGET_ENV, default_budget, self_test
from grader.spec import SpecError, builtin_dir, builtin_ids, load_builtin, parse_spec
from grader.spec import limits
from grader.trials import TrialError, make_trials
from service_fixtures import login
from test_web_instructor import NEW_ZIP, assignment_row, builtin_files, make_zip, manage, text, upload


def builtin_data(aid: str) -> dict[str, Any]:
    return yaml.safe_load((builtin_dir() / aid / "spec.yaml").read_text(encoding="utf-8"))


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return str(info.value)


def tiny_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": "tiny",
        "title": "t",
        "version": 1,
        "dims": {"N": [2, 6]},
        "inputs": {"x": {"shape": ["N"]}},
        "trials": {"random": 2},
        "functions": [{"name": "double", "args": ["x"], "forward": "d = 2 * x\n", "returns": {"value": "d"}}],
    }
    spec.update(extra)
    return spec


# ------------------------------------------------------------------------- validation


def test_the_builtins_are_within_every_limit():
    for aid in builtin_ids():
        load_builtin(aid)  # raises SpecError if a limit is hit


def test_a_3000_by_3000_spec_is_refused_naming_the_input_and_dims():
    data = builtin_data("mlp")
    data["dims"] = {"D": [2, 3000], "H": [2, 3000], "Q": [2, 12]}
    message = refused(data)
    assert (
        "functions[0] (mlp_backward): input W1 has up to 9,000,000 elements (dims H ≤ 3000, D ≤ 3000); "
        "the limit is 4,000,000 per array"
    ) in message


def test_a_large_fixed_case_is_refused_naming_the_case():
    data = builtin_data("vjp")
    data["trials"]["cases"].append({"label": "huge", "dims": {"N": 5000, "D": 1000}})
    message = refused(data)
    assert "trials.cases ('huge'): input x has up to 5,000,000 elements (dims N = 5000, D = 1000)" in message


def test_an_array_at_the_limit_is_accepted():
    data = tiny_spec(dims={"N": [2, 6]}, trials={"random": 1, "cases": [{"label": "at the limit", "dims": {"N": limits.MAX_ARRAY_ELEMENTS}}]})
    parse_spec(data)
    data["trials"]["cases"][0]["dims"]["N"] += 1
    assert "input x has up to 4,000,001 elements (dims N = 4000001)" in refused(data)


def test_too_many_input_elements_in_one_trial():
    data = builtin_data("mlp")
    data["dims"] = {"D": [2, 2000], "H": [2, 2000], "Q": [2, 2000]}
    message = refused(data)
    assert "a random trial has up to 8,002,002 input elements in all (x: 2,000, W1: 4,000,000, W2: 4,000,000)" in message
    assert "the limit is 8,000,000 per trial" in message


def test_too_many_input_elements_over_one_grading():
    data = builtin_data("mlp")
    data["dims"] = {"D": [2, 1000], "H": [2, 1000], "Q": [2, 1000]}
    message = refused(data)
    assert re.search(r"trials: the 11 trials of one grading have up to [\d,]+ input elements in all; the limit is 16,000,000", message)


@pytest.mark.parametrize(
    "trials, counted",
    [
        ({"random": 150, "hidden": 3}, "150 trials per grading (random: 150, cases: 0)"),
        ({"random": 90, "cases": [{"label": "many", "repeat": 11}]}, "101 trials per grading (random: 90, cases: 11)"),
    ],
)
def test_too_many_trials_per_function(trials, counted):
    message = refused(tiny_spec(trials=trials))
    assert f"functions[0] (double): trials: {counted}; the limit is 100 per function" in message


def test_the_trial_limit_is_inclusive():
    parse_spec(tiny_spec(trials={"random": 90, "cases": [{"label": "many", "repeat": 10}]}))


def test_too_many_functions():
    fn = tiny_spec()["functions"][0]
    functions = [{**fn, "name": f"double_{k}"} for k in range(limits.MAX_FUNCTIONS + 1)]
    assert "functions: the spec declares 51 functions; the limit is 50" in refused(tiny_spec(functions=functions))


def test_too_many_mutants():
    spec = tiny_spec()
    spec["functions"][0]["mutants"] = [
        {"name": f"m{k}", "message": "wrong", "forward": f"d = {k + 3} * x\n"} for k in range(limits.MAX_MUTANTS_PER_FUNCTION + 1)
    ]
    assert "mutants: 31 known mistakes; the limit is 30 per function" in refused(spec)


LONG_FORWARD = "d = x\n" + "".join(f"d{k} = d + x\n" for k in range(700))  # ~2,800 nodes, shallow
DEEP_FORWARD = "d = " + " + ".join(["x"] * 1500) + "\n"  # would overflow the stack when checked


def test_a_huge_or_deep_forward_definition_is_refused():
    spec = tiny_spec()
    spec["functions"][0]["forward"] = LONG_FORWARD
    assert (
        "functions[0] (double).forward: cannot parse the forward definition: "
        "the definition has more than 2,000 syntax nodes"
    ) in refused(spec)
    spec["functions"][0]["forward"] = DEEP_FORWARD
    assert "line 1: an expression nests more than 50 levels deep; split it into several assignments" in refused(spec)


def test_a_huge_mutant_forward_or_constraint_is_refused():
    spec = tiny_spec()
    spec["functions"][0]["mutants"] = [{"name": "big", "message": "wrong", "forward": LONG_FORWARD}]
    assert "mutants[0].forward: cannot parse the mutant's forward definition: the definition has more than 2,000" in refused(spec)
    spec = tiny_spec()
    spec["functions"][0]["constraints"] = [{"expr": DEEP_FORWARD[4:].strip(), "margin": 0.1}]
    assert "constraints[0].expr: cannot parse constraint expression: line 1: an expression nests more than 50" in refused(spec)


def test_nested_loops_stop_at_the_statement_limit():
    spec = tiny_spec()
    spec["functions"][0]["forward"] = "d = 2 * x\nfor i in range(400):\n    for j in range(400):\n        k = j\n"
    assignment = parse_spec(spec)  # each loop is within its own cap
    with pytest.raises(TrialError, match="executes more than 100,000 statements"):
        make_trials(assignment, assignment.functions[0], 0)
    report = self_test(assignment)
    assert any("executes more than 100,000 statements" in p for p in report.problems)


def test_a_random_draw_above_the_drawable_size_is_refused():
    message = refused(tiny_spec(dims={"N": [2, 20000]}))
    assert "dims.N: sizes are drawn from [2, 20000]; the largest size a random draw may pick is 10,000" in message
    spec = tiny_spec()
    spec["functions"][0]["dims"] = {"N": [2, 50000]}
    assert "functions[0] (double): dims.N: sizes are drawn from [2, 50000]" in refused(spec)


def test_shape_variables_are_bounded_by_rank_and_size():
    data = builtin_data("gates")
    data["shapes"]["S"] = {"rank": [1, 8], "size": [2, 10]}
    assert "input x has up to 100,000,000 elements (shape S: up to 8 axes of size ≤ 10)" in refused(data)
    data["shapes"]["S"] = {"rank": [1, 9], "size": [2, 3]}
    assert "shapes.S.rank: up to 9 axes; the limit is 8" in refused(data)


def test_layered_inputs_are_bounded_per_layer():
    data = builtin_data("bp4")
    data["layers"] = {"count": [2, 5], "size": [1, 3000]}
    message = refused(data)
    assert "an array of input weights has up to 9,000,000 elements (4 weight layers of sizes ≤ 3000)" in message
    data = builtin_data("bp4")
    data["layers"] = {"count": [2, 100], "size": [1, 30]}
    assert "layers.count: up to 100 layer sizes; the limit is 64" in refused(data)


def test_sandbox_limits_are_capped():
    assert "limits.job_seconds: 1000 s; the limit is 180 s" in refused(tiny_spec(limits={"job_seconds": 1000}))
    spec = tiny_spec()
    spec["functions"][0]["limits"] = {"memory_mb": 100_000}
    assert "functions[0] (double): limits.memory_mb: 100000 MB; the limit is 8192 MB" in refused(spec)
    parse_spec(tiny_spec(limits={"job_seconds": 180, "wall_seconds": 60, "cpu_seconds": 60, "memory_mb": 8192}))


# ------------------------------------------------------------------------- time budget


def test_a_self_test_past_its_budget_reports_it_and_stops():
    assignment = load_builtin("mlp")  # within every limit, but slower than 10 ms
    report = self_test(assignment, budget_seconds=0.01, solution=b"def mlp_backward(*a):\n    pass\n")
    (problem,) = report.problems
    assert problem.startswith("the self-test did not finish in 0.01 s: after ")
    assert "it stopped before" in problem and "make them smaller or fewer" in problem
    assert "reference solution not graded: the spec has problems to fix first" in report.notes
    assert not report.ok


def test_the_budget_is_checked_between_mutant_evaluations(monkeypatch):
    """One function's mutants over three gradings can be many derivations; the budget stops
    them one trial at a time (a fake clock makes the timing exact)."""
    import types

    import grader.mistakes
    import grader.selftest

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(grader.selftest, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    real = grader.mistakes.mutant_outputs
    calls = []

    def slow_mutant(*args: Any) -> Any:
        calls.append(args)
        clock.now += 15.0  # each derivation "takes" 15 s
        return real(*args)

    monkeypatch.setattr(grader.mistakes, "mutant_outputs", slow_mutant)
    report = self_test(load_builtin("mlp"), budget_seconds=20)
    (problem,) = report.problems
    assert len(calls) == 2  # the second evaluation passes the budget; the third never starts
    assert problem.startswith("the self-test did not finish in 20 s: after 30 s it stopped before evaluating mlp_backward's mutant ")
    assert "on trial 2 for seed 0" in problem


def test_the_default_budget_lets_the_builtins_pass():
    report = self_test(load_builtin("vjp"))
    assert report.ok, report.problems


def test_the_budget_is_configurable(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert default_budget() == 20.0
    monkeypatch.setenv(BUDGET_ENV, "2.5")
    assert default_budget() == 2.5
    for bad in ("soon", "0", "-3", "inf", "nan"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(ValueError, match="GRADER_SELFTEST_SECONDS="):
            default_budget()


def test_the_command_line_check_takes_a_budget(monkeypatch):
    from click.testing import CliRunner

    from grader.cli import main

    result = CliRunner().invoke(main, ["assignments", "check", "mlp", "--budget", "0.01"])
    assert result.exit_code == 1 and "PROBLEM: the self-test did not finish in 0.01 s" in result.output
    monkeypatch.setenv(BUDGET_ENV, "soon")
    result = CliRunner().invoke(main, ["assignments", "check", "mlp"])
    assert result.exit_code == 2 and "GRADER_SELFTEST_SECONDS='soon'" in result.output


# ------------------------------------------------------------------------- web upload


def oversized(aid: str, new_id: str = "") -> dict[str, str]:
    files = builtin_files(aid)
    data = yaml.safe_load(files["spec.yaml"])
    data["dims"] = {"D": [2, 3000], "H": [2, 3000], "Q": [2, 12]}
    if new_id:
        data["id"] = new_id
    files["spec.yaml"] = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return files


def test_uploading_an_oversized_spec_shows_the_limit_and_stores_nothing(client, session):
    login(client, "instructor")
    response = upload(client, NEW_ZIP, make_zip(oversized("mlp", new_id="mlp-big")))
    assert response.status_code == 400
    page = text(response)
    error = re.search(r'<pre class="error">(.*?)</pre>', page, re.S).group(1)
    assert "input W1 has up to 9,000,000 elements (dims H ≤ 3000, D ≤ 3000); the limit is 4,000,000 per array" in error
    assert assignment_row(session, "mlp-big") is None

    before = assignment_row(session, "mlp")
    versions, current = len(before.versions), before.current_version_id
    response = upload(client, manage("mlp", "/versions/zip"), make_zip(oversized("mlp")))
    assert response.status_code == 400 and "the limit is 4,000,000 per array" in text(response)
    after = assignment_row(session, "mlp")
    assert len(after.versions) == versions and after.current_version_id == current


def test_an_upload_past_the_budget_is_stored_but_not_current(client, session, monkeypatch):
    login(client, "instructor")
    monkeypatch.setenv(BUDGET_ENV, "0.01")
    files = builtin_files("mlp")
    files["spec.yaml"] = files["spec.yaml"].replace("id: mlp", "id: mlp-slow", 1)
    response = upload(client, NEW_ZIP, make_zip(files))
    assert response.status_code == 302, text(response)
    row = assignment_row(session, "mlp-slow")
    assert row.current_version_id is None
    (version,) = row.versions
    assert not version.selftest_ok and "the self-test did not finish in 0.01 s" in version.selftest_report
    assert "the self-test did not finish in 0.01 s" in text(client.get(manage("mlp-slow")))
