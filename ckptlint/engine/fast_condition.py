"""Rule expressions as small Python closures, for the common case, with Jinja2's meaning.

Running a condition through the Jinja2 sandbox costs ~10-30 us (every attribute goes through
``SandboxedEnvironment.getattr``: a failed ``getattr``, then the mapping lookup); a run makes
one evaluation per rule and subject, thousands of them. Most conditions are a few facts
compared with constants, so an expression whose parsed tree holds only the node types below is
turned into a *program* (plain data: nested tuples, kept in the code cache beside the code) and
the program into a closure over the variables.

The whitelist is the safety argument; nothing else is ever built:

- names are looked up in the variables the evaluator passes (a missing one is Jinja2's
  ``StrictUndefined``, as in the sandbox: its globals are not in a rule's context);
- ``a.b`` with a constant name is a ``Mapping.__getitem__`` only when ``a`` is a mapping whose
  class (and instance) has no attribute ``b`` (which is exactly when the sandbox ends at the same
  lookup); anything else — another object, a name that is an attribute, a missing key — goes
  through the sandbox's own ``getattr``/``getitem``, so ``__class__``, ``mro``, ``keys`` and the
  like are refused or answered exactly as they were;
- no call node is accepted, so no function or method that the sandbox guards is ever called; the
  filters and tests are the environment's own, those of a short list that take no context;
- operators are Python's, as the code Jinja2 generates for them (the sandbox intercepts none);
  ``**`` is left to Jinja2.

Any other node (a call, a slice, ``**``, a dict literal, a filter with keyword arguments...)
means no program: that expression keeps running in the sandbox.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import _PassArg

Program = tuple[Any, ...]
Closure = Callable[[Mapping[str, Any]], Any]

BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv,
    "FloorDiv": operator.floordiv, "Mod": operator.mod}
UNARY: dict[str, Callable[[Any], Any]] = {"Neg": operator.neg, "Pos": operator.pos}
COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
    "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}
FILTERS = frozenset({"abs", "round", "fmt", "length", "count", "int", "float", "string", "lower", "upper",
                     "trim", "capitalize"})
TESTS = frozenset({"none", "defined", "undefined", "number", "string", "integer", "float", "boolean", "true",
                   "false", "sameas", "eq", "ne", "lt", "le", "gt", "ge", "in", "divisibleby", "odd", "even",
                   "lower", "upper", "mapping", "sequence", "iterable"})
CONSTANTS = (str, int, float, bool, type(None))


def _constant(value: Any) -> bool:
    """Whether a constant is plain data (it is kept in the code cache with marshal)."""
    if isinstance(value, tuple):
        return all(_constant(item) for item in value)
    return isinstance(value, CONSTANTS)


def program(node: nodes.Node, environment: SandboxedEnvironment) -> Program | None:
    """``node`` (a parsed expression) as plain data, or None: a node outside the whitelist."""
    try:
        return _program(node, environment)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


def _program(node: nodes.Node, env: SandboxedEnvironment) -> Program:
    each = lambda items: tuple(_program(item, env) for item in items)  # noqa: E731
    kind = type(node).__name__
    if isinstance(node, nodes.Const) and _constant(node.value):
        return ("const", node.value)
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return ("name", node.name)
    if isinstance(node, nodes.Getattr) and node.ctx == "load":
        if isinstance(node.node, nodes.Name) and node.node.ctx == "load":
            return ("nameattr", node.node.name, node.attr)
        return ("attr", _program(node.node, env), node.attr)
    if isinstance(node, nodes.Getitem) and node.ctx == "load" and not isinstance(node.arg, nodes.Slice):
        return ("item", _program(node.node, env), _program(node.arg, env))
    if isinstance(node, (nodes.Tuple, nodes.List)) and getattr(node, "ctx", "load") == "load":
        return (kind.lower(), each(node.items))
    if isinstance(node, (nodes.And, nodes.Or)):
        return (kind.lower(), _program(node.left, env), _program(node.right, env))
    if isinstance(node, nodes.Not):
        return ("not", _program(node.node, env))
    if kind in UNARY:
        return ("unary", kind, _program(node.node, env))  # type: ignore[attr-defined]
    if kind in BINARY:
        return ("binary", kind, _program(node.left, env), _program(node.right, env))  # type: ignore[attr-defined]
    if isinstance(node, nodes.Concat):
        return ("concat", each(node.nodes))
    if isinstance(node, nodes.Compare) and all(op.op in COMPARE for op in node.ops):
        return ("compare", _program(node.expr, env), tuple((op.op, _program(op.expr, env)) for op in node.ops))
    if isinstance(node, nodes.CondExpr) and node.expr2 is not None:
        return ("cond", _program(node.test, env), _program(node.expr1, env), _program(node.expr2, env))
    if isinstance(node, (nodes.Filter, nodes.Test)) and node.node is not None and not (
            node.kwargs or node.dyn_args or node.dyn_kwargs):
        allowed, table = (FILTERS, env.filters) if isinstance(node, nodes.Filter) else (TESTS, env.tests)
        function: Any = table.get(node.name)
        if node.name in allowed and function is not None and _PassArg.from_obj(function) is None:
            return (kind.lower(), node.name, _program(node.node, env), each(node.args))
    raise _Unsupported(kind)


def _chain(op: str, code: Program) -> list[Program]:
    """The operands of nested ``and`` (or ``or``) steps, in order: ``(a and b) and c`` is a, b, c
    (the same values, evaluated and short-circuited in the same order)."""
    if code[0] != op:
        return [code]
    return [*_chain(op, code[1]), *_chain(op, code[2])]


def build(code: Program, environment: SandboxedEnvironment) -> Closure:
    """The closure running ``code`` (a ``program``) over a mapping of variables."""
    return _Builder(environment).build(code)


class _Builder:
    def __init__(self, env: SandboxedEnvironment) -> None:
        self.env = env

    @staticmethod
    def _kind(cls: type, name: str) -> int:
        """How the sandbox's ``getattr(obj, name)`` ends on an instance of ``cls``: 0 unknown, so
        ask it; 1 always at ``obj[name]`` (a mapping whose class answers no attribute ``name``);
        2 the same unless the instance has its own attribute ``name``."""
        plain = (issubclass(cls, Mapping) and name.isidentifier() and not name.startswith("_")
                 and all(k in (object, dict) or "__getattribute__" not in vars(k) for k in cls.__mro__)
                 and not hasattr(cls, "__getattr__") and not hasattr(cls, name))
        return (2 if getattr(cls, "__dictoffset__", 1) else 1) if plain else 0

    def getattr(self, name: str) -> Callable[[Any], Any]:
        """The sandbox's ``getattr(obj, name)``, short-cut for facts (a mapping lookup)."""
        return self._getter(name)[0]

    def _getter(self, name: str) -> tuple[Callable[[Any], Any], dict[type, int]]:
        """``getattr(name)``, and the kinds it has found so far (class -> ``_kind``)."""
        kinds: dict[type, int] = {}  # the class of obj -> _kind
        sandboxed, undefined, kind_of = self.env.getattr, self.env.undefined, self._kind

        def get(obj: Any) -> Any:
            cls = type(obj)
            kind = kinds.get(cls)
            if kind is None:
                kind = kinds[cls] = kind_of(cls, name)
            if kind == 1 or (kind == 2 and name not in obj.__dict__):
                try:
                    return obj[name]
                except (TypeError, LookupError):
                    return undefined(obj=obj, name=name)
            return sandboxed(obj, name)
        return get, kinds

    def build(self, code: Program) -> Closure:
        op = code[0]
        env = self.env
        undefined = env.undefined
        if op == "const":
            value = code[1]
            return lambda v: value
        if op == "name":
            name = code[1]
            return lambda v: v[name] if name in v else undefined(name=name)  # as Jinja2 resolves it
        if op == "nameattr":
            name, attr = code[1], code[2]
            get, kinds = self._getter(attr)

            def name_attr(v: Mapping[str, Any]) -> Any:
                try:
                    obj = v[name]
                except KeyError:
                    obj = undefined(name=name)
                if kinds.get(type(obj)) == 1:  # get's first branch, inlined: rules read millions of facts
                    try:
                        return obj[attr]
                    except (TypeError, LookupError):
                        return undefined(obj=obj, name=attr)
                return get(obj)
            return name_attr
        if op == "attr":
            inner, get = self.build(code[1]), self.getattr(code[2])
            return lambda v: get(inner(v))
        if op == "item":
            inner, arg = self.build(code[1]), self.build(code[2])
            getitem = env.getitem
            return lambda v: getitem(inner(v), arg(v))
        if op == "tuple" and all(item[0] == "const" for item in code[1]):  # ('batchnorm', ...): made once
            constant = tuple(item[1] for item in code[1])
            return lambda v: constant
        if op in ("tuple", "list"):
            items = [self.build(item) for item in code[1]]
            make = tuple if op == "tuple" else list
            return lambda v: make([item(v) for item in items])
        if op in ("and", "or"):
            *head, last = [self.build(term) for term in _chain(op, code)]
            if len(head) == 1:
                left, = head
                return (lambda v: left(v) and last(v)) if op == "and" else (lambda v: left(v) or last(v))
            if op == "and":
                def all_of(v: Mapping[str, Any]) -> Any:  # a and b and c: one call, not one per "and"
                    for term in head:
                        result = term(v)
                        if not result:
                            return result
                    return last(v)
                return all_of

            def any_of(v: Mapping[str, Any]) -> Any:
                for term in head:
                    result = term(v)
                    if result:
                        return result
                return last(v)
            return any_of
        if op == "not":
            inner = self.build(code[1])
            return lambda v: not inner(v)
        if op == "unary":
            unary: Callable[[Any], Any] = UNARY[code[1]]
            inner = self.build(code[2])
            return lambda v: unary(inner(v))
        if op == "binary":
            binary: Callable[[Any, Any], Any] = BINARY[code[1]]
            left, right = self.build(code[2]), self.build(code[3])
            return lambda v: binary(left(v), right(v))
        if op == "concat":
            parts = [self.build(part) for part in code[1]]
            return lambda v: "".join([str(part(v)) for part in parts])  # Jinja2's str_join
        if op == "compare":
            if len(code[2]) == 1 and code[2][0][1][0] == "const":  # tensor.ndim >= 2: no call for the 2
                compare, value, left = COMPARE[code[2][0][0]], code[2][0][1][1], self.build(code[1])
                return lambda v: compare(left(v), value)
            return self._compare(self.build(code[1]), [(COMPARE[o], self.build(c)) for o, c in code[2]])
        if op == "cond":
            test, yes, no = self.build(code[1]), self.build(code[2]), self.build(code[3])
            return lambda v: yes(v) if test(v) else no(v)
        if op in ("filter", "test"):
            function: Any = (env.filters if op == "filter" else env.tests)[code[1]]
            inner = self.build(code[2])
            args = [self.build(arg) for arg in code[3]]
            if not args:
                return lambda v: function(inner(v))
            return lambda v: function(inner(v), *[arg(v) for arg in args])
        raise ValueError(f"unknown program step {op!r}")

    @staticmethod
    def _compare(first: Closure, rest: list[tuple[Callable[[Any, Any], Any], Closure]]) -> Closure:
        """Python's chained comparison (what Jinja2 generates): ``a < b < c``."""
        if len(rest) == 1:
            (function, second), = rest
            return lambda v: function(first(v), second(v))

        def chained(v: Mapping[str, Any]) -> Any:
            left = first(v)
            result: Any = True
            for function, operand in rest:
                right = operand(v)
                result = function(left, right)
                if not result:
                    return result
                left = right
            return result
        return chained
