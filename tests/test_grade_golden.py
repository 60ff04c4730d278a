"""The whole result of a grading, pinned: every corpus file, and the runner's report of a
correct file bent into many wrong returns (wrong dtypes, shapes, structures, NaNs, values
just outside the tolerance, arguments changed in place, failed calls), must give exactly
the result JSON it gave when these digests were recorded. Speed work on the comparison
and the result building must not change a byte a student or the gradebook sees.

To re-record after an intended change of feedback: GOLDEN_PRINT=1 pytest this file -s,
and paste the printed table."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any

import numpy as np
import pytest

from grader.grade import default_runner, grade_bytes
from grader.runner import CallResult, Job, Returned, RunReport, Unsupported
from grader.spec import Assignment

from conftest import BUILTINS, SUBMISSIONS

SEEDS = (1, 2**40 + 5)
PERTURBED_FROM = {"gates": "correct_plain.py", "vjp": "correct_plain.py", "mlp": "correct_plain.py", "bp4": "correct_nielsen.py"}
OFFSETS = range(6)


def _digest(result: dict[str, Any]) -> str:
    result = dict(result)
    result.pop("timing")
    for part in result["parts"]:
        for trial in part["trials"]:
            trial.pop("seconds", None)  # the call's wall time: the one thing not reproducible
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]


def _bend(a: np.ndarray, k: int) -> Any:
    """The k-th way of returning an output wrongly (or rightly in an unusual form)."""
    flat = a.reshape(-1)
    if k == 0:
        return Returned(a, "array")
    if k == 1:
        return Returned(a * 2, "array")
    if k == 2:
        return Returned(a.astype(np.float32), "array")
    if k == 3:
        return Returned((a * (1 + 1e-3)).astype(np.float32), "array")
    if k == 4:
        return Returned(a.T, "array")
    if k == 5:
        b = flat.copy()
        b[-1:] = np.nan
        return Returned(b.reshape(a.shape), "array")
    if k == 6:
        b = flat.copy()
        b[:1] = -np.inf
        return Returned(b.reshape(a.shape), "array")
    if k == 7:
        return Returned(a[None], "array")
    if k == 8:
        return Returned(a.astype(np.complex128), "array")
    if k == 9:
        return Returned(a > 0, "array")
    if k == 10:
        return Returned(a.astype(np.float16), "array")
    if k == 11:
        return Returned(a + 1e-13, "array")
    if k == 12:
        return Returned(np.round(a).astype(np.int64), "array")
    if k == 13:
        return Returned(flat.copy(), "array")
    if k == 14:
        return Unsupported("Tensor object")
    if k == 15:
        return None
    if k == 16:
        return "not an array"
    if k == 17:
        return Returned(a * 1.5, "matrix")
    if k == 18:
        return 3.0
    if k == 19:
        return Returned(a.astype(">f8"), "array")
    if k == 20:
        return Returned(a.astype(np.longdouble), "array")
    if k == 21:
        b = flat.copy()
        b[len(b) // 2 :][:1] *= 1 + 1e-6
        return Returned(b.reshape(a.shape), "array")
    if k == 22:
        return [float(x) for x in flat[:3]]
    if k == 23:
        return Returned(a.astype(np.float32) * np.float32(1 + 3e-4), "array")
    if k == 24:
        return Returned(np.zeros_like(a), "array")
    return Returned(a.copy(), "list")


BENDS = 26


def _bend_value(value: Any, k: int) -> Any:
    """Each array in a returned structure bent its own way, and now and then the structure."""
    counter = [k]

    def walk(v: Any) -> Any:
        if isinstance(v, Returned):
            counter[0] += 1
            return _bend(v.array, counter[0] % BENDS)
        if isinstance(v, tuple):
            return tuple(walk(x) for x in v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {key: walk(x) for key, x in v.items()}
        return v

    shape = k % 9
    if shape == 1 and isinstance(value, (tuple, list)):
        return list(value)[:-1]  # an item short
    if shape == 2 and isinstance(value, tuple):
        return list(value)  # a list where a tuple was asked: accepted
    if shape == 3 and isinstance(value, dict):
        return {**{key: v for key, v in list(value.items())[1:]}, "extra": Returned(np.zeros(2), "array")}
    if shape == 4 and isinstance(value, tuple) and all(isinstance(x, Returned) for x in value):
        if len({x.array.shape for x in value}) == 1:
            return Returned(np.stack([x.array for x in value]), "array")  # stacked: accepted
    if shape == 5 and isinstance(value, tuple) and value and isinstance(value[0], list):
        return (value[0][:-1], *value[1:])  # one layer short
    if shape == 6:
        return walk(value)
    if shape == 7 and isinstance(value, dict):
        return [value]
    if shape == 8 and isinstance(value, tuple) and value and isinstance(value[0], list):
        return (Returned(np.zeros(3), "array"), *value[1:])  # one array where a list of layers was asked
    return walk(value) if k % 2 else value


def _bend_call(res: CallResult, k: int) -> CallResult:
    res = copy.deepcopy(res)
    if res.status != "ok":
        return res
    if k % 17 == 3:
        return CallResult("error", error={"type": "ValueError", "text": "Traceback:\n  line 3\nValueError: boom", "line": 3})
    if k % 19 == 4:
        return CallResult("timeout", detail="", seconds=2.0)
    if k % 23 == 7:
        return CallResult("crashed", detail="killed by SIGXCPU")
    if k % 29 == 8:
        return CallResult("error", error={"type": "MemoryError", "text": "", "line": None})
    if k % 13 == 5 and isinstance(res.args_after, list) and res.args_after:
        res.args_after = [Returned(np.zeros(1), "array"), *res.args_after[1:]]
    res.value = _bend_value(res.value, k)
    return res


class _Bending:
    """Runs the job for real once, then hands out the report with every call bent."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def run(self, job: Job) -> RunReport:
        report = default_runner().run(job)
        bent = copy.copy(report)
        bent.calls = [_bend_call(res, self.offset * 31 + i) for i, res in enumerate(report.calls)]
        return bent

    def close(self) -> None:
        pass


# Two digests per file, one per seed in SEEDS.
GOLDEN: dict[str, str] = {
    "bp4/correct_nielsen.py": "1ac7eefa03ee9474,d6c27ae98b54745e",
    "bp4/correct_vectorised.py": "1ac7eefa03ee9474,d6c27ae98b54745e",
    "bp4/wrong_mean_twice.py": "f19da6d77288f5fc,8ef69fc1fdc169f4",
    "bp4/wrong_no_bias_in_forward.py": "4def5eb6a7df3fec,471a06737f30d2aa",
    "bp4/wrong_sigmoid_prime_of_a.py": "b2ae1b7eac0569f7,5b060cf9436f841c",
    "bp4/wrong_sigmoid_prime_output_layer.py": "b125fa62d2a32970,2b0c5368f8ae567a",
    "bp4/wrong_sigmoid_twice.py": "b2ae1b7eac0569f7,5b060cf9436f841c",
    "bp4/wrong_sum_not_mean.py": "f040dfcd3ebb308e,ddcefc0e078a1244",
    "gates/correct_float32.py": "c428379f991ae8a0,ba061bb0a9f5cb73",
    "gates/correct_lists.py": "beccdf9de42e7ae2,e69352470c001d76",
    "gates/correct_plain.py": "beccdf9de42e7ae2,e69352470c001d76",
    "gates/wrong_circuit_mul_no_swap.py": "ba6f877459ef2f4d,79a703990a80403d",
    "gates/wrong_copy_average.py": "d7fd73527566ef9b,868d2a4023335b42",
    "gates/wrong_ignores_upstream.py": "83b8644f69d6a74c,4bea0999686befac",
    "gates/wrong_max_routes_both.py": "be5d4dedcf41beb6,724f3417fb6f93f3",
    "gates/wrong_mul_no_swap.py": "fd953cb928b2c6d3,01d61594481fd583",
    "gates/wrong_sigmoid_at_input.py": "e2e37501a405d51c,ecc7fadc6abc8e2f",
    "gates/wrong_sign.py": "8da20aaadd379c21,98c537d952f3842a",
    "mlp/correct_logsumexp.py": "4b2943547e7e86f6,acb4eb42eba4c6cc",
    "mlp/correct_loops.py": "4b2943547e7e86f6,acb4eb42eba4c6cc",
    "mlp/correct_mask_from_h.py": "4b2943547e7e86f6,acb4eb42eba4c6cc",
    "mlp/correct_plain.py": "4b2943547e7e86f6,acb4eb42eba4c6cc",
    "mlp/wrong_bias_regularised.py": "555bc5ba5110c889,692f0e78fe0fc07c",
    "mlp/wrong_dW2_uses_z.py": "6774c687d75f5cc7,d0d66ed0c1226ed3",
    "mlp/wrong_double_reg.py": "07fcdd5ffb579dba,9a6199c64606d817",
    "mlp/wrong_half_reg.py": "d01ef26965f74971,b82d95dcd656a94a",
    "mlp/wrong_no_reg.py": "6fbf8f128c6a7c21,031b75dd00b7b9b8",
    "mlp/wrong_no_relu_mask.py": "63f2d17ea2450078,51e200c4387fc76c",
    "mlp/wrong_softmax_no_onehot.py": "5003ed23e5ffbe17,abab3b8c99ec6ce3",
    "vjp/correct_einsum.py": "218a9815d989cc9e,fefd8b1d16438e30",
    "vjp/correct_lists.py": "218a9815d989cc9e,fefd8b1d16438e30",
    "vjp/correct_loops.py": "218a9815d989cc9e,fefd8b1d16438e30",
    "vjp/correct_plain.py": "218a9815d989cc9e,fefd8b1d16438e30",
    "vjp/wrong_db_mean.py": "ceb794b5d318b9c7,ab92113df672d310",
    "vjp/wrong_db_not_summed.py": "615c91118c2ace82,6f3d35b31e3260be",
    "vjp/wrong_factor_two.py": "519f074d032ef22b,0b502800a76443ce",
    "vjp/wrong_half_dx.py": "49973ab595071342,46eb2411100d54f8",
    "vjp/wrong_ignores_upstream.py": "5b3199dcb3f3f376,b11877a628f6e753",
    "vjp/wrong_input_inplace.py": "49f59201feb4ffc5,a32d8a97882bc6c5",
    "vjp/wrong_jacobian.py": "2c30c20e92c5c357,767986ba27e3fd7a",
    "vjp/wrong_relu_inplace.py": "cfaa341a07e79f00,fb7b6bb3829d51fd",
    "vjp/wrong_transposed_dW.py": "737faade1722d83c,2a61b574f8b36451",
    "vjp/wrong_transposed_square.py": "dd46aabbc970afab,115e6d5e56b3161e",
    "gates/correct_plain.py@0": "98dd8d5036044457,30280c5adb8a314c",
    "gates/correct_plain.py@1": "b4e799dcaae756ce,6240051281c77890",
    "gates/correct_plain.py@2": "8dbb38438af6d053,c96fceea86cce738",
    "gates/correct_plain.py@3": "d8db73216aef090f,967566b06d7c5691",
    "gates/correct_plain.py@4": "860b0d942af0b4f9,47da4268c3d63a55",
    "gates/correct_plain.py@5": "0f7541522e2ae435,6062125c593fb08a",
    "vjp/correct_plain.py@0": "bfedfbaeca217bd1,bdf0913a8ff152a7",
    "vjp/correct_plain.py@1": "5a3aaf3d273c4890,15c55168f307341f",
    "vjp/correct_plain.py@2": "676bc7dc3e8dbbd6,fe39015e3ae63b54",
    "vjp/correct_plain.py@3": "79f5ce921076f9ce,f406e8bd4582095b",
    "vjp/correct_plain.py@4": "10a962f4f0378819,df33b1ea15128e11",
    "vjp/correct_plain.py@5": "8b1f4858510628e9,f6cbb842e5a66610",
    "mlp/correct_plain.py@0": "bb848b8569c17763,c3165e5287adf184",
    "mlp/correct_plain.py@1": "7526735c7c6e9ec2,4110503776bd41bf",
    "mlp/correct_plain.py@2": "2b428c8f316fa9b1,c969e44648792df9",
    "mlp/correct_plain.py@3": "47133a61af9b98c0,b3df53e27d5dac92",
    "mlp/correct_plain.py@4": "7af4c4161416444f,db20db986d5632eb",
    "mlp/correct_plain.py@5": "a55d56547e696b43,6632f39238268d42",
    "bp4/correct_nielsen.py@0": "94bc49bf95afa275,fed303003da66401",
    "bp4/correct_nielsen.py@1": "dab5bd00e67c3a94,dd7b599eaac1f23b",
    "bp4/correct_nielsen.py@2": "e6e73300a619ca3d,69f4c8b2af3b2a42",
    "bp4/correct_nielsen.py@3": "ce032683b253ed63,067fa289999b8bfd",
    "bp4/correct_nielsen.py@4": "e585d55f6ad7320a,0abb789714188672",
    "bp4/correct_nielsen.py@5": "ebbea3fc0e7033d6,38dbe263e0809510",
}

CORPUS = sorted(f"{aid}/{p.name}" for aid in BUILTINS for p in (SUBMISSIONS / aid).glob("*.py"))
PERTURBED = [f"{aid}/{PERTURBED_FROM[aid]}@{offset}" for aid in BUILTINS for offset in OFFSETS]


def _grade_key(assignments: dict[str, Assignment], key: str) -> str:
    relpath, _, offset = key.partition("@")
    aid = relpath.split("/")[0]
    data = (SUBMISSIONS / relpath).read_bytes()
    runner = _Bending(int(offset)) if offset else None
    return ",".join(_digest(grade_bytes(assignments[aid], data, seed=seed, runner=runner)) for seed in SEEDS)


@pytest.mark.parametrize("key", CORPUS + PERTURBED)
def test_result_is_unchanged(key: str, assignments: dict[str, Assignment]) -> None:
    got = _grade_key(assignments, key)
    if os.environ.get("GOLDEN_PRINT"):
        print(f'    "{key}": "{got}",')
        return
    assert got == GOLDEN[key]


def test_bends_reach_every_kind_of_verdict(assignments: dict[str, Assignment]) -> None:
    """The bent reports must exercise the comparator's paths, or the digests pin little."""
    feedback = ""
    passed = failed = 0
    for aid in BUILTINS:
        data = (SUBMISSIONS / aid / PERTURBED_FROM[aid]).read_bytes()
        for offset in OFFSETS:
            result = grade_bytes(assignments[aid], data, seed=SEEDS[0], runner=_Bending(offset))
            for part in result["parts"]:
                feedback += part["feedback"] + "\n" + "\n".join(m for t in part["trials"] for m in t["messages"])
                outcomes = [v for t in part["trials"] for v in t.get("outputs", {}).values()]
                passed += outcomes.count("passed")
                failed += outcomes.count("failed")
    for words in (
        "has wrong values in",
        "has wrong values",
        "float32 tolerance",
        "contains NaN",
        "contains inf",
        "has shape",
        "transposed shape",
        "has complex dtype",
        "is a boolean array",
        "too imprecise",
        "is None",
        "not numeric data",
        "expected a list of",
        "modified its argument",
        "raised ValueError",
        "time limit",
        "CPU time limit",
        "ran out of memory",
        "the returned dict has no key",
        "one per layer",
    ):
        assert words in feedback, words
    assert passed > 100 and failed > 100
