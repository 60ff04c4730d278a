"""Mistake recognition over the whole fixture corpus and over the issue's list of mistakes:
every wrong file is told the one mistake it makes on every output it gets wrong (and on no
other), each listed mistake is named on a submission that makes it, and the engine's
known-wrong VJPs compute exactly the mistake they stand for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from grader.engine import OPS, Tensor, apply, backward
from grader.engine.ops import VJP_VARIANTS
from grader.grade import grade_bytes
from grader.spec import Assignment

from conftest import BUILTINS, SUBMISSIONS

# Every wrong file in the corpus, with the mistake it makes. Each output its `# expect-fail:`
# line lists must be told exactly this mistake.
WRONG: dict[str, str] = {
    "vjp/wrong_db_mean.py": "averaged over N instead of summed, or averaged twice",
    "vjp/wrong_db_not_summed.py": "not summed over the batch",
    "vjp/wrong_factor_two.py": "a factor of 2",
    "vjp/wrong_half_dx.py": "a factor of 1/2",
    "vjp/wrong_ignores_upstream.py": "upstream gradient ignored",
    "vjp/wrong_input_inplace.py": "an input modified in place",
    "vjp/wrong_jacobian.py": "Jacobian materialised",
    "vjp/wrong_relu_inplace.py": "the upstream gradient modified in place",
    "vjp/wrong_transposed_dW.py": "transposed",
    "vjp/wrong_transposed_square.py": "transposed",
    "gates/wrong_circuit_mul_no_swap.py": "multiply gate not swapped",
    "gates/wrong_copy_average.py": "copy gate averages",
    "gates/wrong_ignores_upstream.py": "upstream gradient ignored",
    "gates/wrong_max_routes_both.py": "max gate routes to both inputs",
    "gates/wrong_mul_no_swap.py": "multiply gate not swapped",
    "gates/wrong_sigmoid_at_input.py": "sigmoid derivative at the wrong point",
    "gates/wrong_sign.py": "sign error",
    "mlp/wrong_bias_regularised.py": "bias regularised",
    "mlp/wrong_dW2_uses_z.py": "dW2 taken with z instead of h",
    "mlp/wrong_double_reg.py": "regularisation gradient doubled",
    "mlp/wrong_half_reg.py": "regularisation gradient halved",
    "mlp/wrong_no_reg.py": "regularisation term missing",
    "mlp/wrong_no_relu_mask.py": "ReLU mask missing",
    "mlp/wrong_softmax_no_onehot.py": "softmax gradient without the one-hot",
    "bp4/wrong_mean_twice.py": "averaged over m instead of summed, or averaged twice",
    "bp4/wrong_no_bias_in_forward.py": "bias missing from the forward pass",
    "bp4/wrong_sigmoid_prime_of_a.py": "sigmoid derivative at the wrong point",
    "bp4/wrong_sigmoid_prime_output_layer.py": "sigmoid derivative at the wrong point (output layer)",
    "bp4/wrong_sigmoid_twice.py": "sigmoid derivative at the wrong point",
    "bp4/wrong_sum_not_mean.py": "summed instead of averaged over m",
}

EXPECT = re.compile(rb"^# expect-fail:(.*)$", re.M)


def _expected_failures(path: Path) -> set[str]:
    match = EXPECT.match(path.read_bytes())
    assert match, f"{path} lacks an expect-fail line"
    return set(match.group(1).decode().split())


def _grade(assignments: dict[str, Assignment], relpath: str, seed: int) -> dict[str, Any]:
    aid = relpath.split("/")[0]
    return grade_bytes(assignments[aid], (SUBMISSIONS / relpath).read_bytes(), seed=seed)


def _output(result: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    function, label = name.split(".")
    part = next(p for p in result["parts"] if p["function"] == function)
    return part, next(o for o in part["outputs"] if o["name"] == label)


def test_table_names_every_wrong_file() -> None:
    on_disk = {f"{aid}/{p.name}" for aid in BUILTINS for p in (SUBMISSIONS / aid).glob("wrong_*.py")}
    assert on_disk == set(WRONG), (
        f"wrong files without an expected mistake: {sorted(on_disk - set(WRONG))}; "
        f"table entries without a file: {sorted(set(WRONG) - on_disk)}"
    )


@pytest.mark.parametrize("seed", [7, 2024])
@pytest.mark.parametrize("relpath", sorted(WRONG))
def test_wrong_file_gets_its_mistake(relpath: str, seed: int, assignments: dict[str, Assignment]) -> None:
    mistake = WRONG[relpath]
    failing = _expected_failures(SUBMISSIONS / relpath)
    result = _grade(assignments, relpath, seed)
    for part in result["parts"]:
        for out in part["outputs"]:
            name = f"{part['function']}.{out['name']}"
            if name in failing:
                assert not out["passed"], name
                assert out["mistakes"] == [mistake], name
            else:
                assert out["passed"] and out["mistakes"] == [], name
        if any(f"{part['function']}.{o['name']}" in failing for o in part["outputs"]):
            assert f"Recognised mistake: {mistake}" in part["feedback"]
        else:
            assert "Recognised mistake" not in part["feedback"]


# The list: each mistake, a corpus submission that makes it, an output it gets
# wrong and the name it must be given there.
LISTED = [
    ("transposed, a shape that is the transpose", "vjp/wrong_transposed_dW.py", "affine_backward.dW", "transposed"),
    ("transposed, square case", "vjp/wrong_transposed_square.py", "matmul_backward.dW", "transposed"),
    ("bias gradient not summed over the batch", "vjp/wrong_db_not_summed.py", "affine_backward.db", "not summed over the batch"),
    ("bias gradient averaged instead of summed", "vjp/wrong_db_mean.py", "affine_backward.db", "averaged over N instead of summed, or averaged twice"),
    ("mini-batch gradient summed instead of averaged", "bp4/wrong_sum_not_mean.py", "minibatch_backprop.nabla_w", "summed instead of averaged over m"),
    ("mini-batch gradient averaged twice", "bp4/wrong_mean_twice.py", "minibatch_backprop.nabla_b", "averaged over m instead of summed, or averaged twice"),
    ("constant factor 2", "vjp/wrong_factor_two.py", "matmul_backward.dx", "a factor of 2"),
    ("constant factor 1/2", "vjp/wrong_half_dx.py", "matmul_backward.dx", "a factor of 1/2"),
    ("constant factor -1, a sign error", "gates/wrong_sign.py", "circuit.dw2", "sign error"),
    ("regularisation term missing", "mlp/wrong_no_reg.py", "mlp_backward.W2", "regularisation term missing"),
    ("regularisation halved", "mlp/wrong_half_reg.py", "mlp_bias_backward.W1", "regularisation gradient halved"),
    ("regularisation doubled", "mlp/wrong_double_reg.py", "mlp_backward.W1", "regularisation gradient doubled"),
    ("regularisation applied to the bias", "mlp/wrong_bias_regularised.py", "mlp_bias_backward.b1", "bias regularised"),
    ("sigmoid'(a) instead of sigmoid'(z)", "bp4/wrong_sigmoid_prime_of_a.py", "backprop.nabla_w", "sigmoid derivative at the wrong point"),
    ("the sigmoid applied twice", "bp4/wrong_sigmoid_twice.py", "minibatch_backprop.nabla_w", "sigmoid derivative at the wrong point"),
    ("sigmoid applied twice in a gate", "gates/wrong_sigmoid_at_input.py", "sigmoid_backward.dx", "sigmoid derivative at the wrong point"),
    ("multiply gate not swapping", "gates/wrong_mul_no_swap.py", "mul_backward.dx", "multiply gate not swapped"),
    ("multiply gate not swapping, inside a circuit", "gates/wrong_circuit_mul_no_swap.py", "circuit.dx0", "multiply gate not swapped"),
    ("max gate routing to both inputs", "gates/wrong_max_routes_both.py", "max_backward.dy", "max gate routes to both inputs"),
    ("copy gate averaging", "gates/wrong_copy_average.py", "copy_backward.dt", "copy gate averages"),
    ("upstream gradient ignored", "vjp/wrong_ignores_upstream.py", "relu_backward.dx", "upstream gradient ignored"),
    ("upstream gradient ignored, inside a circuit", "gates/wrong_ignores_upstream.py", "circuit.dw2", "upstream gradient ignored"),
    ("upstream gradient modified in place", "vjp/wrong_relu_inplace.py", "relu_backward.dx", "the upstream gradient modified in place"),
    ("an input modified in place", "vjp/wrong_input_inplace.py", "affine_backward.db", "an input modified in place"),
    ("a Jacobian materialised", "vjp/wrong_jacobian.py", "matmul_backward.dW", "Jacobian materialised"),
]


@pytest.mark.parametrize("what,relpath,output,mistake", LISTED, ids=[c[0] for c in LISTED])
def test_listed_mistake_is_recognised(what: str, relpath: str, output: str, mistake: str, assignments: dict[str, Assignment]) -> None:
    result = _grade(assignments, relpath, seed=31)
    part, out = _output(result, output)
    assert not out["passed"]
    assert out["mistakes"] == [mistake]
    assert f"Recognised mistake: {mistake}" in part["feedback"]


def test_square_case_is_told_the_shape_could_not_show_it(assignments: dict[str, Assignment]) -> None:
    part, _ = _output(_grade(assignments, "vjp/wrong_transposed_square.py", seed=31), "matmul_backward.dW")
    assert "the matrices here are square" in part["feedback"]
    part, _ = _output(_grade(assignments, "vjp/wrong_transposed_dW.py", seed=31), "matmul_backward.dW")
    assert "rows and columns are swapped" in part["feedback"]


def test_a_gate_mistake_inside_the_circuit_names_the_gate(assignments: dict[str, Assignment]) -> None:
    part, _ = _output(_grade(assignments, "gates/wrong_circuit_mul_no_swap.py", seed=31), "circuit.dw0")
    assert "multiply gates the gradients are not swapped" in part["feedback"]
    part, _ = _output(_grade(assignments, "gates/wrong_ignores_upstream.py", seed=31), "circuit.dw0")
    assert "add gates the upstream gradient is not passed on" in part["feedback"]


# --- the engine's known-wrong VJPs -------------------------------------------------------


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(o: np.ndarray) -> np.ndarray:
    e = np.exp(o - o.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# (op, variant, tensor inputs, params, the wrong gradients written out by hand given g)
Variant = tuple[str, str, list[np.ndarray], dict[str, Any], Callable[..., list[np.ndarray]]]
_rng = np.random.default_rng(5)
_A, _B = _rng.uniform(-2, 2, (3, 4)), _rng.uniform(-2, 2, (3, 4))
_ROW = _rng.uniform(-2, 2, (4,))
_LABELS = np.array([0, 3, 1])
VARIANTS: list[Variant] = [
    ("sigmoid", "at_output", [_A], {}, lambda g: [g * _sig(_sig(_A)) * (1 - _sig(_sig(_A)))]),
    ("sigmoid", "ignores_upstream", [_A], {}, lambda g: [_sig(_A) * (1 - _sig(_A))]),
    ("tanh", "at_output", [_A], {}, lambda g: [g * (1 - np.tanh(np.tanh(_A)) ** 2)]),
    ("tanh", "ignores_upstream", [_A], {}, lambda g: [1 - np.tanh(_A) ** 2]),
    ("exp", "at_output", [_A], {}, lambda g: [g * np.exp(np.exp(_A))]),
    ("add", "ignores_upstream", [_A, _ROW], {}, lambda g: [np.ones_like(_A), np.full_like(_ROW, 3.0)]),
    ("mul", "no_swap", [_A, _ROW], {}, lambda g: [g * _A, (g * _ROW).sum(axis=0)]),
    ("mul", "ignores_upstream", [_A, _B], {}, lambda g: [_B, _A]),
    ("relu", "no_mask", [_A], {}, lambda g: [g]),
    ("relu", "ignores_upstream", [_A], {}, lambda g: [(_A > 0) * 1.0]),
    (
        "softmax_cross_entropy",
        "no_onehot",
        [_A],
        {"label": _LABELS},
        lambda g: [g * _softmax(_A) / 3],
    ),
    ("softmax_cross_entropy", "no_onehot", [_ROW], {"label": 2}, lambda g: [g * _softmax(_ROW)]),
    ("identity", "stop_gradient", [_A], {}, lambda g: [np.zeros_like(_A)]),
]


def test_variant_table_covers_every_known_wrong_vjp() -> None:
    assert {(op, v) for op, v, *_ in VARIANTS} == {(op, v) for op, vs in VJP_VARIANTS.items() for v in vs}


@pytest.mark.parametrize("op,variant,inputs,params,wrong", VARIANTS, ids=[f"{v[0]}:{v[1]}" for v in VARIANTS])
def test_known_wrong_vjp_computes_its_mistake(
    op: str, variant: str, inputs: list[np.ndarray], params: dict[str, Any], wrong: Callable[..., list[np.ndarray]]
) -> None:
    leaves = [Tensor(x.copy()) for x in inputs]
    out = apply(OPS[op], *leaves, **params)
    g = np.asarray(_rng.uniform(0.5, 1.5, out.shape))
    grads = backward(out, g, overrides={op: VJP_VARIANTS[op][variant]})
    right = backward(out, g)
    for leaf, want in zip(leaves, wrong(g)):
        assert np.allclose(grads[leaf], want, rtol=1e-12, atol=1e-12)
    # A known-wrong VJP that agreed with the op's own rule could never name a mistake.
    assert any(not np.allclose(grads[leaf], right[leaf]) for leaf in leaves)
