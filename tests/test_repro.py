"""Reproducible failing trials (`grader/repro.py`): the .npz of a visible trial, the script
that runs a student's file on it with NumPy alone, and the refusal of hidden trials."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from grader import repro
from grader.spec import Assignment
from grader.trials import make_trials, plan

SUBMISSIONS = Path(__file__).parent / "submissions"
SEED = 424242


def visible(assignment: Assignment, function: str) -> list[int]:
    return [i for i, p in enumerate(plan(assignment.function(function))) if not p.hidden]


def load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def unpack(assignment: Assignment, function: str, indices: list[int], folder: Path, module: str = "submission.py") -> Path:
    data = repro.bundle(assignment, function, SEED, indices, module=module).zip_bytes(f"{assignment.id}-{function}")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(folder)
    return folder / f"{assignment.id}-{function}" / repro.script_name(function)


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment apart from what finds NumPy: the script must not need the grader.
    return subprocess.run(
        [sys.executable, "-I", str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return type(a) is type(b) and a == b


# --- regenerating ------------------------------------------------------------------------


@pytest.mark.parametrize("aid", ["gates", "mlp", "bp4", "vjp"])
def test_a_regenerated_trial_is_the_graded_one_bit_for_bit(assignments, aid):
    spec = assignments[aid]
    for fn in spec.functions[:2]:
        graded = make_trials(spec, fn, SEED)
        for index in visible(spec, fn.name):
            again = repro.regenerate(spec, fn.name, SEED, index)
            assert same(again.args, graded[index].args), (fn.name, index)
            assert same(again.expected, graded[index].expected), (fn.name, index)
        # Another seed draws other inputs: the seed really is what determines the trial.
        other = repro.regenerate(spec, fn.name, SEED + 1, 0)
        assert not same(other.args, graded[0].args)


def test_hidden_out_of_range_and_unknown_trials_are_refused(assignments):
    vjp = assignments["vjp"]
    plans = plan(vjp.function("matmul_backward"))
    hidden = [i for i, p in enumerate(plans) if p.hidden]
    assert hidden
    for index in hidden:
        with pytest.raises(repro.HiddenTrial):
            repro.regenerate(vjp, "matmul_backward", SEED, index)
        with pytest.raises(repro.HiddenTrial):
            repro.inputs_npz(vjp, "matmul_backward", SEED, index)
        with pytest.raises(repro.HiddenTrial):
            repro.bundle(vjp, "matmul_backward", SEED, [0, index])
    for index in (-1, len(plans), True, 1.0):
        with pytest.raises(repro.TrialOutOfRange):
            repro.regenerate(vjp, "matmul_backward", SEED, index)  # type: ignore[arg-type]
    with pytest.raises(repro.UnknownFunction, match="relu_backward, matmul_backward"):
        repro.regenerate(vjp, "nope", SEED, 0)
    with pytest.raises(repro.ReproError, match="no trials"):
        repro.bundle(vjp, "matmul_backward", SEED, [])


# --- the .npz ----------------------------------------------------------------------------


def test_npz_holds_arguments_and_expected_outputs_by_name(assignments):
    vjp = assignments["vjp"]
    trial = repro.regenerate(vjp, "matmul_backward", SEED, 0)
    arrays = load(repro.inputs_npz(vjp, "matmul_backward", SEED, 0))
    assert set(arrays) == {"dout", "x", "W", "expected__dx", "expected__dW"}
    for name, value in zip(["dout", "x", "W"], trial.args):
        assert same(arrays[name], value)
    assert same(arrays["expected__dx"], trial.expected[0]) and same(arrays["expected__dW"], trial.expected[1])


def test_npz_stores_layer_lists_as_numbered_arrays(assignments):
    bp4 = assignments["bp4"]
    trial = repro.regenerate(bp4, "backprop", SEED, 0)
    arrays = load(repro.inputs_npz(bp4, "backprop", SEED, 0))
    layers = len(trial.args[0])
    assert layers >= 1
    assert {f"weights__{i}" for i in range(layers)} <= set(arrays)
    assert f"weights__{layers}" not in arrays
    for i in range(layers):
        assert same(arrays[f"weights__{i}"], trial.args[0][i])
        assert same(arrays[f"expected__nabla_w__{i}"], trial.expected[1][i])
    assert not any(k == "weights" or k == "expected__nabla_w" for k in arrays)


def test_npz_stores_numbers_as_0d_arrays(assignments):
    mlp = assignments["mlp"]
    trial = repro.regenerate(mlp, "mlp_backward", SEED, 0)
    arrays = load(repro.inputs_npz(mlp, "mlp_backward", SEED, 0))
    y, lam = trial.args[1], trial.args[4]
    assert type(y) is int and type(lam) is float
    assert arrays["y"].shape == () and arrays["y"].dtype == np.int64 and int(arrays["y"]) == y
    assert arrays["lam"].shape == () and arrays["lam"].dtype == np.float64 and float(arrays["lam"]) == lam
    assert set(arrays) >= {f"expected__{k}" for k in ("o", "h", "z", "W2", "W1")}


def test_nothing_in_a_download_needs_pickle_or_carries_the_seed(assignments):
    for aid, function in (("bp4", "minibatch_backprop"), ("mlp", "mlp_bias_backward"), ("gates", "circuit")):
        spec = assignments[aid]
        files = repro.bundle(spec, function, SEED, visible(spec, function)).files
        for name, data in files.items():
            assert str(SEED).encode() not in data, name
            if name.endswith(".npz"):
                assert all(a.dtype.kind in "iuf" for a in load(data).values())
                assert not any("seed" in k for k in load(data))


# --- the script --------------------------------------------------------------------------


def test_script_passes_a_correct_file_and_fails_a_wrong_one_naming_the_output(assignments, tmp_path):
    vjp = assignments["vjp"]
    script = unpack(vjp, "matmul_backward", [0, 1, 2], tmp_path, module="mine.py")
    (tmp_path / "mine.py").write_bytes((SUBMISSIONS / "vjp" / "wrong_transposed_dW.py").read_bytes())
    wrong = run(script, cwd=tmp_path)  # the default file, found in the working directory
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "dx: OK" in wrong.stdout
    assert "dW: shape mismatch" in wrong.stdout and "transposed" in wrong.stdout
    assert "3 of 3 trial(s) do not match" in wrong.stdout

    right = run(script, str(SUBMISSIONS / "vjp" / "correct_plain.py"), cwd=tmp_path)
    assert right.returncode == 0, right.stdout + right.stderr
    assert right.stdout.count("dW: OK") == 3 and "All 3 trial(s) match" in right.stdout


def test_script_reports_wrong_values_with_the_largest_error(assignments, tmp_path):
    vjp = assignments["vjp"]
    script = unpack(vjp, "matmul_backward", [0], tmp_path)
    out = run(script, str(SUBMISSIONS / "vjp" / "wrong_factor_two.py"), cwd=tmp_path)
    assert out.returncode == 1
    assert "dx: WRONG: max abs error" in out.stdout and "dW: OK" in out.stdout


def test_script_uses_the_graders_tolerance(assignments, tmp_path):
    vjp = assignments["vjp"]
    script = unpack(vjp, "relu_backward", [0], tmp_path)
    tol = vjp.spec.tolerance
    assert f"RTOL, ATOL = {tol.rtol!r}, {tol.atol!r}" in script.read_text()
    # Off by a relative 1e-9: inside rtol 1e-7, so it passes; off by 1e-5 it does not.
    for factor, code in ((1 + 1e-9, 0), (1 + 1e-5, 1)):
        (tmp_path / "near.py").write_text(
            "import numpy as np\n\ndef relu_backward(dout, x):\n"
            f"    return dout * (x > 0) * {factor!r}\n"
        )
        out = run(script, "near.py", cwd=tmp_path)
        assert out.returncode == code, out.stdout


def test_script_rebuilds_layer_lists(assignments, tmp_path):
    bp4 = assignments["bp4"]
    indices = visible(bp4, "minibatch_backprop")
    script = unpack(bp4, "minibatch_backprop", indices, tmp_path)
    right = run(script, str(SUBMISSIONS / "bp4" / "correct_vectorised.py"), cwd=tmp_path)
    assert right.returncode == 0, right.stdout + right.stderr
    assert f"All {len(indices)} trial(s) match" in right.stdout
    wrong = run(script, str(SUBMISSIONS / "bp4" / "wrong_sum_not_mean.py"), cwd=tmp_path)
    assert wrong.returncode == 1
    assert "nabla_b: [0] WRONG" in wrong.stdout and "nabla_w: [0] WRONG" in wrong.stdout


def test_script_walks_a_returned_dict_and_converts_numbers_back(assignments, tmp_path):
    mlp = assignments["mlp"]
    script = unpack(mlp, "mlp_backward", [0, 1], tmp_path)
    right = run(script, str(SUBMISSIONS / "mlp" / "correct_plain.py"), cwd=tmp_path)
    assert right.returncode == 0, right.stdout + right.stderr
    assert "y = " in right.stdout and "lam = " in right.stdout  # the numbers are shown as numbers
    wrong = run(script, str(SUBMISSIONS / "mlp" / "wrong_no_reg.py"), cwd=tmp_path)
    assert wrong.returncode == 1
    for ok in ("o", "h", "z"):
        assert f"  {ok}: OK" in wrong.stdout
    assert "  W2: WRONG" in wrong.stdout and "  W1: WRONG" in wrong.stdout
    (tmp_path / "nokey.py").write_text("def mlp_backward(x, y, W1, W2, lam):\n    return {'o': 0}\n")
    missing = run(script, "nokey.py", cwd=tmp_path)
    assert missing.returncode == 1 and "h: MISSING: the returned dict has no key 'h'" in missing.stdout


def test_script_walks_nested_tuples_and_0d_arrays(assignments, tmp_path):
    gates = assignments["gates"]
    plans = plan(gates.function("circuit"))
    scalar = next(i for i, p in enumerate(plans) if p.label == "0-d scalars")
    assert repro.regenerate(gates, "circuit", SEED, scalar).args[0].shape == ()
    script = unpack(gates, "circuit", [0, scalar], tmp_path)
    right = run(script, str(SUBMISSIONS / "gates" / "correct_plain.py"), cwd=tmp_path)
    assert right.returncode == 0, right.stdout + right.stderr
    assert "w0 ()" in right.stdout  # 0-d arrays reach the function as arrays, not floats
    wrong = run(script, str(SUBMISSIONS / "gates" / "wrong_sign.py"), cwd=tmp_path)
    assert wrong.returncode == 1
    assert "  L: OK" in wrong.stdout and "  dw0: WRONG" in wrong.stdout and "  dx0: OK" in wrong.stdout


def test_script_accepts_float32_with_the_float32_tolerance(assignments, tmp_path):
    gates = assignments["gates"]
    script = unpack(gates, "add_backward", [0], tmp_path)
    out = run(script, str(SUBMISSIONS / "gates" / "correct_float32.py"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout
    assert "float32 tolerance" in out.stdout


def test_script_reports_inputs_modified_in_place(assignments, tmp_path):
    vjp = assignments["vjp"]
    script = unpack(vjp, "affine_backward", [0], tmp_path)
    out = run(script, str(SUBMISSIONS / "vjp" / "wrong_input_inplace.py"), cwd=tmp_path)
    assert out.returncode == 1 and "MODIFIED INPUT" in out.stdout


def test_script_explains_what_it_cannot_run(assignments, tmp_path):
    vjp = assignments["vjp"]
    script = unpack(vjp, "relu_backward", [0], tmp_path)
    nofile = run(script, cwd=tmp_path)
    assert nofile.returncode == 2 and "Cannot find submission.py" in nofile.stdout
    (tmp_path / "other.py").write_text("def something_else():\n    pass\n")
    nofn = run(script, "other.py", cwd=tmp_path)
    assert nofn.returncode == 2 and "does not define a function named relu_backward" in nofn.stdout
    (tmp_path / "broken.py").write_text("def relu_backward(dout, x)\n    return dout\n")
    broken = run(script, "broken.py", cwd=tmp_path)
    assert broken.returncode == 2 and "SyntaxError" in broken.stdout
    (tmp_path / "raises.py").write_text("def relu_backward(dout, x):\n    raise ValueError('mine')\n")
    raises = run(script, "raises.py", cwd=tmp_path)
    assert raises.returncode == 1 and "ValueError: mine" in raises.stdout


# --- which trials, which file ------------------------------------------------------------


def test_failing_visible_lists_only_failed_visible_trials():
    result = {
        "status": "graded",
        "parts": [
            {
                "function": "f",
                "trials": [
                    {"index": 0, "hidden": False, "status": "passed"},
                    {"index": 1, "hidden": False, "status": "failed"},
                    {"index": 2, "hidden": False, "status": "timeout"},
                    {"index": 3, "hidden": True, "status": "failed"},
                    {"index": "4", "hidden": False, "status": "failed"},
                    {"index": 5, "status": "failed"},
                ],
            },
            {"function": "g", "trials": [{"index": 0, "hidden": False, "status": "passed"}]},
            "junk",
        ],
    }
    assert repro.failing_visible(result) == {"f": [1, 2]}
    assert repro.failing_visible({**result, "status": "error"}) == {}
    assert repro.failing_visible(None) == {}


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("my_vjp.py", "my_vjp.py"),
        ("C:\\Users\\me\\hw-2.py", "hw-2.py"),
        ("dir/sub/vjp.py", "vjp.py"),
        ("hw 2 (1).py", "submission.py"),
        ("x.py'; import os; '.py", "submission.py"),
        ("notes.txt", "submission.py"),
        ("", "submission.py"),
        (None, "submission.py"),
    ],
)
def test_the_default_file_is_the_submitted_name_when_plain(filename, expected):
    assert repro.module_file(filename) == expected


def test_the_same_trials_download_as_the_same_bytes(assignments):
    vjp = assignments["vjp"]
    first = repro.bundle(vjp, "relu_backward", SEED, [0, 1]).zip_bytes("x")
    assert first == repro.bundle(vjp, "relu_backward", SEED, [0, 1]).zip_bytes("x")


def test_text_from_the_spec_or_the_student_stays_inert_in_the_script(assignments):
    import ast
    import dataclasses

    vjp = assignments["vjp"]
    odd = dataclasses.replace(vjp, spec=vjp.spec.model_copy(update={"version": 'v1"""\nimport os  #'}))
    module = 'mine"""\nimport os\n\'.py'
    trial = repro.regenerate(odd, "relu_backward", SEED, 0)
    shape = repro.layout(odd.function("relu_backward"), [trial])
    text = repro.script(odd, "relu_backward", shape, {0: 'a label """ with \\n quotes\''}, module)
    tree = ast.parse(text)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    # The script imports os once itself; the docstring did not end early to import it again.
    assert [alias.name for n in imports for alias in n.names].count("os") == 1
    assigned = {
        n.targets[0].id: ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
    }
    assert assigned["DEFAULT_FILE"] == module and assigned["ASSIGNMENT_VERSION"] == 'v1"""\nimport os  #'
    assert assigned["LABELS"] == {0: 'a label """ with \\n quotes\''}
    assert isinstance(tree.body[0], ast.Expr) and '"""' not in tree.body[0].value.value


def test_a_download_larger_than_the_cap_is_refused(assignments, monkeypatch):
    vjp = assignments["vjp"]
    monkeypatch.setattr(repro, "MAX_DOWNLOAD_BYTES", 100)
    with pytest.raises(repro.ReproError, match="larger than"):
        repro.bundle(vjp, "matmul_backward", SEED, [0, 1])


def test_script_names_the_worst_entry_as_the_grader_does(assignments, tmp_path):
    # Ties for the largest difference (a transposed answer has them in pairs) go to the
    # first entry, in the grader's feedback and in the script alike, whatever the last bit
    # of the reference on the student's machine.
    from grader.compare import check_array as graders_check
    from grader.runner.protocol import Returned
    from grader.spec.model import Tolerance

    script = unpack(assignments["vjp"], "matmul_backward", visible(assignments["vjp"], "matmul_backward")[:1], tmp_path)
    namespace: dict[str, Any] = {"__name__": "repro_under_test"}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    expected = np.array([[1.0, 2.0], [3.0, 4.0]])
    for nudge in (0.0, 1e-15, -1e-15):
        bent = expected.copy()
        bent[1, 0] += nudge
        ok, text = namespace["check_array"](bent, expected.T.copy())
        assert not ok and "worst at index (0, 1): expected 2, got 3" in text, text
        assert "at index (0, 1)" in graders_check("dx", bent, Returned(expected.T.copy(), "array"), Tolerance(), False).message
