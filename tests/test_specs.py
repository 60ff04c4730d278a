"""Spec validation: bad specs fail with an error naming the field; the forward language
only computes; the built-in specs pass their self-test."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from grader.selftest import self_test
from grader.spec import Program, ProgramError, SpecError, builtin_dir, load_folder, parse_spec
from grader.spec.load import LAYER_DIMS

from conftest import BUILTINS, SUBMISSIONS

BASE: dict[str, Any] = {
    "id": "demo",
    "title": "Demo",
    "version": 1,
    "dims": {"N": [2, 6], "D": [2, 6]},
    "inputs": {"x": {"shape": ["N", "D"]}, "W": {"shape": ["D", "N"]}},
    "functions": [
        {
            "name": "f_backward",
            "args": ["dout", "x", "W"],
            "forward": "y = x @ W\n",
            "upstream": {"dout": "y"},
            "returns": {"tuple": [{"grad": "x"}, {"grad": "W"}]},
        }
    ],
}


def spec_with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return data


_DELETE = object()


def test_base_spec_is_valid() -> None:
    assignment = parse_spec(spec_with())
    fn = assignment.function("f_backward")
    assert [leaf.label for leaf in fn.leaves] == ["dx", "dW"]
    assert sum(leaf.points for leaf in fn.leaves) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"id": "Bad Id!"}, ["id"]),
        ({"title": _DELETE}, ["title", "Field required"]),
        ({"functions": []}, ["functions", "at least one"]),
        ({"dims__N": [5, 2]}, ["dims.N", "low <= high"]),
        ({"functions__0__forward": "y = x @@ W"}, ["functions[0] (f_backward).forward", "syntax"]),
        ({"functions__0__forward": "import os"}, ["forward", "Import"]),
        ({"functions__0__forward": "y = open('x')"}, ["forward", "unknown operation 'open'"]),
        ({"functions__0__forward": "y = x.__class__"}, ["forward", "attribute"]),
        ({"functions__0__forward": "y = (lambda: 1)()"}, ["forward"]),
        ({"functions__0__forward": "y = q @ W"}, ["f_backward", "'q'", "before it is defined"]),
        ({"functions__0__forward": "y = sum(x, axis=k)"}, ["forward", "constants"]),
        ({"functions__0__upstream": {"dout": "nope"}}, ["f_backward", "upstream", "never defines"]),
        ({"functions__0__upstream": {}}, ["f_backward", "'dout' is neither an input"]),
        ({"functions__0__upstream": {}, "functions__0__args": ["x", "W"]}, ["f_backward", "upstream` or `objective"]),
        ({"functions__0__args": ["dout", "x", "x"]}, ["args", "repeat"]),
        ({"functions__0__args": ["dout", "x", "V"]}, ["args", "'V'"]),
        ({"functions__0__returns": {"tuple": [{"grad": "x"}, {"grad": "x"}]}}, ["output names repeat", "dx"]),
        ({"functions__0__returns": {"grad": "x", "value": "y"}}, ["returns"]),
        ({"functions__0__returns": {"tuple": [{"grad": "x", "points": 3}, {"grad": "W"}]}}, ["points", "more than"]),
        ({"functions__0__points": -1}, ["points"]),
        ({"functions__0__returns": {"dict": {}}}, ["dict", "at least one key"]),
        ({"inputs__x__shape": ["N", "Z"]}, ["inputs.x.shape", "unknown dimension 'Z'"]),
        ({"inputs__x__shape": "S"}, ["inputs.x.shape", "'S'"]),
        ({"inputs__x__type": "int"}, ["range"]),
        ({"inputs__x__dist": {"uniform": [1, 0]}}, ["uniform", "low < high"]),
        ({"inputs__x__dist": {"gamma": 1}}, ["gamma"]),
        ({"trials": {"random": 2, "hidden": 3}}, ["trials", "hidden"]),
        ({"trials": {"random": 0}}, ["at least one trial"]),
        ({"trials": {"random": 2, "cases": [{"label": "c", "dims": {"Q": 1}}]}}, ["unknown dimension 'Q'"]),
        ({"limits": {"wall_seconds": 0}}, ["limits.wall_seconds"]),
        ({"tolerance": {"rtol": "tight"}}, ["tolerance.rtol"]),
        ({"functions__0__constraints": [{"expr": "y +", "margin": 0.1}]}, ["constraints", "cannot parse"]),
        ({"functions__0__constraints": [{"expr": "z", "margin": 0.1}]}, ["constraints", "undefined", "z"]),
        ({"surprise": 1}, ["surprise", "Extra inputs"]),
    ],
)
def test_bad_spec_names_the_field(changes: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(**changes), source="demo/spec.yaml")
    message = str(info.value)
    assert "demo/spec.yaml" in message
    for word in words:
        assert word in message, message


def test_dimension_and_value_names_cannot_clash() -> None:
    data = spec_with(**{"functions__0__forward": "N = x @ W\ny = N"})
    with pytest.raises(SpecError, match="both as a dimension and as a value"):
        parse_spec(data)


def test_layer_dims_only_inside_layers_inputs() -> None:
    assert "n_in" in LAYER_DIMS
    data = spec_with(**{"inputs__x__shape": ["n_in", "D"]})
    with pytest.raises(SpecError, match="n_in"):
        parse_spec(data)


def test_load_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no spec.yaml"):
        load_folder(tmp_path)
    (tmp_path / "spec.yaml").write_text("id: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_folder(tmp_path)
    (tmp_path / "spec.yaml").write_bytes(b"\xff\xfe bad")
    with pytest.raises(SpecError, match="UTF-8"):
        load_folder(tmp_path)
    (tmp_path / "spec.yaml").write_text("- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_folder(tmp_path)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(BASE))
    with pytest.raises(SpecError, match="handout.*missing"):
        load_folder(tmp_path)
    (tmp_path / "handout.md").write_text("# Demo")
    (tmp_path / "starter.py").write_text("def f_backward(dout, x, W):\n    raise NotImplementedError\n")
    assert load_folder(tmp_path).id == "demo"


def test_spec_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    data = spec_with(handout="../../etc/passwd")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "starter.py").write_text("")
    with pytest.raises(SpecError, match="handout"):
        load_folder(tmp_path)


class TestForwardLanguage:
    def test_evaluates_loops_lists_and_ops(self) -> None:
        from grader.engine import Tensor

        program = Program.parse(
            "a = x\nfor l in range(len(ws)):\n    a = sigmoid(ws[l] @ a)\nout = -sum(a, axis=0) / 2 + a.T @ a"
        )
        env = program.run({"x": Tensor([[1.0], [2.0]]), "ws": [Tensor([[1.0, 0.0], [0.0, 1.0]])] * 3})
        assert env["out"].shape == (1, 1)

    @pytest.mark.parametrize(
        "source",
        [
            "import os",
            "x = __import__('os')",
            "x = y.__dict__",
            "x = [1, 2]",
            "x = y if y else z",
            "x, y = 1, 2",
            "while True:\n    x = 1",
            "def f():\n    pass",
            "x = y[1:2]",
            "x = 'text'",
            "x = y < z",
            "for i in items:\n    x = i",
            "relu = 1",
            "x = exp(y, base=2)",
            "",
        ],
    )
    def test_rejects_anything_but_computation(self, source: str) -> None:
        with pytest.raises(ProgramError):
            Program.parse(source)

    def test_runtime_errors_name_the_line(self) -> None:
        from grader.engine import Tensor

        program = Program.parse("a = x\nb = ws[5]\n")
        with pytest.raises(ProgramError, match="line 2.*out of range"):
            program.run({"x": Tensor(1.0), "ws": [Tensor(1.0)]})
        program = Program.parse("a = x @ y\n")
        with pytest.raises(ProgramError, match="line 1"):
            program.run({"x": Tensor([1.0, 2.0]), "y": Tensor([1.0, 2.0, 3.0])})

    def test_loops_are_bounded(self) -> None:
        program = Program.parse("a = 0\nfor i in range(10**9):\n    a = a + 1\n")
        with pytest.raises(ProgramError, match="exceeds"):
            program.run({})

    # What each kind of node does at run time, error text and line included, recorded from
    # the tree-walking interpreter that the compiled closures replaced.
    @pytest.mark.parametrize(
        "source, outcome",
        [
            ("y = q", ("ProgramError", 1, "line 1: name 'q' is not defined")),
            ("a = x\nb = (a +\n  exp(big))", ("ProgramError", 3, "line 3: exp(): overflow encountered in exp")),
            ("y = x @ 2", ("ProgramError", 1, "line 1: matmul: operands must have at least one dimension (use * for scalars)")),
            ("y = 2 @ 3", ("ProgramError", 1, "line 1: matmul: operands must have at least one dimension (use * for scalars)")),
            ("y = x // 2", ("ProgramError", 1, "line 1: // and % are for integer index arithmetic only")),
            ("y = n // 2 + n % 2", ("int", 2)),
            ("y = ws + 1", ("ProgramError", 1, "line 1: arithmetic on a whole list; index it first, e.g. weights[l]")),
            ("y = ws * x", ("ProgramError", 1, "line 1: arithmetic on a whole list; index it first, e.g. weights[l]")),
            ("y = len(x)", ("ProgramError", 1, "line 1: len() takes a list input")),
            ("y = len(ws) + n", ("int", 5)),
            ("y = ws[5]", ("ProgramError", 1, "line 1: index 5 is out of range for a list of 2")),
            ("y = x[0]", ("ProgramError", 1, "line 1: only list inputs can be indexed")),
            ("y = ws[f]", ("ProgramError", 1, "line 1: a list index must be an integer")),
            ("y = ws[-3]", ("ProgramError", 1, "line 1: index -3 is out of range for a list of 2")),
            ("y = ws[-2] + ws[n - 2]", ("ndarray", [2.0, 2.0])),
            ("y = n.T", ("ProgramError", 1, "line 1: .T needs an array")),
            ("y = x.T + s.T", ("ndarray", [3.0, 4.0])),
            ("y = -ws", ("ProgramError", 1, "line 1: bad operand type for unary -: 'list'")),
            ("y = -x + +s - -n", ("ndarray", [4.0, 3.0])),
            ("for i in range(f):\n  y = x", ("ProgramError", 1, "line 1: range() needs integer bounds")),
            ("for i in range(0, 5, 0):\n  y = x", ("ValueError", "range() arg 3 must not be zero")),
            ("for i in range(n, 0, -1):\n  y = ws[i - 2] * i", ("ndarray", [1.0, 1.0])),
            ("y = 1 / 0", ("ProgramError", 1, "line 1: division by zero")),
            ("y = n / 0.0", ("ProgramError", 1, "line 1: float division by zero")),
            ("y = sum(x, axis=5)", ("ProgramError", 1, "line 1: axis 5 is out of bounds for array of dimension 1")),
            ("y = sum(ws[0], axis=0, keepdims=True) + mean(x, axis=-1)", ("ndarray", [3.5])),
            ("y = softmax_cross_entropy(x, 1.5)", ("ProgramError", 1, "line 1: softmax_cross_entropy: labels must be integers, got float64")),
            ("y = softmax_cross_entropy(x, 5)", ("ProgramError", 1, "line 1: softmax_cross_entropy: labels must lie in [0, 2)")),
            ("y = softmax_cross_entropy(x, n - 2)", ("ndarray", 0.31326168751822286)),
            ("y = reshape(x, (7,))", ("ProgramError", 1, "line 1: cannot reshape array of size 2 into shape (7,)")),
            ("y = reshape(x, (1, 2))", ("ndarray", [[1.0, 2.0]])),
            ("y = 2.0 ** 10000.0", ("OverflowError", "(34, 'Numerical result out of range')")),
            ("y = log(x - 1)", ("ProgramError", 1, "line 1: log(): divide by zero encountered in log")),
            ("y = sqrt(-x)", ("ProgramError", 1, "line 1: sqrt(): invalid value encountered in sqrt")),
            ("y = x / (x - x)", ("ProgramError", 1, "line 1: div(): divide by zero encountered in divide")),
            ("y = 1\nfor i in range(3):\n  for j in range(i):\n    y = y * 2 + j", ("int", 9)),
        ],
    )
    def test_run_outcomes_are_pinned(self, source: str, outcome: tuple[Any, ...]) -> None:
        import numpy as np

        from grader.engine import Tensor

        env = {
            "x": Tensor(np.array([1.0, 2.0])),
            "big": Tensor(np.array([1.0, 1000.0])),
            "s": Tensor(2.0),
            "ws": [Tensor(np.ones(2)), Tensor(np.ones(2))],
            "n": 3,
            "f": 0.5,
        }
        before = np.geterr()
        try:
            out = Program.parse(source).run(env)
        except ProgramError as exc:
            got: tuple[Any, ...] = ("ProgramError", exc.line, str(exc))
        except (ValueError, OverflowError) as exc:
            got = (type(exc).__name__, str(exc))
        else:
            value = out["y"] if "y" in out else out["b"]
            value = value.value if isinstance(value, Tensor) else value
            got = (type(value).__name__, np.asarray(value).tolist())
        assert got == outcome
        # Ops raise on floating-point errors only inside; the caller's settings come back.
        assert np.geterr() == before

    def test_constraint_expressions_evaluate_with_the_same_rules(self) -> None:
        import numpy as np

        from grader.engine import Tensor
        from grader.spec.program import parse_expression

        program = Program.parse("z = x * 2\n")
        _, expr = parse_expression("z - 1")
        env = program.run({"x": Tensor(np.array([1.0, 3.0]))})
        assert program.evaluate(expr, env).value.tolist() == [1.0, 5.0]
        assert program.evaluate(expr, {"z": Tensor(np.array([4.0]))}).value.tolist() == [3.0]
        _, bad = parse_expression("exp(z)")
        with pytest.raises(ProgramError, match="line 1: exp\\(\\): overflow"):
            program.evaluate(bad, {"z": Tensor(np.array([1000.0]))})


@pytest.mark.parametrize("assignment_id", BUILTINS)
def test_builtin_self_test(assignment_id: str) -> None:
    from grader.spec import load_builtin

    assignment = load_builtin(assignment_id)
    solution = sorted((SUBMISSIONS / assignment_id).glob("correct_*.py"))[0]
    report = self_test(assignment, seeds=(0, 1), solution=solution.read_bytes())
    assert report.ok, report.problems
    assert any("match finite differences" in n for n in report.notes)


def test_self_test_catches_a_wrong_reference_solution() -> None:
    from grader.spec import load_builtin

    assignment = load_builtin("vjp")
    bad = (SUBMISSIONS / "vjp" / "wrong_factor_two.py").read_bytes()
    report = self_test(assignment, seeds=(0,), solution=bad)
    assert not report.ok
    assert "matmul_backward" in "\n".join(report.problems)


def test_self_test_catches_a_starter_with_wrong_signature(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(builtin_dir() / "vjp", tmp_path / "vjp")
    starter = tmp_path / "vjp" / "starter.py"
    starter.write_text(starter.read_text().replace("def matmul_backward(dout, x, W)", "def matmul_backward(x, W, dout)"))
    report = self_test(load_folder(tmp_path / "vjp"), seeds=(0,))
    assert any("matmul_backward" in p and "does not match" in p for p in report.problems)


def test_self_test_reports_an_unsatisfiable_constraint() -> None:
    data = spec_with(
        **{"functions__0__constraints": [{"expr": "x @ W", "away_from": 0, "margin": 100.0}]}
    )
    report = self_test(parse_spec(data), seeds=(0,))
    assert any("constraint" in p and "still fails" in p for p in report.problems)
