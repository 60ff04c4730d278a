"""Counting recognised mistakes per assignment (pure: `grader.gradebook`), and their chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from grader import gradebook as gb
from grader.gradebook import StudentInfo
from grader.web.charts import mistakes_svg

ANN = StudentInfo(1, "ann@example.com", "Ann")
BEN = StudentInfo(2, "ben@example.com", "Ben")
CID = StudentInfo(3, "cid@example.com", "Cid")
STAFF = 99

T_MATMUL = ("matmul_backward", "dW", "transposed")
T_AFFINE = ("affine_backward", "dW", "transposed")
MEAN = ("affine_backward", "db", "averaged over N instead of summed, or averaged twice")
SIGN = ("relu_backward", "dx", "sign error")


def _result(*made: tuple[str, str, str]) -> dict[str, Any]:
    parts: dict[str, dict[str, Any]] = {}
    for function, output, mistake in made:
        part = parts.setdefault(function, {"function": function, "status": "failed", "outputs": []})
        out = next((o for o in part["outputs"] if o["name"] == output), None)
        if out is None:
            out = {"name": output, "passed": False, "mistakes": []}
            part["outputs"].append(out)
        out["mistakes"].append(mistake)
    return {"parts": list(parts.values())}


def test_mistakes_of_reads_every_output_of_every_part() -> None:
    result = _result(T_MATMUL, MEAN, T_AFFINE)
    result["parts"].append({"function": "relu_backward", "outputs": [{"name": "dx", "passed": True, "mistakes": []}]})
    assert sorted(gb.mistakes_of(result)) == sorted([T_MATMUL, MEAN, T_AFFINE])


def test_mistakes_of_tolerates_odd_and_old_results() -> None:
    for odd in (None, {}, {"parts": "x"}, {"parts": [1, None, {"outputs": []}]}, {"parts": [{"function": "f"}]},
                {"parts": [{"function": "f", "outputs": {"a": 1}}]},
                {"parts": [{"function": "f", "outputs": [{"name": "dx"}]}]},  # before mistakes were stored
                {"parts": [{"function": "f", "outputs": [{"name": "dx", "mistakes": [3, None, ""]}]}]}):
        assert gb.mistakes_of(odd) == []


def test_counts_distinct_students_now_and_ever() -> None:
    counted = {
        ANN.id: [MEAN],  # Ann still averages db
        BEN.id: [],  # Ben fixed everything
        CID.id: [MEAN, SIGN],
    }
    submitted = [
        (ANN.id, [T_MATMUL, T_AFFINE]),
        (ANN.id, [T_MATMUL]),  # the same student twice is one student
        (ANN.id, [MEAN]),
        (BEN.id, [T_MATMUL, MEAN]),
        (CID.id, [MEAN, SIGN]),
        (STAFF, [SIGN, T_MATMUL]),  # a TA trying it out is not counted
    ]
    counts = gb.mistake_counts([ANN, BEN, CID], counted, submitted, ["relu_backward", "matmul_backward", "affine_backward"])
    table = {(c.function, c.output, c.mistake): ([s.id for s in c.counted], [s.id for s in c.ever]) for c in counts}
    assert table == {
        SIGN: ([CID.id], [CID.id]),
        T_MATMUL: ([], [ANN.id, BEN.id]),
        MEAN: ([ANN.id, CID.id], [ANN.id, BEN.id, CID.id]),
        T_AFFINE: ([], [ANN.id]),
    }
    # In the spec's order of functions, then most students now first.
    assert [(c.function, c.mistake) for c in counts] == [
        ("relu_backward", "sign error"),
        ("matmul_backward", "transposed"),
        ("affine_backward", MEAN[2]),
        ("affine_backward", "transposed"),
    ]
    mean = counts[2]
    assert [s.display_name for s in mean.fixed] == ["Ben"]
    assert mean.label == "affine_backward · db: averaged over N instead of summed, or averaged twice"


def test_the_counted_submission_is_always_among_ever() -> None:
    # Even when the caller passes only earlier submissions as "submitted".
    counts = gb.mistake_counts([ANN], {ANN.id: [SIGN]}, [], [])
    assert [(len(c.counted), len(c.ever)) for c in counts] == [(1, 1)]


def test_no_mistakes_is_an_empty_list() -> None:
    assert gb.mistake_counts([ANN, BEN], {ANN.id: []}, [(BEN.id, [])], ["f"]) == []


def test_functions_outside_the_spec_come_last() -> None:
    old = ("old_function", "dx", "sign error")
    counts = gb.mistake_counts([ANN, BEN], {ANN.id: [old], BEN.id: [SIGN]}, [], ["relu_backward"])
    assert [c.function for c in counts] == ["relu_backward", "old_function"]


def test_chart_is_accessible_escaped_svg() -> None:
    evil = ("f<script>", "d&x", "a </title> mistake")
    counts = gb.mistake_counts([ANN, BEN, CID], {ANN.id: [evil], BEN.id: []}, [(BEN.id, [evil]), (CID.id, [evil])], [])
    svg = str(mistakes_svg("m", counts, 'Mistakes on "A" <b>'))
    root = ET.fromstring(svg)  # well-formed: every user string is escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("role") == "img" and root.get("aria-labelledby") == "m-title m-desc"
    assert root.find(f"{ns}title").text == 'Mistakes on "A" <b>'
    assert "f<script> · d&x: a </title> mistake: 1 now, 3 at some point" in root.find(f"{ns}desc").text
    bars = root.findall(f".//{ns}rect")
    assert [b.get("class") for b in bars] == ["bar ever", "bar counted"]
    ever, now = (float(b.get("width")) for b in bars)
    assert abs(ever - 3 * now) < 0.05 and now > 0
    assert "<script" not in svg and "style=" not in svg and "on" + "load" not in svg


def test_chart_without_mistakes_says_so() -> None:
    svg = str(mistakes_svg("m", [], "Mistakes"))
    ET.fromstring(svg)
    assert "no recognised mistakes yet" in svg and "No recognised mistakes yet." in svg
