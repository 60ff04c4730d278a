"""Where the chain of gradients broke.

A function that returns the gradients of intermediate forward values (dJ/do, dJ/dh, dJ/dz
of an MLP, not only dJ/dW) lets the grader follow backpropagation step by step. Each graded
gradient is computed from the graded gradients of the values it feeds (dJ/dz from dJ/dh),
so a wrong gradient whose own upstream gradients are all right is where the chain broke;
every wrong gradient computed from it may be wrong only because of it.

The forward graph is read from the spec's forward program (no evaluation): one node per
input and per assigned name (a name assigned in a loop is one node, marked as a loop), an
edge for each data dependency, labelled with the operation that consumes it.

Functions whose graded gradients are all of inputs (vjp, gates, bp4's per-layer lists) have
no chain: no graded gradient is computed from another graded one, so there is no break to
locate, and the result page draws no graph for them (the graph is there to show the break).
A name assigned inside a loop is never a link: it holds one value per iteration.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from grader.engine import OPS
from grader.spec.load import Function

MAX_FORMULA_CHARS = 160  # a longer formula is left out: it would not help a student
MAX_FORMULA_DEPTH = 12  # ungraded steps a formula is printed through (also bounds recursion)

_BINOP_SYMBOLS: dict[type, str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
    ast.MatMult: "@",
    ast.FloorDiv: "//",
    ast.Mod: "%",
}

# What to check when the step through an operation is where the chain broke.
_HINTS = {
    "relu": "Check the ReLU mask step: the gradient passes only where {arg} > 0, and is 0 elsewhere.",
    "softmax_cross_entropy": (
        "Check the softmax cross-entropy step: its gradient is softmax({arg}) with 1 subtracted at the true class."
    ),
    "sigmoid": "Check the sigmoid step: sigmoid'({arg}) = sigmoid({arg}) * (1 - sigmoid({arg})), taken at {arg}.",
    "tanh": "Check the tanh step: tanh'({arg}) = 1 - tanh({arg}) ** 2.",
    "@": (
        "Check the matrix product: which factor is transposed and on which side it multiplies "
        "(for two vectors a and b, a @ b.T is np.outer(a, b))."
    ),
    "+": "Check the addition step: the gradient passes through it unchanged (summed over any axis that was broadcast).",
    "sum_sq": "The gradient of sum_sq({arg}) is 2 * {arg}.",
    "frobenius_sq": "The gradient of frobenius_sq({arg}) is 2 * {arg}.",
    "square": "The gradient of square({arg}) is 2 * {arg}.",
    "exp": "Check the exp step: the derivative of exp({arg}) is exp({arg}) itself.",
    "log": "Check the log step: the derivative of log({arg}) is 1 / {arg}.",
}


@dataclass(frozen=True)
class Node:
    """An input or an assigned name of the forward program."""

    name: str
    kind: str  # "input", "value" or "objective"
    ops: tuple[str, ...]  # the operations that compute it, innermost first; () for inputs
    expr: str  # the source of its last definition; "" for inputs
    loop: bool  # assigned inside a `for` loop (all its iterations are this one node)
    layer: int  # 0 for inputs; one more than its furthest forward dependency


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    op: str  # how `target` consumes `source`, e.g. "@", "relu"; several joined by ", "
    back: bool  # goes against definition order: a dependency around a loop


@dataclass
class ForwardGraph:
    nodes: dict[str, Node]  # in definition order: inputs, then names by first assignment
    edges: list[Edge]
    # Nodes whose gradient is given rather than computed: the objective ("1") or a node
    # whose gradient arrives as an upstream argument (its argument name).
    starts: dict[str, str]
    objective: Optional[str]
    definitions: dict[str, list[ast.expr]] = field(default_factory=dict)
    _into: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
    _out_of: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
    _op: dict[tuple[str, str], str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        # Indexed once: a spec may hold thousands of assignments, and grading walks them.
        for edge in self.edges:
            if not edge.back:
                self._op[(edge.source, edge.target)] = edge.op
                self._into.setdefault(edge.target, []).append(edge.source)
                self._out_of.setdefault(edge.source, []).append(edge.target)

    def producers(self, name: str) -> list[str]:
        """The nodes `name` is computed from directly (forward edges only)."""
        return self._into.get(name, [])

    def consumers(self, name: str) -> list[str]:
        """The nodes computed directly from `name` (forward edges only)."""
        return self._out_of.get(name, [])

    def op(self, source: str, target: str) -> str:
        """How `target` consumes `source` directly ("" when it does not)."""
        return self._op.get((source, target), "")

    def relevant(self) -> set[str]:
        """The nodes whose gradient can be nonzero: the starts and everything feeding them."""
        seen: set[str] = set()
        stack = list(self.starts)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(self.producers(name))
        return seen

    def backward_order(self) -> list[str]:
        """The order backpropagation visits the nodes: a node comes once every node it
        feeds has been visited (reverse topological order from the objective), first come
        first served, so dJ/dW2 follows dJ/do as it does in a hand-written backward pass."""
        relevant = self.relevant()
        order_index = {name: i for i, name in enumerate(self.nodes)}
        waiting = {n: len({c for c in self.consumers(n) if c in relevant}) for n in relevant}
        queue = sorted((n for n in self.starts if waiting[n] == 0), key=lambda n: -order_index[n])
        done: list[str] = []
        while queue:
            name = queue.pop(0)
            done.append(name)
            for producer in sorted(set(self.producers(name)), key=lambda n: -order_index[n]):
                waiting[producer] -= 1
                if waiting[producer] == 0:
                    queue.append(producer)
        return done


@dataclass(frozen=True)
class Link:
    """One graded gradient in the chain."""

    label: str  # the output's name in the result
    target: str  # the forward name it is the gradient of
    symbol: str  # how the text writes it, e.g. "dJ/dz"
    upstream: tuple[str, ...]  # labels of the nearest graded gradients it is computed from
    formula: Optional[str]  # e.g. "dJ/dh * relu'(z)"; None when too long or around a loop
    hints: tuple[str, ...]  # what to check if this step is where the chain broke


@dataclass(frozen=True)
class Chain:
    graph: ForwardGraph
    links: list[Link]  # in backward order

    def link(self, label: str) -> Link:
        for link in self.links:
            if link.label == label:
                return link
        raise KeyError(label)


@dataclass(frozen=True)
class ChainReport:
    """Where a graded submission's chain broke."""

    chain: Chain
    states: dict[str, str]  # label -> "right", "broken" or "follows"
    breaks: list[str]  # labels of the broken links, in backward order
    roots: dict[str, list[str]]  # label of a following link -> the breaks it is computed from
    at: str  # the first break, as the text names it
    detail: str  # what is known about it, in sentences

    @property
    def first_broken(self) -> str:
        return self.breaks[0]

    @property
    def message(self) -> str:
        return f"The chain broke at {self.at}. {self.detail}"

    @property
    def feedback_line(self) -> str:
        return f"Where the chain broke: {self.at}. {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "links": [
                {
                    "name": link.label,
                    "target": link.target,
                    "gradient": link.symbol,
                    "state": self.states[link.label],
                    "upstream": list(link.upstream),
                }
                for link in self.chain.links
            ],
            "first_broken": self.first_broken,
            "breaks": list(self.breaks),
            "message": self.message,
        }


# --- the forward graph -------------------------------------------------------------------


def build_graph(fn: Function) -> ForwardGraph:
    """The forward graph of a function spec."""
    program = fn.program
    assigned = list(program.assigned)
    known = set(fn.inputs) | set(assigned)
    definitions: dict[str, list[ast.expr]] = {}
    in_loop: set[str] = set()
    edge_ops: dict[tuple[str, str], list[str]] = {}

    def visit(stmts: Iterable[ast.stmt], looping: bool) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                name = stmt.targets[0].id
                definitions.setdefault(name, []).append(stmt.value)
                if looping:
                    in_loop.add(name)
                for source, op in _data_uses(stmt.value):
                    if source in known:
                        ops = edge_ops.setdefault((source, name), [])
                        if op not in ops:
                            ops.append(op)
            elif isinstance(stmt, ast.For):
                visit(stmt.body, True)

    visit(program.tree.body, False)

    used_inputs = {source for source, _ in edge_ops if source in fn.inputs}
    used_inputs |= {info.leaf.target for info in fn.leaves if info.leaf.target in fn.inputs}
    used_inputs |= {node for node in fn.spec.upstream.values() if node in fn.inputs}
    order = [name for name in fn.inputs if name in used_inputs] + assigned
    index = {name: i for i, name in enumerate(order)}

    edges = [
        Edge(source, target, ", ".join(ops), back=index[source] >= index[target])
        for (source, target), ops in sorted(edge_ops.items(), key=lambda kv: (index[kv[0][1]], index[kv[0][0]]))
    ]
    deps: dict[str, list[str]] = {}
    uses: dict[str, list[str]] = {}
    for edge in edges:
        if not edge.back:
            deps.setdefault(edge.target, []).append(edge.source)
            uses.setdefault(edge.source, []).append(edge.target)
    layers: dict[str, int] = {}
    # In the order of `index`, where every forward edge points ahead: an input the program
    # gives a new value later is in `order` twice, and only its last place is its own.
    for name in sorted(index, key=index.__getitem__):
        layers[name] = 0 if name not in definitions else 1 + max((layers[d] for d in deps.get(name, [])), default=0)
    for name in order:
        if name not in definitions:  # an input sits just before its first use: shorter arrows
            layers[name] = max(0, min((layers[t] for t in uses.get(name, [])), default=1) - 1)

    objective = fn.spec.objective
    nodes: dict[str, Node] = {}
    for name in order:
        if name not in definitions:
            nodes[name] = Node(name, "input", (), "", False, layers[name])
            continue
        last = definitions[name][-1]
        ops: list[str] = []
        for expr in definitions[name]:
            for op in _ops(expr):
                if op not in ops:
                    ops.append(op)
        if len(ops) > 1 and "=" in ops:  # `a = x` before a loop: the copy is not an operation worth showing
            ops.remove("=")
        kind = "objective" if name == objective else "value"
        nodes[name] = Node(name, kind, tuple(ops), ast.unparse(last), name in in_loop, layers[name])

    starts = {objective: "1"} if objective else {node: arg for arg, node in fn.spec.upstream.items()}
    starts = {n: g for n, g in starts.items() if n in nodes}
    return ForwardGraph(nodes, edges, starts, objective, definitions)


def _data_uses(expr: ast.expr) -> list[tuple[str, str]]:
    """(name, operation consuming it) for each name read as data: loop indices, list
    indices and the arguments of len() are bookkeeping, not values gradients flow through."""
    found: list[tuple[str, str]] = []

    def walk(node: ast.AST, op: str) -> None:
        if isinstance(node, ast.Name):
            found.append((node.id, op))
        elif isinstance(node, ast.BinOp):
            symbol = _BINOP_SYMBOLS.get(type(node.op), "?")
            walk(node.left, symbol)
            walk(node.right, symbol)
        elif isinstance(node, ast.UnaryOp):
            walk(node.operand, "-" if isinstance(node.op, ast.USub) else op)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "len":
                return
            for arg in node.args:
                walk(arg, node.func.id)
        elif isinstance(node, ast.Subscript):
            walk(node.value, op)
        elif isinstance(node, ast.Attribute):
            walk(node.value, ".T")

    walk(expr, "=")
    return found


def _ops(expr: ast.expr) -> list[str]:
    """The operations of an expression, innermost first, each once."""
    ops: list[str] = []

    def add(op: str) -> None:
        if op not in ops:
            ops.append(op)

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.BinOp):
            walk(node.left)
            walk(node.right)
            add(_BINOP_SYMBOLS.get(type(node.op), "?"))
        elif isinstance(node, ast.UnaryOp):
            walk(node.operand)
            if isinstance(node.op, ast.USub):
                add("-")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "len":
                return
            for arg in node.args:
                walk(arg)
            add(node.func.id)
        elif isinstance(node, ast.Subscript):
            walk(node.value)
        elif isinstance(node, ast.Attribute):
            walk(node.value)
            add(".T")

    walk(expr)
    if not ops and isinstance(expr, ast.Name):
        ops.append("=")
    return ops


# --- the chain of graded gradients -------------------------------------------------------


def build_chain(fn: Function, graph: Optional[ForwardGraph] = None) -> Optional[Chain]:
    """The chain of a function's graded gradients, or None when it has none: no gradient of
    an intermediate value, or no graded gradient computed from another."""
    graph = graph or build_graph(fn)
    # A name assigned in a loop holds many values, so "its gradient" is no single link.
    grads = [
        info
        for info in fn.leaves
        if info.leaf.grad and info.leaf.grad in graph.nodes and not graph.nodes[info.leaf.grad].loop
    ]
    if not any(graph.nodes[info.leaf.target].kind != "input" for info in grads):
        return None
    by_target: dict[str, list[str]] = {}
    for info in grads:
        by_target.setdefault(info.leaf.target, []).append(info.label)
    relevant = graph.relevant()
    order = {name: i for i, name in enumerate(graph.backward_order())}
    symbols = {target: _symbol(graph, target) for target in by_target}
    formulas = _Formulas(graph, symbols, relevant)

    links = []
    for info in grads:
        target = info.leaf.target
        upstream_targets = _nearest_graded(graph, target, set(by_target), relevant)
        upstream = tuple(label for t in upstream_targets for label in by_target[t])
        formula = formulas.of(target) if target in relevant and target not in graph.starts else None
        links.append(Link(info.label, target, symbols[target], upstream, formula, _hints(graph, target, relevant)))
    if not any(link.upstream for link in links):
        return None
    links.sort(key=lambda link: order.get(link.target, len(order)))  # stable: leaf order breaks ties
    return Chain(graph, links)


def _symbol(graph: ForwardGraph, target: str) -> str:
    return f"d{graph.objective}/d{target}" if graph.objective else f"d{target}"


def _nearest_graded(graph: ForwardGraph, target: str, graded: set[str], relevant: set[str]) -> list[str]:
    """The graded nodes reached first along each forward path from `target` (in definition
    order): the gradients `target`'s own gradient is computed from."""
    found: set[str] = set()
    seen: set[str] = set()
    stack = [c for c in graph.consumers(target) if c in relevant]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in graded:
            found.add(name)
            continue
        stack.extend(c for c in graph.consumers(name) if c in relevant)
    return [name for name in graph.nodes if name in found]


def _hints(graph: ForwardGraph, target: str, relevant: set[str]) -> tuple[str, ...]:
    """What to check in the steps that consume `target` directly."""
    hints: list[str] = []
    for consumer in graph.consumers(target):
        if consumer not in relevant:
            continue
        for op in graph.op(target, consumer).split(", "):
            template = _HINTS.get(op)
            if template and template.format(arg=target) not in hints:
                hints.append(template.format(arg=target))
        if len(hints) >= 2:
            break
    return tuple(hints[:2])


class _Formulas:
    """dJ/dX written in terms of the nearest graded gradients, from the forward expressions:
    a small symbolic reverse pass that only prints, never evaluates."""

    def __init__(self, graph: ForwardGraph, symbols: dict[str, str], relevant: set[str]) -> None:
        self.graph = graph
        self.symbols = symbols
        self.relevant = relevant
        self.memo: dict[str, Optional[str]] = {}

    def of(self, target: str, depth: int = 0) -> Optional[str]:
        if target in self.memo:
            return self.memo[target]
        if depth > MAX_FORMULA_DEPTH:
            return None  # not memoised: a shallower call may still print it
        self.memo[target] = None  # a cycle (there should be none on forward edges) gives up
        terms: list[str] = []
        for consumer in dict.fromkeys(self.graph.consumers(target)):
            if consumer not in self.relevant:
                continue
            defs = self.graph.definitions.get(consumer, [])
            if len(defs) != 1 or self.graph.nodes[consumer].loop or self.graph.nodes[target].loop:
                return None  # a name redefined or looped over has no single step to print
            g = self._incoming(consumer, depth)
            if g is None:
                return None
            found = _terms(defs[0], target, g)
            if found is None:
                return None
            terms.extend(found)
        if not terms:
            return None
        formula = " + ".join(_paren(t) if i and t.startswith("-") else t for i, t in enumerate(terms))
        if len(formula) > MAX_FORMULA_CHARS:
            return None
        self.memo[target] = formula
        return formula

    def _incoming(self, name: str, depth: int) -> Optional[str]:
        """The gradient flowing into `name`, as the text writes it."""
        if name in self.graph.starts:
            return self.graph.starts[name]
        if name in self.symbols:
            return self.symbols[name]
        return self.of(name, depth + 1)


def _terms(node: ast.AST, target: str, g: str) -> Optional[list[str]]:
    """One term per occurrence of `target` in `node`, given the gradient g flowing into
    `node`; None for a construct with no simple printed rule."""
    if isinstance(node, ast.Name):
        return [g] if node.id == target else []
    if not _mentions(node, target):
        return []
    if isinstance(node, ast.BinOp):
        left, right = ast.unparse(node.left), ast.unparse(node.right)
        op = type(node.op)
        if op is ast.Add:
            pairs = [(node.left, g), (node.right, g)]
        elif op is ast.Sub:
            pairs = [(node.left, g), (node.right, _neg(g))]
        elif op is ast.Mult:
            pairs = [(node.left, _mul(g, right)), (node.right, _mul(g, left))]
        elif op is ast.Div:
            pairs = [(node.left, _div(g, right)), (node.right, _neg(_mul(g, f"{_paren(left)} / {_atom(right)} ** 2")))]
        elif op is ast.MatMult:
            pairs = [(node.left, f"{_paren(g)} @ {_atom(right)}.T"), (node.right, f"{_atom(left)}.T @ {_right(g)}")]
        elif op is ast.Pow and not _mentions(node.right, target):
            pairs = [(node.left, _mul(g, f"{_paren(right)} * {_atom(left)} ** ({right} - 1)"))]
        else:
            return None
        return _collect(pairs, target)
    if isinstance(node, ast.UnaryOp):
        return _terms(node.operand, target, _neg(g) if isinstance(node.op, ast.USub) else g)
    if isinstance(node, ast.Attribute):
        return _terms(node.value, target, f"({g}).T" if _needs_paren(g) else f"{g}.T")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        op = OPS.get(name)
        if op is None:
            return None
        pairs = []
        for i, arg in enumerate(node.args):
            if not _mentions(arg, target):
                continue
            if i >= op.arity:
                return None  # an option such as the label: no gradient flows there
            local = _local(name, node.args, i)
            if local is None:
                return None
            pairs.append((arg, _mul(g, local) if local != "1" else g))
        return _collect(pairs, target)
    return None


def _collect(pairs: list[tuple[ast.AST, str]], target: str) -> Optional[list[str]]:
    out: list[str] = []
    for child, g in pairs:
        found = _terms(child, target, g)
        if found is None:
            return None
        out.extend(found)
    return out


def _local(op: str, args: list[ast.expr], i: int) -> Optional[str]:
    """The local derivative of op at argument i, as printed text."""
    a = ast.unparse(args[i])
    if op in ("relu", "sigmoid", "tanh", "sqrt"):
        return f"{op}'({a})"
    if op == "exp":
        return f"exp({a})"
    if op == "log":
        return f"1 / {_atom(a)}"
    if op in ("sum_sq", "frobenius_sq", "square"):
        return f"2 * {_atom(a)}"
    if op == "identity":
        return "1"
    if op == "softmax_cross_entropy" and len(args) > 1:
        return f"softmax({a}) - onehot({ast.unparse(args[1])})"
    return None


def _mentions(node: ast.AST, target: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == target for n in ast.walk(node))


def _top_ops(text: str) -> set[str]:
    """The binary operators of printed text outside brackets (they are always spaced)."""
    found: set[str] = set()
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch == " ":
            token = text[i + 1 :].split(" ", 1)[0]
            if token in ("+", "-", "*", "/", "@", "**") and text[i + 1 + len(token) : i + 2 + len(token)] == " ":
                found.add(token)
    return found


def _needs_paren(text: str) -> bool:
    """True when `text` has a + or - outside brackets (so it must be bracketed in a product)."""
    return bool(_top_ops(text) & {"+", "-"})


def _paren(text: str) -> str:
    return f"({text})" if _needs_paren(text) or text.startswith("-") else text


def _right(text: str) -> str:
    """Bracketed as the right operand of @ (or of * when it holds @): Python reads
    `A @ a * b` as `(A @ a) * b`."""
    return f"({text})" if _top_ops(text) - {"**"} or text.startswith("-") else text


def _atom(text: str) -> str:
    """Bracketed unless it is a plain name or call (for `x.T`, `x ** 2`)."""
    return text if text.replace("_", "a").isalnum() or (text.endswith(")") and "(" in text and " " not in text) else f"({text})"


def _mul(g: str, factor: str) -> str:
    if g == "1":
        return factor
    return f"{_paren(g)} * {_right(factor) if '@' in _top_ops(factor) else _paren(factor)}"


def _div(g: str, divisor: str) -> str:
    return f"{_paren(g)} / {_atom(divisor)}"


def _neg(g: str) -> str:
    if g.startswith("-") and not _needs_paren(g):
        return g[1:]
    return f"-{_paren(g)}"


# --- a graded submission -----------------------------------------------------------------


def analyse(chain: Chain, wrong: set[str]) -> Optional[ChainReport]:
    """Where the chain broke, given the labels of the wrong outputs; None when every
    gradient in the chain is right."""
    states: dict[str, str] = {}
    roots: dict[str, list[str]] = {}
    breaks: list[str] = []
    # Backward order visits every link after the links it is computed from.
    for link in chain.links:
        if link.label not in wrong:
            states[link.label] = "right"
            continue
        wrong_upstream = [u for u in link.upstream if u in wrong]
        if not wrong_upstream:
            states[link.label] = "broken"
            breaks.append(link.label)
            continue
        states[link.label] = "follows"
        mine: list[str] = []
        for u in wrong_upstream:
            for root in [u] if states.get(u) == "broken" else roots.get(u, []):
                if root not in mine:
                    mine.append(root)
        roots[link.label] = mine
    if not breaks:
        return None
    first = chain.link(breaks[0])
    sentences = [_break_sentence(chain, first)]
    followers = [label for label in roots if breaks[0] in roots[label]]
    if followers:
        names = _join([chain.link(label).symbol for label in followers])
        verb = "is" if len(followers) == 1 else "are"
        they = "it is" if len(followers) == 1 else "they are"
        sentences.append(
            f"{names} {verb} wrong too, but {they} computed from {first.symbol}: fix {first.symbol} first."
        )
    for other in breaks[1:]:
        sentences.append(f"There is another break at {chain.link(other).symbol}: {_break_sentence(chain, chain.link(other))}")
    at = first.symbol + (f" (your output `{first.label}`)" if first.label not in (first.target, first.symbol) else "")
    return ChainReport(chain, states, breaks, roots, at, " ".join(sentences))


def _break_sentence(chain: Chain, link: Link) -> str:
    rule = f"{link.symbol} = {link.formula}" if link.formula else link.symbol
    if link.upstream:
        ups = _join([chain.link(u).symbol for u in link.upstream])
        verb = "is" if len(link.upstream) == 1 else "are"
        text = f"{ups} {verb} right, but {rule} is wrong."
    else:
        text = f"{link.symbol} is the first graded gradient on the way back, and it is wrong."
        if link.formula:
            text += f" It should be {link.formula}."
    return " ".join([text, *link.hints])


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def report_for(fn: Function, wrong: set[str]) -> Optional[ChainReport]:
    """The chain report of one graded function, or None (no chain, or nothing wrong in it)."""
    if not wrong:
        return None  # a correct function pays nothing
    chain = build_chain(fn)
    return None if chain is None else analyse(chain, wrong)


def node_states(stored: Any) -> dict[str, str]:
    """Forward name -> state, read back from a result's stored `chain` entry (tolerating
    anything malformed: an unreadable entry marks nothing). Where two outputs grade the same
    name, the worse verdict shows."""
    rank = {"broken": 2, "follows": 1, "right": 0}
    states: dict[str, str] = {}
    links = stored.get("links") if isinstance(stored, dict) else None
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict):
            continue
        target, state = link.get("target"), link.get("state")
        if isinstance(target, str) and isinstance(state, str) and state in rank and rank[state] >= rank.get(states.get(target, "right"), 0):
            states[target] = state
    return states
