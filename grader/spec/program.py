"""The forward-definition language of assignment specs.

An instructor writes the forward computation in a small subset of Python syntax:

    z = W1 @ x + b1
    h = relu(z)
    for l in range(len(weights)):
        a = sigmoid(weights[l] @ a + biases[l])
    J = softmax_cross_entropy(o, y) + lam / 2 * (sum_sq(W1) + sum_sq(W2))

It is parsed with `ast` and interpreted node by node against the engine's op registry;
nothing is ever passed to `eval`/`exec`, so a spec can only compute, never run code.
Allowed: assignments to a name, `for NAME in range(...)`, arithmetic (+ - * / ** @, unary -),
calls of registered ops (extra arguments such as `axis=0` must be constants), `len(list)`,
indexing a list with an integer expression, `.T`, numbers, tuples of numbers.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from grader.engine import OPS, Tensor, apply, fp_checked
from grader.spec.limits import MAX_EXECUTED_STATEMENTS, MAX_LOOP_ITERATIONS, MAX_PROGRAM_DEPTH, MAX_PROGRAM_NODES


class ProgramError(ValueError):
    """A forward definition that cannot be parsed, checked or evaluated; names the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


_BINOPS: dict[type, tuple[str, Any]] = {
    ast.Add: ("add", operator.add),
    ast.Sub: ("sub", operator.sub),
    ast.Mult: ("mul", operator.mul),
    ast.Div: ("div", operator.truediv),
    ast.Pow: ("pow", operator.pow),
    ast.MatMult: ("matmul", None),
    ast.FloorDiv: ("", operator.floordiv),  # integer index arithmetic only
    ast.Mod: ("", operator.mod),
}
_BUILTINS = {"len", "range"}


@dataclass
class Program:
    source: str
    tree: ast.Module
    assigned: list[str] = field(default_factory=list)  # in order of first assignment
    # Compiled on first use (see run). _exprs is keyed by id(); each expression is kept
    # alongside so that its id cannot be reused by another.
    _body: Optional[list[_Stmt]] = field(default=None, init=False, repr=False, compare=False)
    _exprs: dict[int, tuple[ast.expr, _Expr]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, source: str) -> Program:
        try:
            tree = ast.parse(source, mode="exec")
        except SyntaxError as exc:
            raise ProgramError(f"syntax error: {exc.msg}", exc.lineno) from None
        except (RecursionError, MemoryError):
            raise ProgramError(f"nested too deeply to parse; the limit is {MAX_PROGRAM_DEPTH} levels") from None
        if not tree.body:
            raise ProgramError("the forward definition is empty")
        _check_size(tree)
        program = cls(source, tree)
        for stmt in tree.body:
            program._check_stmt(stmt, loop_vars=set())
        return program

    # --- static checks -------------------------------------------------------------------

    def _check_stmt(self, stmt: ast.stmt, loop_vars: set[str]) -> None:
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                raise ProgramError("only `name = expression` assignments are allowed", stmt.lineno)
            name = stmt.targets[0].id
            if name in loop_vars:
                raise ProgramError(f"cannot assign to the loop variable {name!r}", stmt.lineno)
            if name in OPS or name in _BUILTINS:
                raise ProgramError(f"{name!r} is an operation name and cannot be assigned", stmt.lineno)
            self._check_expr(stmt.value)
            if name not in self.assigned:
                self.assigned.append(name)
        elif isinstance(stmt, ast.For):
            if not isinstance(stmt.target, ast.Name):
                raise ProgramError("a loop variable must be a single name", stmt.lineno)
            it = stmt.iter
            if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"):
                raise ProgramError("loops must be `for NAME in range(...)`", stmt.lineno)
            if it.keywords or not 1 <= len(it.args) <= 3:
                raise ProgramError("range() takes 1 to 3 positional arguments", stmt.lineno)
            for arg in it.args:
                self._check_expr(arg)
            if stmt.orelse:
                raise ProgramError("`for ... else` is not allowed", stmt.lineno)
            for inner in stmt.body:
                self._check_stmt(inner, loop_vars | {stmt.target.id})
        else:
            raise ProgramError(f"{type(stmt).__name__} statements are not allowed here", stmt.lineno)

    def _check_expr(self, node: ast.expr) -> None:
        line = getattr(node, "lineno", None)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise ProgramError(f"operator {type(node.op).__name__} is not allowed", line)
            self._check_expr(node.left)
            self._check_expr(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise ProgramError(f"operator {type(node.op).__name__} is not allowed", line)
            self._check_expr(node.operand)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise ProgramError("only operations can be called, e.g. relu(z)", line)
            name = node.func.id
            if name == "len":
                if len(node.args) != 1 or node.keywords:
                    raise ProgramError("len() takes exactly one argument", line)
            elif name == "range":
                raise ProgramError("range() is only allowed as a loop's iterable", line)
            elif name in OPS:
                op = OPS[name]
                if len(node.args) > op.arity + len(op.params):
                    raise ProgramError(
                        f"{name}() takes at most {op.arity + len(op.params)} positional arguments", line
                    )
                for kw in node.keywords:
                    if kw.arg not in op.params:
                        allowed = ", ".join(op.params) or "none"
                        raise ProgramError(f"{name}() has no argument {kw.arg!r} (allowed: {allowed})", line)
                    _constant(kw.value)
            else:
                raise ProgramError(f"unknown operation {name!r}; known: {', '.join(sorted(OPS))}", line)
            for arg in node.args:
                self._check_expr(arg)
        elif isinstance(node, ast.Name):
            pass
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
                raise ProgramError(f"constant {node.value!r} is not a number", line)
        elif isinstance(node, ast.Subscript):
            if isinstance(node.slice, ast.Slice):
                raise ProgramError("slices are not allowed; index a list with an integer", line)
            self._check_expr(node.value)
            self._check_expr(node.slice)
        elif isinstance(node, ast.Attribute):
            if node.attr != "T":
                raise ProgramError(f"attribute .{node.attr} is not allowed (only .T)", line)
            self._check_expr(node.value)
        elif isinstance(node, ast.Tuple):
            _constant(node)
        else:
            raise ProgramError(f"{type(node).__name__} expressions are not allowed", line)

    def check_names(self, known: Iterable[str]) -> None:
        """Fail if a name is read before anything defines it (inputs count as defined)."""
        defined = set(known)

        def expr_names(node: ast.AST) -> Iterable[ast.Name]:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                    yield sub

        def visit(stmts: list[ast.stmt], scope: set[str]) -> None:
            for stmt in stmts:
                if isinstance(stmt, ast.Assign):
                    for ref in expr_names(stmt.value):
                        if ref.id not in scope and ref.id not in OPS and ref.id not in _BUILTINS:
                            raise ProgramError(f"name {ref.id!r} is used before it is defined", ref.lineno)
                    scope.add(stmt.targets[0].id)  # type: ignore[union-attr]
                elif isinstance(stmt, ast.For):
                    for ref in expr_names(stmt.iter):
                        if ref.id not in scope and ref.id not in _BUILTINS:
                            raise ProgramError(f"name {ref.id!r} is used before it is defined", ref.lineno)
                    inner = scope | {stmt.target.id}  # type: ignore[union-attr]
                    visit(stmt.body, inner)
                    scope.update(inner - {stmt.target.id})  # type: ignore[union-attr]

        visit(self.tree.body, defined)

    # --- evaluation ----------------------------------------------------------------------
    # Each statement and expression is compiled once into a closure: walking the tree with
    # isinstance dispatch per node cost more than the ops themselves on a trial's small arrays.

    def run(self, env: dict[str, Any]) -> dict[str, Any]:
        """Evaluate into a copy of `env` (inputs: Tensors, ints, floats, lists of Tensors)."""
        body = self._body
        if body is None:
            body = self._body = [_compile_stmt(stmt) for stmt in self.tree.body]
        scope = dict(env)
        steps = [0]  # statements executed so far, shared by nested loops
        # The interpreter's own arithmetic is on Python numbers, so all NumPy work here is
        # op forwards, which raise on floating-point errors anyway.
        with fp_checked():
            for stmt in body:
                stmt(scope, steps)
        return scope

    def evaluate(self, expr: ast.expr, env: dict[str, Any]) -> Any:
        compiled = self._exprs.get(id(expr))
        if compiled is None or compiled[0] is not expr:
            compiled = self._exprs[id(expr)] = (expr, _compile_expr(expr))
        with fp_checked():
            return compiled[1](env)


_Expr = Callable[[dict[str, Any]], Any]
_Stmt = Callable[[dict[str, Any], list[int]], None]
# Errors of NumPy, the ops and Python arithmetic that become a ProgramError naming the line of
# the innermost expression that raised them.
_EVAL_ERRORS = (TypeError, ValueError, IndexError, FloatingPointError, ZeroDivisionError)


def _count_step(executed: list[int], line: int) -> None:
    executed[0] += 1
    if executed[0] > MAX_EXECUTED_STATEMENTS:
        # Each loop is capped, but nested loops multiply; one trial must stay quick.
        raise ProgramError(
            f"the forward definition executes more than {MAX_EXECUTED_STATEMENTS:,} statements (nested loops?)",
            line,
        )


def _compile_stmt(stmt: ast.stmt) -> _Stmt:
    line = stmt.lineno
    if isinstance(stmt, ast.Assign):
        target: str = stmt.targets[0].id  # type: ignore[attr-defined]
        value = _compile_expr(stmt.value)

        def assign(env: dict[str, Any], executed: list[int]) -> None:
            _count_step(executed, line)
            env[target] = value(env)

        return assign
    assert isinstance(stmt, ast.For)
    bound_exprs = [_compile_expr(a) for a in stmt.iter.args]  # type: ignore[attr-defined]
    var: str = stmt.target.id  # type: ignore[attr-defined]
    body = [_compile_stmt(inner) for inner in stmt.body]

    def loop(env: dict[str, Any], executed: list[int]) -> None:
        _count_step(executed, line)
        bounds = [b(env) for b in bound_exprs]
        if not all(isinstance(b, int) for b in bounds):
            raise ProgramError("range() needs integer bounds", line)
        steps = range(*bounds)
        if len(steps) > MAX_LOOP_ITERATIONS:
            raise ProgramError(f"loop of {len(steps)} iterations exceeds {MAX_LOOP_ITERATIONS}", line)
        for i in steps:
            env[var] = i
            for inner in body:
                inner(env, executed)

    return loop


def _compile_expr(node: ast.expr) -> _Expr:
    line = getattr(node, "lineno", None)
    if isinstance(node, ast.Name):
        name = node.id

        def load(env: dict[str, Any]) -> Any:
            if name not in env:
                raise ProgramError(f"name {name!r} is not defined", line)
            return env[name]

        return load
    if isinstance(node, ast.Constant):
        constant = node.value
        return lambda env: constant
    if isinstance(node, ast.Tuple):
        return lambda env: _constant(node)
    if isinstance(node, ast.UnaryOp):
        return _compile_unary(node, line)
    if isinstance(node, ast.BinOp):
        return _compile_binop(node, line)
    if isinstance(node, ast.Call):
        return _compile_call(node, line)
    if isinstance(node, ast.Subscript):
        return _compile_subscript(node, line)
    if isinstance(node, ast.Attribute):
        value = _compile_expr(node.value)

        def transpose(env: dict[str, Any]) -> Any:
            operand = value(env)
            if not isinstance(operand, Tensor):
                raise ProgramError(".T needs an array", line)
            try:
                return operand.T
            except ProgramError:
                raise
            except _EVAL_ERRORS as exc:
                raise ProgramError(str(exc), line) from None

        return transpose
    kind = type(node).__name__

    def unknown(env: dict[str, Any]) -> Any:
        raise ProgramError(f"cannot evaluate {kind}", line)

    return unknown


def _compile_unary(node: ast.UnaryOp, line: Optional[int]) -> _Expr:
    operand = _compile_expr(node.operand)
    if isinstance(node.op, ast.UAdd):
        return operand

    def negate(env: dict[str, Any]) -> Any:
        value = operand(env)
        try:
            return apply(OPS["neg"], value) if isinstance(value, Tensor) else -value
        except ProgramError:
            raise
        except _EVAL_ERRORS as exc:
            raise ProgramError(str(exc), line) from None

    return negate


def _compile_binop(node: ast.BinOp, line: Optional[int]) -> _Expr:
    left_expr, right_expr = _compile_expr(node.left), _compile_expr(node.right)
    op_name, py_op = _BINOPS[type(node.op)]

    def binop(env: dict[str, Any]) -> Any:
        left, right = left_expr(env), right_expr(env)
        try:
            if isinstance(left, Tensor) or isinstance(right, Tensor) or op_name == "matmul":
                if not op_name:
                    raise ProgramError("// and % are for integer index arithmetic only", line)
                if isinstance(left, list) or isinstance(right, list):
                    raise ProgramError("arithmetic on a whole list; index it first, e.g. weights[l]", line)
                return apply(OPS[op_name], left, right)
            if isinstance(left, list) or isinstance(right, list):
                raise ProgramError("arithmetic on a whole list; index it first, e.g. weights[l]", line)
            return py_op(left, right)
        except ProgramError:
            raise
        except _EVAL_ERRORS as exc:
            raise ProgramError(str(exc), line) from None

    return binop


def _compile_call(node: ast.Call, line: Optional[int]) -> _Expr:
    name: str = node.func.id  # type: ignore[attr-defined]
    arg_exprs = [_compile_expr(a) for a in node.args]
    if name == "len":

        def length(env: dict[str, Any]) -> Any:
            args = [a(env) for a in arg_exprs]
            try:
                if not isinstance(args[0], list):
                    raise ProgramError("len() takes a list input", line)
                return len(args[0])
            except ProgramError:
                raise
            except _EVAL_ERRORS as exc:
                raise ProgramError(str(exc), line) from None

        return length
    keywords = [(kw.arg, kw.value) for kw in node.keywords]

    def call(env: dict[str, Any]) -> Any:
        args = [a(env) for a in arg_exprs]
        try:
            kwargs = {key: _constant(value) for key, value in keywords}
            return apply(OPS[name], *args, **kwargs)
        except ProgramError:
            raise
        except _EVAL_ERRORS as exc:
            raise ProgramError(str(exc), line) from None

    return call


def _compile_subscript(node: ast.Subscript, line: Optional[int]) -> _Expr:
    container_expr, index_expr = _compile_expr(node.value), _compile_expr(node.slice)

    def subscript(env: dict[str, Any]) -> Any:
        container, index = container_expr(env), index_expr(env)
        if not isinstance(container, list):
            raise ProgramError("only list inputs can be indexed", line)
        if not isinstance(index, int):
            raise ProgramError("a list index must be an integer", line)
        if not -len(container) <= index < len(container):
            raise ProgramError(f"index {index} is out of range for a list of {len(container)}", line)
        return container[index]

    return subscript


def _check_size(tree: ast.Module) -> None:
    """Count and measure depth without recursion: the checks below recurse per level."""
    count = 0
    stack: list[tuple[ast.AST, int, Optional[int]]] = [(tree, 0, None)]
    while stack:
        node, depth, line = stack.pop()
        line = getattr(node, "lineno", line)
        count += 1
        if count > MAX_PROGRAM_NODES:
            raise ProgramError(f"the definition has more than {MAX_PROGRAM_NODES:,} syntax nodes (names, numbers, operators)")
        if depth > MAX_PROGRAM_DEPTH:
            raise ProgramError(
                f"an expression nests more than {MAX_PROGRAM_DEPTH} levels deep; split it into several assignments", line
            )
        stack.extend((child, depth + 1, line) for child in ast.iter_child_nodes(node))


def _constant(node: ast.expr) -> Any:
    """A literal op argument: a number, True/False/None, or a tuple of them."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (int, float, bool))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _constant(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.Tuple):
        return tuple(_constant(e) for e in node.elts)
    raise ProgramError("op options such as axis= must be constants", getattr(node, "lineno", None))


def parse_expression(source: str) -> tuple[Program, ast.expr]:
    """Parse a single expression (used by constraints) with the same rules."""
    program = Program.parse(f"__value__ = {source}")
    stmt = program.tree.body[0]
    assert isinstance(stmt, ast.Assign)
    return program, stmt.value
