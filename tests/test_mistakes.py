"""Recognising known mistakes: each one is named on a submission that makes it, correct
submissions are never told of one, hidden trials contribute only a mistake's name, and
mutants are declared in spec data (a broken one is a clear SpecError)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from grader import mistakes
from grader.grade import grade_bytes
from grader.mistakes import Observation, Recogniser
from grader.selftest import self_test
from grader.spec import Assignment
from grader.spec.load import SpecError, builtin_dir, parse_spec
from grader.trials import derive, make_trials

from conftest import BUILTINS, SUBMISSIONS

# (submission, output as function.name, the mistake's name expected in its feedback)
CASES = [
    ("vjp/wrong_transposed_dW.py", "matmul_backward.dW", "transposed"),
    ("vjp/wrong_transposed_dW.py", "affine_backward.dW", "transposed"),
    ("vjp/wrong_db_not_summed.py", "affine_backward.db", "not summed over the batch"),
    ("vjp/wrong_db_mean.py", "affine_backward.db", "averaged over N instead of summed, or averaged twice"),
    ("bp4/wrong_sum_not_mean.py", "minibatch_backprop.nabla_w", "summed instead of averaged over m"),
    ("bp4/wrong_sum_not_mean.py", "minibatch_backprop.nabla_b", "summed instead of averaged over m"),
    ("bp4/wrong_mean_twice.py", "minibatch_backprop.nabla_w", "averaged over m instead of summed, or averaged twice"),
    ("vjp/wrong_factor_two.py", "matmul_backward.dx", "a factor of 2"),
    ("vjp/wrong_half_dx.py", "matmul_backward.dx", "a factor of 1/2"),
    ("gates/wrong_sign.py", "circuit.dw0", "sign error"),
    ("mlp/wrong_no_reg.py", "mlp_backward.W1", "regularisation term missing"),
    ("mlp/wrong_no_reg.py", "mlp_bias_backward.W2", "regularisation term missing"),
    ("mlp/wrong_half_reg.py", "mlp_backward.W2", "regularisation gradient halved"),
    ("mlp/wrong_double_reg.py", "mlp_bias_backward.W1", "regularisation gradient doubled"),
    ("mlp/wrong_bias_regularised.py", "mlp_bias_backward.b1", "bias regularised"),
    ("bp4/wrong_sigmoid_prime_of_a.py", "backprop.nabla_w", "sigmoid derivative at the wrong point"),
    ("bp4/wrong_sigmoid_prime_of_a.py", "minibatch_backprop.nabla_b", "sigmoid derivative at the wrong point"),
    ("bp4/wrong_sigmoid_prime_output_layer.py", "backprop.nabla_b", "sigmoid derivative at the wrong point (output layer)"),
    ("gates/wrong_sigmoid_at_input.py", "sigmoid_backward.dx", "sigmoid derivative at the wrong point"),
    ("gates/wrong_mul_no_swap.py", "mul_backward.dx", "multiply gate not swapped"),
    ("gates/wrong_mul_no_swap.py", "mul_backward.dy", "multiply gate not swapped"),
    ("gates/wrong_max_routes_both.py", "max_backward.dy", "max gate routes to both inputs"),
    ("gates/wrong_copy_average.py", "copy_backward.dt", "copy gate averages"),
    ("gates/wrong_ignores_upstream.py", "add_backward.dx", "upstream gradient ignored"),
    ("vjp/wrong_relu_inplace.py", "relu_backward.dx", "the upstream gradient modified in place"),
    ("vjp/wrong_input_inplace.py", "affine_backward.dW", "an input modified in place"),
    ("vjp/wrong_jacobian.py", "matmul_backward.dW", "Jacobian materialised"),
]


def _output(result: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    function, label = name.split(".")
    part = next(p for p in result["parts"] if p["function"] == function)
    return part, next(o for o in part["outputs"] if o["name"] == label)


@pytest.mark.parametrize("seed", [7, 2024])
@pytest.mark.parametrize("path,output,mistake", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_mistake_is_named(path: str, output: str, mistake: str, seed: int, assignments: dict[str, Assignment]) -> None:
    aid = path.split("/")[0]
    result = grade_bytes(assignments[aid], (SUBMISSIONS / path).read_bytes(), seed=seed)
    part, out = _output(result, output)
    assert not out["passed"]
    assert out["mistakes"] == [mistake]
    assert f"Recognised mistake: {mistake}" in part["feedback"]


def test_a_mistake_that_spoils_several_outputs_is_explained_once(assignments: dict[str, Assignment]) -> None:
    # A wrong dJ/do makes every later gradient wrong with the same mistake: one explanation,
    # then a pointer back to it, not the same paragraph five times.
    data = (SUBMISSIONS / "mlp/wrong_softmax_no_onehot.py").read_bytes()
    part = grade_bytes(assignments["mlp"], data, seed=7)["parts"][0]
    named = [o["name"] for o in part["outputs"] if o["mistakes"]]
    assert len(named) == 5
    lines = [line.strip() for line in part["feedback"].splitlines() if "Recognised mistake" in line]
    assert len(lines) == 5
    assert sum("subtract 1 at the true class" in line for line in lines) == 1
    assert all(line.endswith(f"(the same as for {named[0]} above).") for line in lines[1:])


CORRECT = sorted(p for aid in BUILTINS for p in (SUBMISSIONS / aid).glob("correct_*.py"))


@pytest.mark.parametrize("seed", [11, 2024])
@pytest.mark.parametrize("path", CORRECT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_correct_submissions_get_no_mistake(path: Path, seed: int, assignments: dict[str, Assignment]) -> None:
    result = grade_bytes(assignments[path.parent.name], path.read_bytes(), seed=seed)
    assert result["score"] == result["max_score"]
    for part in result["parts"]:
        assert "Recognised mistake" not in part["feedback"]
        assert all(o["mistakes"] == [] for o in part["outputs"])


def test_unrelated_errors_are_not_given_a_mistake(assignments: dict[str, Assignment]) -> None:
    # A stray offset in dJ/dW1 is wrong in a way no mutant or relation describes.
    source = (SUBMISSIONS / "mlp" / "correct_plain.py").read_text()
    line = "dW1 = np.outer(dz, x) + lam * W1"
    assert line in source
    wrong = source.replace(line, line + " + 0.01").encode()
    result = grade_bytes(assignments["mlp"], wrong, seed=3)
    assert {o["name"] for p in result["parts"] for o in p["outputs"] if not o["passed"]} == {"W1"}
    assert all(o["mistakes"] == [] for p in result["parts"] for o in p["outputs"])
    assert all("Recognised mistake" not in p["feedback"] for p in result["parts"])


def test_hidden_only_mistake_shows_only_its_name(assignments: dict[str, Assignment]) -> None:
    result = grade_bytes(assignments["vjp"], (SUBMISSIONS / "vjp" / "wrong_jacobian.py").read_bytes(), seed=5)
    part, out = _output(result, "matmul_backward.dW")
    assert out["mistakes"] == ["Jacobian materialised"]
    line = next(line for line in part["feedback"].splitlines() if "Recognised mistake" in line)
    assert line.strip() == "Recognised mistake: Jacobian materialised (on hidden trials only, so no details are shown)."


def _matmul(assignments: dict[str, Assignment]) -> tuple[Any, list[Any]]:
    fn = assignments["vjp"].function("matmul_backward")
    return fn, make_trials(assignments["vjp"], fn, 13)


def test_square_transposed_answer_is_recognised(assignments: dict[str, Assignment]) -> None:
    fn, trials = _matmul(assignments)
    square = [t for t in trials if t.label == "square matrices"]
    assert square and square[0].expected[1].shape[0] == square[0].expected[1].shape[1]
    dW = fn.leaves[1]
    obs = [Observation(t, got=t.expected[1].T.copy()) for t in square]
    mistakes = Recogniser(fn).recognise(dW, obs, passed_trials=len(trials) - 1)
    assert [m.name for m in mistakes] == ["transposed"]
    assert "square" in mistakes[0].message


def test_constant_factor_and_hidden_value(assignments: dict[str, Assignment]) -> None:
    fn, trials = _matmul(assignments)
    dx = fn.leaves[0]
    visible = [t for t in trials if not t.hidden]
    obs = [Observation(t, got=3.0 * t.expected[0]) for t in visible]
    (mistake,) = Recogniser(fn).recognise(dx, obs, passed_trials=0)
    assert mistake.name == "a constant factor" and "(3)" in mistake.message
    # A factor seen only on hidden trials is named, its value is not given.
    hidden = [t for t in trials if t.hidden]
    obs = [Observation(t, got=3.0 * t.expected[0]) for t in hidden]
    (mistake,) = Recogniser(fn).recognise(dx, obs, passed_trials=0)
    assert mistake.name == "a constant factor" and "3" not in mistake.message


def test_a_wrong_answer_explained_on_only_some_trials_gets_no_mistake(assignments: dict[str, Assignment]) -> None:
    fn, trials = _matmul(assignments)
    dx = fn.leaves[0]
    obs = [Observation(t, got=(2.0 if i % 2 else -1.0) * t.expected[0]) for i, t in enumerate(trials[:4])]
    assert Recogniser(fn).recognise(dx, obs, passed_trials=0) == []


def test_a_mutant_that_misses_a_trial_is_not_derived_on_the_others(
    assignments: dict[str, Assignment], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deriving a mutant costs a forward and a backward pass. Checked one trial at a time,
    # a mutant that misses is ruled out at once: only the one that explains the mistake is
    # derived on every failing trial, not every mutant on every trial (6 x 11 here).
    derived: list[str] = []
    real = mistakes.mutant_outputs

    def counting(fn: Any, m: int, trial: Any) -> list[Any]:
        derived.append(fn.name)
        return real(fn, m, trial)

    monkeypatch.setattr(mistakes, "mutant_outputs", counting)
    mlp = assignments["mlp"]
    result = grade_bytes(mlp, (SUBMISSIONS / "mlp" / "wrong_no_reg.py").read_bytes(), seed=3)
    for part, fn in zip(result["parts"], mlp.functions):
        failing = {i for o in part["outputs"] for i in o["failed_trials"]}
        assert len(fn.spec.mutants) >= 6 and len(failing) >= 9
        assert next(o for o in part["outputs"] if o["name"] == "W2")["mistakes"] == ["regularisation term missing"]
        assert derived.count(fn.name) <= len(failing) + len(fn.spec.mutants)


@pytest.mark.parametrize("from_trial", [0, 5])
def test_a_mutant_that_cannot_be_evaluated_does_not_hide_the_others(
    from_trial: int, assignments: dict[str, Assignment], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An instructor's mutant may raise on some trials. It then explains nothing, but the
    # mutant that does explain the mistake is still named, whether the broken one fails on
    # the first trial it is asked about or only on a later one.
    real = mistakes.mutant_outputs
    broken = next(i for i, m in enumerate(assignments["mlp"].functions[0].spec.mutants) if m.name != "regularisation term missing")

    def failing(fn: Any, m: int, trial: Any) -> list[Any]:
        if m == broken and trial.index >= from_trial:
            raise TypeError("this mutant cannot be evaluated here")
        return real(fn, m, trial)

    monkeypatch.setattr(mistakes, "mutant_outputs", failing)
    result = grade_bytes(assignments["mlp"], (SUBMISSIONS / "mlp" / "wrong_no_reg.py").read_bytes(), seed=3)
    outputs = {o["name"]: o["mistakes"] for o in result["parts"][0]["outputs"]}
    assert outputs["W2"] == outputs["W1"] == ["regularisation term missing"]


def test_garbage_output_gets_no_mistake_and_no_crash(assignments: dict[str, Assignment]) -> None:
    fn, trials = _matmul(assignments)
    dx = fn.leaves[0]
    obs = [Observation(t, got=np.full(t.expected[0].shape, np.nan)) for t in trials[:3]]
    assert Recogniser(fn).recognise(dx, obs, passed_trials=0) == []
    obs = [Observation(t, got=np.zeros((1, 2, 3))) for t in trials[:3]]
    assert Recogniser(fn).recognise(dx, obs, passed_trials=0) == []


# --- mutants are data -------------------------------------------------------------------------


TANH_SPEC = """
id: probe
title: probe
version: 1
shapes:
  S: {rank: [1, 2], size: [2, 5]}
inputs:
  x: {shape: S}
functions:
  - name: tanh_backward
    args: [dout, x]
    forward: |
      y = tanh(x)
    upstream: {dout: y}
    returns: {grad: x, name: dx}
    mutants:
      - name: tanh derivative at the output
        message: The derivative of tanh at x is 1 - tanh(x)**2; yours is taken at tanh(x).
        vjp: {tanh: at_output}
      - name: forgot the square
        message: The derivative of tanh is 1 - tanh(x)**2, not 1 - tanh(x).
        forward: |
          y = x - 0.5 * x * x
"""


def test_an_instructors_new_assignment_gets_its_mutants() -> None:
    assignment = parse_spec(yaml.safe_load(TANH_SPEC))
    fn = assignment.functions[0]
    trials = make_trials(assignment, fn, 3)
    recogniser = Recogniser(fn)
    at_output = [Observation(t, got=t.upstream["dout"] * (1 - np.tanh(np.tanh(t.inputs["x"])) ** 2)) for t in trials]
    assert [m.name for m in recogniser.recognise(fn.leaves[0], at_output, 0)] == ["tanh derivative at the output"]
    no_square = [Observation(t, got=t.upstream["dout"] * (1 - t.inputs["x"])) for t in trials]
    assert [m.name for m in Recogniser(fn).recognise(fn.leaves[0], no_square, 0)] == ["forgot the square"]
    # The mutant's answers are derived by the engine, not written down.
    assert np.allclose(derive(fn, trials[0], fn.mutant_programs[1])[0], no_square[0].got)


def _spec_with_mutant(mutant: dict[str, Any]) -> dict[str, Any]:
    data = yaml.safe_load(TANH_SPEC)
    data["functions"][0]["mutants"] = [mutant]
    return data


@pytest.mark.parametrize(
    "mutant,words",
    [
        ({"name": "m", "message": "x", "forward": "y = tanh(x"}, ["mutants[0].forward", "syntax error"]),
        ({"name": "m", "message": "x", "forward": "y = open(x)"}, ["mutants[0].forward", "unknown operation 'open'"]),
        ({"name": "m", "message": "x", "forward": "z = tanh(x)"}, ["mutants[0] (m).forward", "does not define y"]),
        ({"name": "m", "message": "x", "forward": "y = tanh(q)"}, ["mutants[0] (m).forward", "'q'"]),
        ({"name": "m", "message": "x", "vjp": {"tanh": "sideways"}}, ["mutants[0].vjp", "no known-wrong VJP 'sideways'"]),
        ({"name": "m", "message": "x"}, ["mutants[0]", "needs a `forward` definition"]),
        ({"name": "m", "forward": "y = x"}, ["mutants[0].message", "Field required"]),
    ],
)
def test_a_broken_mutant_is_a_clear_spec_error(mutant: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_with_mutant(mutant), source="probe/spec.yaml")
    message = str(info.value)
    assert "tanh_backward" in message
    for word in words:
        assert word in message


def test_builtin_mutants_pass_the_self_test(assignments: dict[str, Assignment]) -> None:
    """A mutant equal to the expected answer would be a spec bug (it could never be named)."""
    for aid in BUILTINS:
        report = self_test(assignments[aid], seeds=(0,))
        assert report.ok and not report.warnings, (aid, report.problems, report.warnings)
        assert any("mutant(s) evaluate and differ" in note for note in report.notes) or aid == "vjp"


def test_self_test_warns_of_a_mutant_that_changes_nothing() -> None:
    # exp is not used by the forward, so swapping its VJP leaves the answers unchanged.
    data = _spec_with_mutant({"name": "no-op", "message": "x", "vjp": {"exp": "at_output"}})
    report = self_test(parse_spec(data), seeds=(0,))
    assert any("mutant 'no-op' fails none" in w and "gives the expected answers on every trial" in w for w in report.warnings)


def test_builtin_specs_still_parse_unchanged_contract() -> None:
    """Mutants are additive: the contract (functions, args, returns, points) is untouched."""
    for aid in BUILTINS:
        data = yaml.safe_load((builtin_dir() / aid / "spec.yaml").read_text())
        stripped = copy.deepcopy(data)
        for fn in stripped["functions"]:
            fn.pop("mutants", None)
        assert parse_spec(stripped).max_score == parse_spec(data).max_score
