"""Where the chain broke: the forward graph read from a spec, the chain of graded gradients
in backward order, the first wrong link of a graded submission, the SVG of the graph, and
the result page that shows both."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from grader.chain import ChainReport, Edge, ForwardGraph, Node, analyse, build_chain, build_graph, node_states
from grader.grade import grade_bytes
from grader.graph_svg import MAX_NODES, render_graph_svg
from grader.spec import Assignment, parse_spec

from conftest import SUBMISSIONS

SVG = "{http://www.w3.org/2000/svg}"
MLP_LINKS = ["o", "h", "W2", "z", "W1"]  # backward order: dJ/dW2 as soon as dJ/do is known

# A function with an upstream gradient instead of an objective, and an intermediate output.
UPSTREAM_SPEC: dict[str, Any] = {
    "id": "chaindemo",
    "title": "Chain demo",
    "version": 1,
    "dims": {"N": [2, 5], "D": [2, 5]},
    "inputs": {"x": {"shape": ["N", "D"]}, "W": {"shape": ["N", "D"]}},
    "functions": [
        {
            "name": "gate_backward",
            "args": ["dout", "x", "W"],
            "forward": "h = x * W\ny = tanh(h)\n",
            "upstream": {"dout": "y"},
            "returns": {"tuple": [{"grad": "h", "name": "dh"}, {"grad": "x", "name": "dx"}, {"grad": "W", "name": "dW"}]},
        }
    ],
}


def _fn(assignments: dict[str, Assignment], aid: str, name: str) -> Any:
    return assignments[aid].function(name)


def _part(result: dict[str, Any], function: str) -> dict[str, Any]:
    return next(p for p in result["parts"] if p["function"] == function)


def _grade(assignments: dict[str, Assignment], path: str, seed: int = 3) -> dict[str, Any]:
    return grade_bytes(assignments["mlp"], (SUBMISSIONS / "mlp" / path).read_bytes(), seed=seed)


def _states(part: dict[str, Any]) -> dict[str, str]:
    return {link["name"]: link["state"] for link in part["chain"]["links"]}


# ---------------------------------------------------------------------------------------
# the forward graph


def test_mlp_graph_has_inputs_values_and_the_ops_between_them(assignments: dict[str, Assignment]) -> None:
    graph = build_graph(_fn(assignments, "mlp", "mlp_backward"))
    assert list(graph.nodes) == ["x", "W1", "W2", "y", "lam", "z", "h", "o", "L", "s", "J"]
    kinds = {n: node.kind for n, node in graph.nodes.items()}
    assert kinds["x"] == kinds["W1"] == "input" and kinds["h"] == "value" and kinds["J"] == "objective"
    edges = {(e.source, e.target): e.op for e in graph.edges}
    assert edges[("z", "h")] == "relu"
    assert edges[("W1", "z")] == "@" and edges[("h", "o")] == "@"
    assert edges[("o", "L")] == "softmax_cross_entropy"
    assert edges[("W2", "s")] == "sum_sq" and edges[("L", "J")] == "+"
    assert not any(e.back for e in graph.edges)
    assert graph.nodes["h"].ops == ("relu",) and graph.nodes["h"].expr == "relu(z)"
    assert [graph.nodes[n].layer for n in ("z", "h", "o", "L", "J")] == [1, 2, 3, 4, 5]
    assert graph.starts == {"J": "1"}
    order = graph.backward_order()
    assert order[0] == "J" and order.index("o") < order.index("h") < order.index("z") < order.index("W1")


def test_mlp_bias_graph_feeds_b1_into_z_by_addition(assignments: dict[str, Assignment]) -> None:
    graph = build_graph(_fn(assignments, "mlp", "mlp_bias_backward"))
    edges = {(e.source, e.target): e.op for e in graph.edges}
    assert edges[("b1", "z")] == "+" and edges[("W1", "z")] == "@"
    assert graph.nodes["z"].ops == ("@", "+")


@pytest.mark.parametrize("name", ["backprop", "minibatch_backprop"])
def test_bp4_loop_collapses_to_one_node_with_a_loop_edge_and_no_chain(assignments: dict[str, Assignment], name: str) -> None:
    fn = _fn(assignments, "bp4", name)
    graph = build_graph(fn)
    act = "a" if name == "backprop" else "A"
    assert graph.nodes[act].loop and not graph.nodes["C"].loop
    assert "sigmoid" in graph.nodes[act].ops and "=" not in graph.nodes[act].ops
    loop_edges = [e for e in graph.edges if e.back]
    assert [(e.source, e.target) for e in loop_edges] == [(act, act)]
    first = "x" if name == "backprop" else "X"
    assert {e.source for e in graph.edges if e.target == act and not e.back} == {"weights", "biases", first}
    # The loop index and len() are bookkeeping, not data the gradient flows through.
    assert "l" not in graph.nodes
    assert graph.backward_order()[:2] == ["C", act]
    assert build_chain(fn) is None  # per-layer gradients of inputs only: nothing to chain
    svg = render_graph_svg(graph, {}, "bp4")
    root = ET.fromstring(svg)
    assert any("loop" in (t.text or "") for t in root.iter(f"{SVG}text"))


def test_gates_circuit_has_a_graph_but_no_chain(assignments: dict[str, Assignment]) -> None:
    fn = _fn(assignments, "gates", "circuit")
    graph = build_graph(fn)
    assert set(graph.nodes) == {"w0", "x0", "w1", "x1", "w2", "L"}
    assert {(e.source, e.op) for e in graph.edges} == {("w0", "*"), ("x0", "*"), ("w1", "*"), ("x1", "*"), ("w2", "+")}
    assert graph.nodes["L"].ops == ("*", "+", "sigmoid")
    assert build_chain(fn) is None  # a value and gradients of inputs: no intermediate link


@pytest.mark.parametrize("aid", ["vjp", "gates", "bp4"])
def test_assignments_without_intermediate_gradients_have_no_chain(assignments: dict[str, Assignment], aid: str) -> None:
    for fn in assignments[aid].functions:
        assert build_chain(fn) is None, fn.name


# ---------------------------------------------------------------------------------------
# the chain and its first wrong link


def test_mlp_chain_links_in_backward_order_with_their_formulas(assignments: dict[str, Assignment]) -> None:
    chain = build_chain(_fn(assignments, "mlp", "mlp_backward"))
    assert chain is not None
    assert [link.label for link in chain.links] == MLP_LINKS
    links = {link.label: link for link in chain.links}
    assert links["o"].upstream == () and links["h"].upstream == ("o",) and links["z"].upstream == ("h",)
    assert links["W2"].upstream == ("o",) and links["W1"].upstream == ("z",)
    assert links["z"].formula == "dJ/dh * relu'(z)"
    assert links["h"].formula == "W2.T @ dJ/do"
    assert links["o"].formula == "softmax(o) - onehot(y)"
    assert links["W1"].formula == "dJ/dz @ x.T + lam / 2 * 2 * W1"
    assert any("ReLU mask" in hint for hint in links["z"].hints)


def test_bias_gradient_is_computed_from_dz(assignments: dict[str, Assignment]) -> None:
    chain = build_chain(_fn(assignments, "mlp", "mlp_bias_backward"))
    assert chain is not None
    b1 = chain.link("b1")
    assert b1.upstream == ("z",) and b1.formula == "dJ/dz"


def test_a_wrong_gradient_whose_upstream_is_right_is_a_break_of_its_own(assignments: dict[str, Assignment]) -> None:
    chain = build_chain(_fn(assignments, "mlp", "mlp_backward"))
    assert chain is not None
    report = analyse(chain, {"W1"})
    assert report is not None
    assert report.breaks == ["W1"] and report.states["z"] == "right" and report.states["W1"] == "broken"
    assert report.message.startswith("The chain broke at dJ/dW1. dJ/dz is right, but dJ/dW1 = dJ/dz @ x.T")
    assert "wrong too" not in report.message


def test_two_independent_breaks_name_the_first_and_the_other(assignments: dict[str, Assignment]) -> None:
    chain = build_chain(_fn(assignments, "mlp", "mlp_backward"))
    assert chain is not None
    report = analyse(chain, {"W2", "W1"})
    assert report is not None
    assert report.breaks == ["W2", "W1"] and report.first_broken == "W2"
    assert "There is another break at dJ/dW1" in report.message
    assert analyse(chain, set()) is None


def test_upstream_functions_write_gradients_with_the_upstream_argument() -> None:
    fn = parse_spec(copy.deepcopy(UPSTREAM_SPEC)).functions[0]
    chain = build_chain(fn)
    assert chain is not None
    assert [link.label for link in chain.links] == ["dh", "dW", "dx"]
    assert chain.link("dh").formula == "dout * tanh'(h)"
    assert chain.link("dx").formula == "dh * W" and chain.link("dx").upstream == ("dh",)
    report = analyse(chain, {"dx", "dW", "dh"})
    assert isinstance(report, ChainReport)
    assert report.at == "dh" and report.states == {"dh": "broken", "dW": "follows", "dx": "follows"}
    assert "It should be dout * tanh'(h)" in report.message
    assert "dW and dx are wrong too, but they are computed from dh: fix dh first." in report.message


def _custom(forward: str, grads: list[str], objective: str = "J") -> Any:
    spec = copy.deepcopy(UPSTREAM_SPEC)
    spec["functions"][0].update(
        args=["x", "W"], forward=forward, objective=objective, returns={"tuple": [{"grad": g} for g in grads]}
    )
    del spec["functions"][0]["upstream"]
    return parse_spec(spec).functions[0]


def test_names_assigned_in_a_loop_are_not_links() -> None:
    fn = _custom("a = x\nfor i in range(3):\n    a = tanh(a * W)\nc = a * 2\nJ = sum_sq(c)\n", ["a", "c", "x", "W"])
    chain = build_chain(fn)
    assert chain is not None
    assert [link.label for link in chain.links] == ["dc", "dW", "dx"]
    assert chain.link("dx").upstream == ("dc",) and chain.link("dx").formula is None  # no single step to print
    report = analyse(chain, {"dx"})
    assert report is not None and report.at == "dJ/dx (your output `dx`)"
    assert report.message == "The chain broke at dJ/dx (your output `dx`). dJ/dc is right, but dJ/dx is wrong."


def test_a_redefined_name_gets_no_formula_but_keeps_its_links() -> None:
    fn = _custom("h = x * W\nh = h * 2\nJ = sum_sq(h)\n", ["h", "x"])
    chain = build_chain(fn)
    assert chain is not None
    assert chain.link("dx").upstream == ("dh",) and chain.link("dx").formula is None
    assert any(e.source == e.target == "h" for e in chain.graph.edges)  # h = h * 2 feeds itself
    ET.fromstring(render_graph_svg(chain.graph, {"h": "right", "x": "broken"}))


# ---------------------------------------------------------------------------------------
# graded submissions


def test_missing_relu_mask_breaks_at_z(assignments: dict[str, Assignment]) -> None:
    result = _grade(assignments, "wrong_no_relu_mask.py")
    for function in ("mlp_backward", "mlp_bias_backward"):
        part = _part(result, function)
        chain = part["chain"]
        assert chain["first_broken"] == "z" and chain["breaks"] == ["z"]
        states = _states(part)
        assert states["o"] == states["h"] == states["W2"] == "right"
        assert states["z"] == "broken" and states["W1"] == "follows"
        line = next(line for line in part["feedback"].splitlines() if line.startswith("Where the chain broke: "))
        assert "dJ/dh is right, but dJ/dz = dJ/dh * relu'(z) is wrong" in line
        assert "Check the ReLU mask step" in line
    assert _states(_part(result, "mlp_bias_backward"))["b1"] == "follows"
    assert "dJ/db1 and dJ/dW1 are wrong too, but they are computed from dJ/dz: fix dJ/dz first." in _part(
        result, "mlp_bias_backward"
    )["chain"]["message"]


def test_dW2_from_z_breaks_at_W2_only(assignments: dict[str, Assignment]) -> None:
    result = _grade(assignments, "wrong_dW2_uses_z.py")
    for function in ("mlp_backward", "mlp_bias_backward"):
        part = _part(result, function)
        assert part["chain"]["breaks"] == ["W2"]
        assert {n for n, s in _states(part).items() if s != "right"} == {"W2"}
        assert "dJ/do is right, but dJ/dW2 = dJ/do @ h.T + lam / 2 * 2 * W2 is wrong." in part["feedback"]
        assert "wrong too" not in part["chain"]["message"]


def test_softmax_without_one_hot_breaks_at_o_and_everything_builds_on_it(assignments: dict[str, Assignment]) -> None:
    result = _grade(assignments, "wrong_softmax_no_onehot.py")
    part = _part(result, "mlp_backward")
    assert part["chain"]["first_broken"] == "o"
    assert [link["name"] for link in part["chain"]["links"]] == MLP_LINKS
    assert _states(part) == {"o": "broken", "h": "follows", "W2": "follows", "z": "follows", "W1": "follows"}
    assert "dJ/dh, dJ/dW2, dJ/dz and dJ/dW1 are wrong too, but they are computed from dJ/do" in part["feedback"]
    assert "softmax(o) with 1 subtracted at the true class" in part["feedback"]


@pytest.mark.parametrize("path", sorted(p.name for p in (SUBMISSIONS / "mlp").glob("correct_*.py")))
def test_correct_submissions_get_no_chain(assignments: dict[str, Assignment], path: str) -> None:
    result = _grade(assignments, path)
    assert result["score"] == result["max_score"]
    for part in result["parts"]:
        assert "chain" not in part and "chain broke" not in part["feedback"]


def test_a_function_that_only_raises_gets_no_chain(assignments: dict[str, Assignment]) -> None:
    source = b"def mlp_backward(x, y, W1, W2, lam):\n    raise ValueError('not yet')\n"
    result = grade_bytes(assignments["mlp"], source, seed=3)
    assert all("chain" not in part for part in result["parts"])


def test_chain_json_round_trips_into_node_states(assignments: dict[str, Assignment]) -> None:
    part = _part(_grade(assignments, "wrong_no_relu_mask.py"), "mlp_bias_backward")
    states = node_states(part["chain"])
    assert states == {"o": "right", "h": "right", "W2": "right", "z": "broken", "b1": "follows", "W1": "follows"}
    assert node_states({"links": [{"target": "z", "state": "<bad>"}, "junk"]}) == {}
    assert node_states("not a dict") == {}


# ---------------------------------------------------------------------------------------
# the SVG


def _broken_mlp_svg(assignments: dict[str, Assignment]) -> str:
    fn = _fn(assignments, "mlp", "mlp_bias_backward")
    chain = build_chain(fn)
    assert chain is not None
    report = analyse(chain, {"z", "W1", "b1"})
    assert report is not None
    return render_graph_svg(chain.graph, node_states(report.as_json()), "chain-1", "Forward graph of mlp_bias_backward")


def test_svg_is_well_formed_accessible_and_marks_the_break(assignments: dict[str, Assignment]) -> None:
    svg = _broken_mlp_svg(assignments)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    assert root.get("aria-labelledby") == "chain-1-title chain-1-desc"
    assert root.find(f"{SVG}title").text == "Forward graph of mlp_bias_backward"
    assert "The chain broke at: z." in root.find(f"{SVG}desc").text
    groups = {g.find(f"{SVG}text").text: g for g in root.iter(f"{SVG}g") if "node" in (g.get("class") or "")}
    assert set(groups) == {"x", "W1", "W2", "b1", "y", "lam", "z", "h", "o", "L", "s", "J"}
    words = {name: [t.text for t in g.iter(f"{SVG}text")] for name, g in groups.items()}
    assert "\u2717 chain broke here" in words["z"]  # words, not only colour
    assert len(groups["z"].findall(f"{SVG}rect")) == 2  # and a second, dashed outline
    assert "\u2713 gradient right" in words["h"] and "\u2713 gradient right" in words["o"]
    assert "\u2717 wrong (builds on it)" in words["W1"]
    assert len(words["L"]) == 2  # not graded: name and operation only
    assert "style=" not in svg  # the CSP forbids style attributes; colours are presentation attributes
    assert svg == _broken_mlp_svg(assignments)  # deterministic


def test_svg_escapes_hostile_names_and_titles() -> None:
    hostile = '<script>alert("x")</script>&\x01'
    graph = ForwardGraph(
        nodes={
            "a": Node("a", "input", (), "", False, 0),
            hostile: Node(hostile, "objective", ("relu",), "relu(a) </text><b>", False, 1),
        },
        edges=[Edge("a", hostile, "relu", False)],
        starts={hostile: "1"},
        objective=hostile,
    )
    svg = render_graph_svg(graph, {hostile: "broken"}, 'id"><script>', title=hostile)
    assert "<script>" not in svg and "<b>" not in svg
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert '<script>alert("x")</scr\u2026' in texts  # unescaped by the parser, shortened, control char gone
    assert root.find(f"{SVG}title").text == '<script>alert("x")</script>&'
    assert re.fullmatch(r"[A-Za-z0-9_ -]+", root.get("aria-labelledby") or "")


def test_a_graph_of_200_assignments_is_not_drawn() -> None:
    spec = copy.deepcopy(UPSTREAM_SPEC)
    lines = ["v0 = x * W"] + [f"v{i} = v{i - 1} * 2" for i in range(1, 200)]
    spec["functions"][0].update(
        forward="\n".join(lines) + "\n",
        upstream={"dout": "v199"},
        returns={"tuple": [{"grad": "v100", "name": "dv"}, {"grad": "x", "name": "dx"}]},
    )
    fn = parse_spec(spec).functions[0]
    graph = build_graph(fn)
    assert len(graph.nodes) == 202
    chain = build_chain(fn, graph)
    assert chain is not None and chain.link("dx").upstream == ("dv",)
    svg = render_graph_svg(graph, {"v100": "broken"}, "big")
    assert len(svg) < 2000 and "Graph too large to draw" in svg and str(MAX_NODES) in svg
    ET.fromstring(svg)


def test_a_long_chain_of_ungraded_steps_is_not_printed_in_full() -> None:
    # Specs are capped at 2,000 syntax nodes (grader/spec/limits.py), so a chain can no
    # longer outgrow Python's recursion limit; the longest one a spec may hold still works.
    steps = 200
    lines = ["v0 = x * W", *[f"v{i} = tanh(v{i - 1})" for i in range(1, steps)]]
    fn = _custom("\n".join(lines) + f"\nJ = sum_sq(v{steps - 1})\n", ["v0", "x"])
    chain = build_chain(fn)
    assert chain is not None
    assert chain.link("dv0").formula is None and chain.link("dx").formula == "dJ/dv0 * W"
    report = analyse(chain, {"dv0", "dx"})
    assert report is not None and report.breaks == ["dv0"]


# ---------------------------------------------------------------------------------------
# the result page


def test_result_page_shows_the_graph_and_where_the_chain_broke(client: Any, session: Any) -> None:
    from service_fixtures import login
    from test_web_student import _graded

    wrong, _ = _graded(session, (SUBMISSIONS / "mlp" / "wrong_no_relu_mask.py").read_bytes(), slug="mlp")
    right, _ = _graded(session, (SUBMISSIONS / "mlp" / "correct_plain.py").read_bytes(), slug="mlp")
    login(client, "student")
    response = client.get(f"/submissions/{wrong}")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert body.count('<svg xmlns="http://www.w3.org/2000/svg" class="chain-graph"') == 2  # one per function
    assert "Where the chain broke</h3>" in body
    assert "The chain broke at dJ/dz. dJ/dh is right, but dJ/dz = dJ/dh * relu&#39;(z) is wrong." in body
    assert "\u2717 chain broke here" in body
    svg = body[body.index("<svg") : body.index("</svg>") + len("</svg>")]
    ET.fromstring(svg)
    assert "style=" not in svg
    body = client.get(f"/submissions/{right}").get_data(as_text=True)
    assert "chain-graph" not in body and "Where the chain broke" not in body


def test_no_graph_when_the_result_is_from_another_spec_version(session: Any) -> None:
    from grader.store import catalog
    from grader.store.models import Submission
    from grader.web.chain_view import chain_graphs
    from test_web_student import _graded

    sid, result = _graded(session, (SUBMISSIONS / "mlp" / "wrong_dW2_uses_z.py").read_bytes(), slug="mlp")
    row = session.get(Submission, sid)
    assert set(chain_graphs(row.version, result)) == {"mlp_backward", "mlp_bias_backward"}
    assert chain_graphs(row.version, {**result, "assignment_version": "not this one"}) == {}
    assert chain_graphs(None, result) == {}
    correct = grade_bytes(catalog.loaded_spec(row.version), (SUBMISSIONS / "mlp" / "correct_plain.py").read_bytes(), seed=1)
    assert chain_graphs(row.version, correct) == {}
