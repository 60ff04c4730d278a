"""The forward graph of a function as an SVG image, with the gradient chain's verdicts.

Laid out here, in Python, left to right in layers (inputs first, the objective last), so
the page needs no JavaScript and no layout library. Colours are presentation attributes,
which a strict Content-Security-Policy allows (unlike `style` attributes). Every state is
shown by colour and also by words and a shape, so nothing depends on seeing colour. All
text is escaped here (names come from instructors' specs); the output is deterministic
and its size is bounded: a graph above MAX_NODES nodes is not drawn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from typing import Mapping, Optional, Union

from grader.chain import Edge, ForwardGraph, Node

MAX_NODES = 60
MAX_EDGES = 240
MAX_LABEL = 24  # characters of a name or an operation list drawn in a box
MAX_TITLE = 100  # characters of an expression in a tooltip

NODE_H = 58
SPACE = 18  # between boxes in a column
BEND_H = 8  # the room a long edge takes where it crosses a column
BEND_W = 24
GAP = 56
PAD = 16
LOOP_ROOM = 28  # above the boxes, for self-loop arcs
CHAR_W = 7.4  # average width of a 12-13 px system-ui character
FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"'

INK = "#1d2330"
MUTED = "#5d6575"
EDGE = "#6b7385"

# state -> (fill, stroke, stroke width, words drawn in the box)
STYLES: dict[str, tuple[str, str, str, str]] = {
    "broken": ("#fde7e7", "#b3261e", "3", "\u2717 chain broke here"),
    "follows": ("#fff1db", "#9a5700", "1.5", "\u2717 wrong (builds on it)"),
    "right": ("#e5f4e9", "#1f7a3f", "1.5", "\u2713 gradient right"),
    "": ("#f4f5f8", "#8a93a6", "1", ""),
}
LEGEND = (
    ("broken", "the first wrong gradient on the way back"),
    ("follows", "wrong, computed from a wrong gradient"),
    ("right", "graded gradient, right"),
)

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _text(value: str, limit: Optional[int] = None) -> str:
    """Escaped for XML text and attribute values, shortened with an ellipsis to `limit`."""
    value = _XML_INVALID.sub("", value)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    return escape(value, quote=True)


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") or "0"


def _ops_label(node: Node) -> str:
    if node.kind == "input":
        return "input"
    ops = ", ".join(node.ops) or "value"
    return ("\u21bb loop: " if node.loop else "") + ops


def _width(node: Node, state: str) -> float:
    longest = max(
        len(node.name[:MAX_LABEL]) + 2,
        len(_ops_label(node)[:MAX_LABEL]),
        len(STYLES[state][3]),
    )
    return max(72.0, longest * CHAR_W + 18)


def render_graph_svg(
    graph: ForwardGraph,
    states: Optional[Mapping[str, str]] = None,
    graph_id: str = "graph",
    title: str = "Forward computation graph",
) -> str:
    """The graph as a standalone SVG element. `states` maps node names to "broken",
    "follows" or "right" (anything else is drawn as not graded)."""
    gid = _ID_UNSAFE.sub("-", graph_id)[:60] or "graph"
    states = {k: v for k, v in (states or {}).items() if v in STYLES and k in graph.nodes}
    if len(graph.nodes) > MAX_NODES or len(graph.edges) > MAX_EDGES:
        return _too_large(gid, title, len(graph.nodes))

    names = list(graph.nodes)
    widths = {n: _width(graph.nodes[n], states.get(n, "")) for n in names}
    layout = _layout(graph, widths)
    legend_items = [item for item in LEGEND if item[0] in states.values()]
    height = PAD + LOOP_ROOM + layout.height + PAD + (24 if legend_items else 0) + PAD // 2
    width = max(layout.width + 2 * PAD, 460 if legend_items else 200)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chain-graph" role="img" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" width="{_n(width)}" height="{_n(height)}" '
        f'aria-labelledby="{gid}-title {gid}-desc" {FONT} font-size="12">',
        f'<title id="{gid}-title">{_text(title, 200)}</title>',
        f'<desc id="{gid}-desc">{_text(_describe(graph, states), 2000)}</desc>',
        "<defs>"
        f'<marker id="{gid}-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE}"/></marker>'
        "</defs>",
    ]
    for i, edge in enumerate(graph.edges):
        out.append(_edge(gid, i, edge, layout))
    for name in names:
        out.append(_node(graph.nodes[name], states.get(name, ""), layout.box[name]))
    if legend_items:
        out.append(_legend(legend_items, height - 24 - PAD // 2 + 4))
    out.append("</svg>")
    return "\n".join(out)


# A node's name, or (edge index, layer) for the bend point where a long edge crosses a layer.
Key = Union[str, tuple[int, int]]


@dataclass
class _Layout:
    box: dict[Key, tuple[float, float, float, float]]  # left, top, width, height
    routes: dict[int, list[Key]]  # forward edge index -> its keys from source to target
    ports: dict[tuple[str, int], float]  # ("in" or "out", edge index) -> y where it meets a box
    width: float
    height: float


def _layout(graph: ForwardGraph, widths: Mapping[str, float]) -> _Layout:
    """Columns by layer, a bend point wherever an edge skips a layer (so long edges run
    between boxes, not through them), rows ordered by the mean row of their neighbours in
    a few sweeps each way; every tie is kept in definition order, so the result is stable."""
    layer_of: dict[Key, int] = {name: node.layer for name, node in graph.nodes.items()}
    pred: dict[Key, list[Key]] = {k: [] for k in layer_of}
    succ: dict[Key, list[Key]] = {k: [] for k in layer_of}
    routes: dict[int, list[Key]] = {}
    for i, edge in enumerate(graph.edges):
        if edge.back:
            continue
        low, high = layer_of[edge.source], layer_of[edge.target]
        keys: list[Key] = [edge.source, *[(i, k) for k in range(low + 1, high)], edge.target]
        for key in keys[1:-1]:
            layer_of[key] = key[1]  # type: ignore[index]
            pred[key], succ[key] = [], []
        for a, b in zip(keys, keys[1:]):
            succ[a].append(b)
            pred[b].append(a)
        routes[i] = keys
    columns: list[list[Key]] = [[] for _ in range(max(layer_of.values()) + 1)]
    for key, layer in layer_of.items():
        columns[layer].append(key)
    rank = {key: float(i) for column in columns for i, key in enumerate(column)}

    def sweep(column: list[Key], links: dict[Key, list[Key]]) -> None:
        column.sort(key=lambda k: (sum(rank[n] for n in links[k]) / len(links[k]) if links[k] else rank[k], rank[k]))
        rank.update({key: float(i) for i, key in enumerate(column)})

    for _ in range(2):
        for column in columns[1:]:
            sweep(column, pred)
        for column in reversed(columns[:-1]):
            sweep(column, succ)
    columns = [column for column in columns if column]

    looped = {e.source for e in graph.edges if e.source == e.target}

    def size(key: Key) -> float:
        return NODE_H if isinstance(key, str) else BEND_H

    def tops(column: list[Key]) -> list[float]:
        """Each box's top within its column; a self-loop's arc needs room above its box."""
        out, y = [], 0.0
        for j, key in enumerate(column):
            if j and key in looped:
                y += LOOP_ROOM
            out.append(y)
            y += size(key) + SPACE
        return out

    offsets = [tops(column) for column in columns]
    heights = [top[-1] + size(column[-1]) for top, column in zip(offsets, columns)]
    tallest = max(heights)
    box: dict[Key, tuple[float, float, float, float]] = {}
    x = float(PAD)
    for column, column_h, top in zip(columns, heights, offsets):
        col_w = max([widths[k] for k in column if isinstance(k, str)] or [BEND_W])
        y0 = PAD + LOOP_ROOM + (tallest - column_h) / 2
        for key, dy in zip(column, top):
            w = widths[key] if isinstance(key, str) else col_w
            box[key] = (x + (col_w - w) / 2, y0 + dy, w, size(key))
        x += col_w + GAP

    ports: dict[tuple[str, int], float] = {}
    for name in graph.nodes:
        top = box[name][1]
        for side, here, there in (("in", -1, -2), ("out", 0, 1)):
            ends = sorted(
                (i for i, keys in routes.items() if keys[here] == name),
                key=lambda i: (box[routes[i][there]][1], box[routes[i][there]][0], i),
            )
            for j, i in enumerate(ends):
                ports[(side, i)] = top + NODE_H * (j + 1) / (len(ends) + 1)
    return _Layout(box, routes, ports, x - GAP - PAD, tallest)


def _edge(gid: str, index: int, edge: Edge, layout: _Layout) -> str:
    sx, sy, sw, _ = layout.box[edge.source]
    tx, ty, tw, _ = layout.box[edge.target]
    tip = (
        f"<title>{_text(edge.source, MAX_LABEL)} \u2192 {_text(edge.target, MAX_LABEL)} "
        f"({_text(edge.op, MAX_LABEL)})</title>"
    )
    common = f'fill="none" stroke="{EDGE}" stroke-width="1.4" marker-end="url(#{gid}-arrow)"'
    if edge.source == edge.target:
        left, right = sx + sw * 0.3, sx + sw * 0.7
        d = f"M{_n(right)},{_n(sy)} C{_n(right)},{_n(sy - LOOP_ROOM)} {_n(left)},{_n(sy - LOOP_ROOM)} {_n(left)},{_n(sy)}"
        return f'<path d="{d}" {common} stroke-dasharray="4 3">{tip}</path>'
    if edge.back:
        x1, y1 = sx + sw / 2, sy + NODE_H
        x2, y2 = tx + tw / 2, ty + NODE_H
        d = f"M{_n(x1)},{_n(y1)} C{_n(x1)},{_n(y1 + 30)} {_n(x2)},{_n(y2 + 30)} {_n(x2)},{_n(y2)}"
        return f'<path d="{d}" {common} stroke-dasharray="4 3">{tip}</path>'
    points = [(sx + sw, layout.ports[("out", index)])]
    for key in layout.routes[index][1:-1]:
        bx, by, bw, bh = layout.box[key]
        points += [(bx, by + bh / 2), (bx + bw, by + bh / 2)]
    points.append((tx, layout.ports[("in", index)]))
    d = f"M{_n(points[0][0])},{_n(points[0][1])}"
    for j, ((x1, y1), (x2, y2)) in enumerate(zip(points, points[1:])):
        if j % 2:  # across a layer it skips: straight
            d += f" L{_n(x2)},{_n(y2)}"
        else:
            bend = max(16.0, (x2 - x1) / 2)
            d += f" C{_n(x1 + bend)},{_n(y1)} {_n(x2 - bend)},{_n(y2)} {_n(x2)},{_n(y2)}"
    return f'<path d="{d}" {common}>{tip}</path>'


def _node(node: Node, state: str, box: tuple[float, float, float, float]) -> str:
    x, y, width, _ = box
    fill, stroke, stroke_w, words = STYLES[state]
    rx = "2" if node.kind == "input" else "10"
    cx = x + width / 2
    what = node.expr and f"{node.name} = {node.expr}" or f"{node.name} (input)"
    status = {"broken": "the chain broke here", "follows": "gradient wrong, built on a wrong one", "right": "gradient right"}
    tip = _text(what, MAX_TITLE) + (f": {status[state]}" if state else "")
    parts = [f'<g class="node node-{state or "plain"}"><title>{tip}</title>']
    if state == "broken":  # a second, dashed outline: a shape marker besides the colour
        parts.append(
            f'<rect x="{_n(x - 5)}" y="{_n(y - 5)}" width="{_n(width + 10)}" height="{NODE_H + 10}" rx="14" '
            f'fill="none" stroke="{stroke}" stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
    parts.append(
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(width)}" height="{NODE_H}" rx="{rx}" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{stroke_w}"'
        + (' stroke-dasharray="6 2"' if node.kind == "objective" else "")
        + "/>"
    )
    parts.append(
        f'<text x="{_n(cx)}" y="{_n(y + 18)}" text-anchor="middle" font-weight="bold" font-size="13" '
        f'fill="{INK}">{_text(node.name, MAX_LABEL)}</text>'
    )
    parts.append(
        f'<text x="{_n(cx)}" y="{_n(y + 34)}" text-anchor="middle" fill="{MUTED}">'
        f"{_text(_ops_label(node), MAX_LABEL)}</text>"
    )
    if words:
        parts.append(
            f'<text x="{_n(cx)}" y="{_n(y + 50)}" text-anchor="middle" font-size="11" fill="{stroke}" '
            f'font-weight="bold">{_text(words)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _legend(items: list[tuple[str, str]], y: float) -> str:
    parts = ['<g class="legend">']
    x = float(PAD)
    for state, meaning in items:
        fill, stroke, stroke_w, words = STYLES[state]
        parts.append(
            f'<rect x="{_n(x)}" y="{_n(y)}" width="14" height="14" rx="3" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{stroke_w}"/>'
        )
        label = f"{words.split(' ', 1)[0]} {meaning}"
        parts.append(f'<text x="{_n(x + 20)}" y="{_n(y + 11)}" fill="{INK}" font-size="11">{_text(label)}</text>')
        x += 28 + len(label) * 6.2
    parts.append("</g>")
    return "".join(parts)


def _describe(graph: ForwardGraph, states: Mapping[str, str]) -> str:
    """The picture in words, for screen readers."""
    steps = [f"{n.name} = {n.expr}" + (" (in a loop)" if n.loop else "") for n in graph.nodes.values() if n.expr]
    inputs = [n.name for n in graph.nodes.values() if n.kind == "input"]
    text = f"Inputs: {', '.join(inputs) or 'none'}. Computed: {'; '.join(steps) or 'nothing'}."
    for state, words in (("broken", "The chain broke at"), ("follows", "Wrong because they build on it"), ("right", "Gradients right")):
        marked = [name for name in graph.nodes if states.get(name) == state]
        if marked:
            text += f" {words}: {', '.join(marked)}."
    return text


def _too_large(gid: str, title: str, count: int) -> str:
    message = f"Graph too large to draw ({count} values; at most {MAX_NODES} are drawn)."
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chain-graph" role="img" viewBox="0 0 460 40" '
        f'width="460" height="40" aria-labelledby="{gid}-title" {FONT} font-size="12">'
        f'<title id="{gid}-title">{_text(title, 200)}: {_text(message)}</title>'
        f'<text x="10" y="24" fill="{MUTED}">{_text(message)}</text></svg>'
    )
