"""Findings of a hostile review of the newest features (reproducible failures, the chain
graph, logs and metrics): each test failed before its fix."""

from __future__ import annotations

import copy
import io
import logging
import xml.etree.ElementTree as ET
from typing import Any

from sqlalchemy.exc import OperationalError

from grader import logs, repro
from grader.chain import build_graph, node_states, report_for
from grader.grade import grade_bytes
from grader.graph_svg import render_graph_svg
from grader.spec import parse_spec
from grader.store.models import Submission
from grader.web.chain_view import chain_graphs
from service_fixtures import login
from test_web_student import TRANSPOSED_VJP, _graded

FN = "matmul_backward"

# A valid spec whose forward program gives an input (W) a new value computed from a name
# defined after W's first use. It loads and passes its checks; the chain analysis of any
# wrong submission used to raise KeyError, so every wrong submission failed to grade.
REASSIGNED_INPUT_SPEC: dict[str, Any] = {
    "id": "reassigned",
    "title": "An input given a new value",
    "version": 1,
    "dims": {"N": [2, 3], "D": [2, 3]},
    "inputs": {"x": {"shape": ["N", "D"]}, "W": {"shape": ["N", "D"]}},
    "functions": [
        {
            "name": "f",
            "args": ["x", "W"],
            "forward": "h = x * W\nW = h * 2\nJ = sum_sq(h)\n",
            "objective": "J",
            "returns": {"tuple": [{"grad": "h", "name": "dh"}, {"grad": "x", "name": "dx"}, {"grad": "W", "name": "dW"}]},
        }
    ],
}


def test_an_input_given_a_new_value_later_has_a_graph_and_a_chain() -> None:
    fn = parse_spec(copy.deepcopy(REASSIGNED_INPUT_SPEC)).function("f")
    graph = build_graph(fn)
    assert {"x", "W", "h", "J"} <= set(graph.nodes)
    ET.fromstring(render_graph_svg(graph, {"h": "broken"}))
    for wrong in ({"dh"}, {"dx"}, {"dh", "dx", "dW"}):
        report_for(fn, wrong)  # must not raise


def test_a_wrong_submission_to_a_spec_that_reassigns_an_input_is_graded() -> None:
    assignment = parse_spec(copy.deepcopy(REASSIGNED_INPUT_SPEC))
    wrong = b"def f(x, W):\n    h = x * W\n    return 3 * h, 2 * h * W, 2 * h * x\n"
    result = grade_bytes(assignment, wrong, seed=1)
    assert result["status"] == "graded"
    assert result["score"] < result["max_score"]


def test_stored_results_of_unexpected_types_do_not_break_the_new_readers() -> None:
    # Each used to raise TypeError (parts not a list, an unhashable state or function).
    assert repro.failing_visible({"status": "graded", "parts": 5}) == {}
    assert chain_graphs(None, {"parts": 5}) == {}
    assert node_states({"links": [{"target": "z", "state": ["broken"]}, {"target": "h", "state": "broken"}]}) == {"h": "broken"}


def _show(client: Any, sid: int) -> list[int]:
    urls = [f"/submissions/{sid}", f"/submissions/{sid}/trials/{FN}/1/repro.zip", f"/submissions/{sid}/trials/{FN}/repro.zip"]
    return [client.get(url).status_code for url in urls]


def test_odd_stored_results_degrade_on_the_result_page_and_downloads(client, session) -> None:
    from test_api import API, bearer, token_for

    sid, result = _graded(session, TRANSPOSED_VJP.read_bytes())
    login(client, "student")
    token = token_for(session, "student@example.com")
    assert _show(client, sid) == [200, 200, 200]

    def odd(change: Any) -> dict[str, Any]:
        changed = copy.deepcopy(result)
        change(changed)
        return changed

    row = session.get(Submission, sid)
    for name, stored in (
        ("parts is null", odd(lambda r: r.update(parts=None))),
        ("a part's trials are null", odd(lambda r: [p.update(trials=None) for p in r["parts"]])),
        ("a function name that is not a string", odd(lambda r: r["parts"].insert(0, {**r["parts"][0], "function": ["x"]}))),
        ("a chain state that is not a string", odd(lambda r: [p.update(chain={"links": [{"target": "W", "state": []}], "message": "m"}) for p in r["parts"]])),
        ("a trial index that is not a number", odd(lambda r: [p["trials"].append({**p["trials"][0], "index": [1]}) for p in r["parts"]])),
    ):
        row.result = stored
        session.commit()
        statuses = _show(client, sid)
        assert statuses[0] == 200, name
        assert all(s in (200, 404) for s in statuses), (name, statuses)
        assert client.get(f"{API}/submissions/{sid}", headers=bearer(token)).status_code == 200, name
    # Parts that are not a list at all: the downloads (new code) say 404; the page's older
    # summary table is left as it was.
    row.result = odd(lambda r: r.update(parts=5))
    session.commit()
    for url in (f"/submissions/{sid}/trials/{FN}/1/repro.zip", f"/submissions/{sid}/trials/{FN}/repro.zip"):
        assert client.get(url).status_code == 404, url


def test_text_logs_keep_a_forged_line_on_one_line(app) -> None:
    """An outsider's URL reaches the log when the database is down; in the text format its
    newline used to start a line that looks like the log's own."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger("grader.web")
    logger.addHandler(handler)
    try:
        forged = "/x%0D%0A2026-01-01T00:00:00.000Z ERROR grader.web: forged"
        with app.test_request_context(forged):
            app.handle_user_exception(OperationalError("SELECT 1", {}, Exception("down")))
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "the database is unreachable" in text
    assert text.count("\n") == 1 and "\r" not in text, text
    # Structured fields: a carriage return or an escape sequence is quoted too.
    rec = logging.LogRecord("grader.submissions", logging.INFO, __file__, 1, "m", (), None)
    rec.event = "submission.claimed"  # type: ignore[attr-defined]
    rec.fields = {"worker": "h\r2026 ERROR forged", "why": "\x1b[2Jx"}  # type: ignore[attr-defined]
    line = logs.TextFormatter().format(rec)
    assert "\r" not in line and "\x1b" not in line


def test_a_mistake_explained_only_by_name_on_hidden_trials_is_explained_where_visible() -> None:
    """Explain-once pointed dW back to dx, whose line gave only the name (dx failed on a
    hidden trial alone): the explanation dW's visible trials allow was never given."""
    spec = {
        "id": "twice",
        "title": "Twice",
        "version": 1,
        "dims": {"N": [2, 4], "D": [2, 4]},
        "inputs": {"x": {"shape": ["N", "D"]}, "W": {"shape": ["N", "D"]}},
        "functions": [
            {
                "name": "f",
                "args": ["dout", "x", "W"],
                "forward": "y = x * W\n",
                "upstream": {"dout": "y"},
                "trials": {"random": 2, "cases": [{"label": "big", "dims": {"N": 20}, "hidden": True}]},
                "returns": {"tuple": [{"grad": "x", "name": "dx"}, {"grad": "W", "name": "dW"}]},
            }
        ],
    }
    source = b"def f(dout, x, W):\n    k = 2.0 if x.shape[0] > 10 else 1.0\n    return k * dout * W, 2 * dout * x\n"
    feedback = grade_bytes(parse_spec(spec), source, seed=1)["parts"][0]["feedback"]
    assert "a factor of 2 (on hidden trials only, so no details are shown)." in feedback
    assert "Recognised mistake: a factor of 2. It is twice the right answer" in feedback
    assert "the same as for dx above" not in feedback


def test_an_argument_named_like_a_list_item_is_not_read_as_one_more_layer() -> None:
    """The script reads a list back as <name>__0, <name>__1, ... while such keys exist, so a
    spec's separate argument `weights__2` became a third weight matrix of a two-layer
    network: the script called the student's function on other inputs than grading did."""
    spec = {
        "id": "coll",
        "title": "Colliding names",
        "version": 1,
        "layers": {"count": [3, 3], "size": [2, 9]},
        "inputs": {
            "weights": {"type": "layers", "shape": ["n_out", "n_in"]},
            "weights__2": {"shape": ["n_last", "n_first"]},
            "x": {"shape": ["n_first", 1]},
        },
        "functions": [
            {
                "name": "f",
                "args": ["weights", "weights__2", "x"],
                "forward": "a = x\nfor l in range(len(weights)):\n    a = sigmoid(weights[l] @ a)\nJ = sum_sq(a) + sum_sq(weights__2)\n",
                "objective": "J",
                "trials": {"random": 1},
                "returns": {"tuple": [{"grad": "x", "name": "dx"}]},
            }
        ],
    }
    import pytest

    with pytest.raises(repro.ReproError, match="weights__2"):
        repro.bundle(parse_spec(spec), "f", 7, [0])
