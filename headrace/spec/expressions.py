"""Safe `${{ ... }}` expressions, compiled once into closures.

The language is a small, Python-shaped subset: literals (`null`, `true`, `false` too), dotted
access, indexing, arithmetic, comparison, `and`/`or`/`not`, `x if c else y`, list and dict
literals, and the functions in `FUNCTIONS`. There is no attribute access to Python objects (a
dot reads a key of a JSON object), no imports and no other calls, so an expression can read
only the names it is given.

Null-safety follows GitHub Actions: reading a field or an index of null, or a missing key,
gives null; ordering comparisons with null are false. Anything else that does not fit raises
`ExprError` when evaluated.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from headrace.errors import HeadraceError

Evaluator = Callable[[Mapping[str, Any]], Any]

_LITERAL_NAMES: dict[str, Any] = {"null": None, "true": True, "false": False}


class ExprError(HeadraceError):
    """An expression could not be evaluated (e.g. adding text to a number)."""


@dataclass(frozen=True)
class Ref:
    """A name path an expression reads, e.g. ('nodes', 'total') or ('inputs', 'order_id')."""

    root: str
    key: str | None


@dataclass(frozen=True)
class SecretRef:
    """Stands for a deployment secret until the worker resolves it (never stored in clear)."""

    name: str


@dataclass
class Expr:
    """One compiled expression: its source, the names it reads and its evaluator."""

    source: str
    refs: frozenset[Ref]
    evaluate: Evaluator = field(repr=False, compare=False)


# --- functions -------------------------------------------------------------------------------


def _len(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, str | list | dict):
        return len(x)
    raise ExprError(f"len() takes text, a list or an object, not {_type_name(x)}")


def _default(x: Any, fallback: Any) -> Any:
    return fallback if x is None else x


def _contains(haystack: Any, needle: Any) -> bool:
    if haystack is None:
        return False
    if isinstance(haystack, str):
        return isinstance(needle, str) and needle in haystack
    if isinstance(haystack, list | dict):
        return needle in haystack
    raise ExprError(f"contains() takes text, a list or an object, not {_type_name(haystack)}")


def _join(items: Any, sep: Any = ",") -> str:
    if not isinstance(items, list):
        raise ExprError(f"join() takes a list, not {_type_name(items)}")
    return str(sep).join(to_text(i) for i in items)


def _num(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        for a in args:
            if not _is_number(a) and not isinstance(a, list):
                raise ExprError(f"{name}() takes numbers, not {_type_name(a)}")
        return fn(*args)

    return call


def _text(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def call(s: Any, *args: Any) -> Any:
        if not isinstance(s, str):
            raise ExprError(f"{name}() takes text, not {_type_name(s)}")
        return fn(s, *args)

    return call


def _to_int(x: Any) -> int:
    try:
        return int(x)
    except (TypeError, ValueError) as e:
        raise ExprError(f"int() cannot convert {x!r}") from e


def _to_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError) as e:
        raise ExprError(f"float() cannot convert {x!r}") from e


def _fromjson(x: Any) -> Any:
    try:
        return json.loads(x)
    except (TypeError, ValueError) as e:
        raise ExprError(f"fromjson() got invalid JSON: {e}") from e


def _keys(x: Any) -> list[Any]:
    if not isinstance(x, dict):
        raise ExprError(f"keys() takes an object, not {_type_name(x)}")
    return list(x)


def _values(x: Any) -> list[Any]:
    if not isinstance(x, dict):
        raise ExprError(f"values() takes an object, not {_type_name(x)}")
    return list(x.values())


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": _len,
    "default": _default,
    "contains": _contains,
    "join": _join,
    "str": lambda x: to_text(x),
    "int": _to_int,
    "float": _to_float,
    "abs": _num(abs, "abs"),
    "round": _num(round, "round"),
    "min": _num(min, "min"),
    "max": _num(max, "max"),
    "sum": _num(
        lambda xs: math.fsum(xs) if any(isinstance(x, float) for x in xs) else sum(xs), "sum"
    ),
    "lower": _text(str.lower, "lower"),
    "upper": _text(str.upper, "upper"),
    "trim": _text(str.strip, "trim"),
    "startswith": _text(str.startswith, "startswith"),
    "endswith": _text(str.endswith, "endswith"),
    "split": _text(lambda s, sep=",": s.split(sep), "split"),
    "keys": _keys,
    "values": _values,
    "tojson": lambda x: json.dumps(x, separators=(",", ":"), sort_keys=True),
    "fromjson": _fromjson,
}

# --- values ----------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _type_name(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if _is_number(x):
        return "number"
    if isinstance(x, str):
        return "text"
    if isinstance(x, list):
        return "list"
    if isinstance(x, Mapping):
        return "object"
    return type(x).__name__


def to_text(x: Any) -> str:
    """How a value reads inside text: null is empty, JSON for lists and objects."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, list | dict):
        return json.dumps(x, separators=(",", ":"))
    return str(x)


def _get_field(obj: Any, name: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict | Mapping):
        return obj.get(name)
    if isinstance(obj, list | str):
        if isinstance(name, bool) or not isinstance(name, int):
            raise ExprError(f"a {_type_name(obj)} is indexed by a whole number, not {name!r}")
        return obj[name] if -len(obj) <= name < len(obj) else None
    raise ExprError(f"cannot read {name!r} of {_type_name(obj)}")


def _arith(op: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        ok = (_is_number(a) and _is_number(b)) or (
            symbol == "+" and type(a) is type(b) and isinstance(a, str | list)
        )
        if not ok:
            raise ExprError(f"cannot apply {symbol} to {_type_name(a)} and {_type_name(b)}")
        try:
            return op(a, b)
        except ZeroDivisionError as e:
            raise ExprError("division by zero") from e

    return apply


def _order(op: Callable[[Any, Any], bool], symbol: str) -> Callable[[Any, Any], bool]:
    def apply(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        if (_is_number(a) and _is_number(b)) or (type(a) is type(b) and isinstance(a, str)):
            return op(a, b)
        raise ExprError(f"cannot compare {_type_name(a)} {symbol} {_type_name(b)}")

    return apply


def _membership(a: Any, b: Any) -> bool:
    return _contains(b, a)


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _arith(operator.add, "+"),
    ast.Sub: _arith(operator.sub, "-"),
    ast.Mult: _arith(operator.mul, "*"),
    ast.Div: _arith(operator.truediv, "/"),
    ast.FloorDiv: _arith(operator.floordiv, "//"),
    ast.Mod: _arith(operator.mod, "%"),
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: _order(operator.lt, "<"),
    ast.LtE: _order(operator.le, "<="),
    ast.Gt: _order(operator.gt, ">"),
    ast.GtE: _order(operator.ge, ">="),
    ast.In: _membership,
    ast.NotIn: lambda a, b: not _membership(a, b),
}


_truthy = bool  # JSON truthiness is Python's: null, false, 0, "", [] and {} are false


# --- compiler --------------------------------------------------------------------------------


class _Compiler:
    """Turns an `ast` tree into nested closures, recording the names it reads."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.refs: set[Ref] = set()  # what it reads, with the key where it is literal

    def fail(self, message: str) -> ExprError:
        return ExprError(f"{message} in `{_clip(self.source)}`")

    def compile(self, node: ast.AST) -> Evaluator:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise self.fail(f"{type(node).__name__} is not allowed")
        result: Evaluator = method(node)
        return result

    def _Constant(self, node: ast.Constant) -> Evaluator:
        value = node.value
        if not (value is None or isinstance(value, bool | int | float | str)):
            raise self.fail(f"literal {value!r} is not allowed")
        return lambda ctx: value

    def _Name(self, node: ast.Name, key: str | None = None) -> Evaluator:
        """A name read alone, or (with `key`) as the base of `name.key` or `name['key']`."""
        name = node.id
        if name in _LITERAL_NAMES:
            literal = _LITERAL_NAMES[name]
            return lambda ctx: literal
        self.refs.add(Ref(name, key))

        def read(ctx: Mapping[str, Any]) -> Any:
            try:
                return ctx[name]
            except KeyError:
                raise ExprError(f"unknown name {name!r}") from None

        return read

    def _Attribute(self, node: ast.Attribute) -> Evaluator:
        attr = node.attr
        if isinstance(node.value, ast.Name) and node.value.id == "secrets":
            self.refs.add(Ref("secrets", attr))
            secret = SecretRef(attr)
            return lambda ctx: secret
        inner = self._base(node.value, attr)
        return lambda ctx: _get_field(inner(ctx), attr)

    def _Subscript(self, node: ast.Subscript) -> Evaluator:
        if isinstance(node.slice, ast.Slice):
            raise self.fail("slices are not allowed")
        literal = node.slice.value if isinstance(node.slice, ast.Constant) else None
        inner = self._base(node.value, literal if isinstance(literal, str) else None)
        index = self.compile(node.slice)
        return lambda ctx: _get_field(inner(ctx), index(ctx))

    def _base(self, node: ast.expr, key: str | None) -> Evaluator:
        if isinstance(node, ast.Name):
            return self._Name(node, key)
        return self.compile(node)

    def _BinOp(self, node: ast.BinOp) -> Evaluator:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.fail(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda ctx: op(left(ctx), right(ctx))

    def _UnaryOp(self, node: ast.UnaryOp) -> Evaluator:
        operand = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda ctx: not _truthy(operand(ctx))
        if isinstance(node.op, ast.USub):
            return lambda ctx: _arith(operator.sub, "-")(0, operand(ctx))
        if isinstance(node.op, ast.UAdd):
            return lambda ctx: _arith(operator.add, "+")(0, operand(ctx))
        raise self.fail("operator ~ is not allowed")

    def _BoolOp(self, node: ast.BoolOp) -> Evaluator:
        parts = [self.compile(v) for v in node.values]
        if isinstance(node.op, ast.And):

            def all_of(ctx: Mapping[str, Any]) -> Any:
                value: Any = True
                for part in parts:
                    value = part(ctx)
                    if not _truthy(value):
                        return value
                return value

            return all_of

        def any_of(ctx: Mapping[str, Any]) -> Any:
            value: Any = False
            for part in parts:
                value = part(ctx)
                if _truthy(value):
                    return value
            return value

        return any_of

    def _Compare(self, node: ast.Compare) -> Evaluator:
        first = self.compile(node.left)
        ops = []
        for op, right in zip(node.ops, node.comparators, strict=True):
            fn = _CMPOPS.get(type(op))
            if fn is None:
                raise self.fail(f"comparison {type(op).__name__} is not allowed")
            ops.append((fn, self.compile(right)))

        def compare(ctx: Mapping[str, Any]) -> bool:
            left = first(ctx)
            for fn, right in ops:
                value = right(ctx)
                if not fn(left, value):
                    return False
                left = value
            return True

        return compare

    def _IfExp(self, node: ast.IfExp) -> Evaluator:
        test, body, other = (self.compile(n) for n in (node.test, node.body, node.orelse))
        return lambda ctx: body(ctx) if _truthy(test(ctx)) else other(ctx)

    def _List(self, node: ast.List) -> Evaluator:
        items = [self.compile(e) for e in node.elts]
        return lambda ctx: [item(ctx) for item in items]

    def _Dict(self, node: ast.Dict) -> Evaluator:
        if any(k is None for k in node.keys):
            raise self.fail("** is not allowed")
        pairs = [
            (self.compile(k), self.compile(v))
            for k, v in zip(node.keys, node.values, strict=False)
            if k is not None
        ]
        return lambda ctx: {k(ctx): v(ctx) for k, v in pairs}

    def _Call(self, node: ast.Call) -> Evaluator:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise self.fail(f"only these functions may be called: {allowed}")
        if node.keywords:
            raise self.fail("keyword arguments are not allowed")
        fn = FUNCTIONS[node.func.id]
        name = node.func.id
        args = [self.compile(a) for a in node.args]

        def call(ctx: Mapping[str, Any]) -> Any:
            try:
                return fn(*(a(ctx) for a in args))
            except ExprError:
                raise
            except (TypeError, ValueError) as e:
                raise ExprError(f"{name}(): {e}") from e

        return call


@lru_cache(maxsize=32768)
def compile_expr(source: str) -> Expr:
    """Compile the text between `${{` and `}}`; raises ExprError if it is not allowed.

    Cached: a workflow's expressions are compiled when it is checked and again for its plan,
    and an `Expr` is never changed."""
    text = source.strip()
    if not text:
        raise ExprError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
        compiler = _Compiler(text)
        inner = compiler.compile(tree.body)
    except SyntaxError as e:
        raise ExprError(f"syntax error in `{_clip(text)}`: {e.msg}") from None
    except (RecursionError, MemoryError):  # the parser's own stack gives MemoryError
        raise ExprError(f"expression is nested too deeply: `{text[:80]}`") from None

    def evaluate(ctx: Mapping[str, Any]) -> Any:
        try:
            return inner(ctx)
        except ExprError:
            raise
        except (TypeError, ValueError, ArithmeticError, RecursionError) as e:
            # e.g. an unhashable key ({[1]: 2}), int(1e999), a huge int / 3
            raise ExprError(f"cannot evaluate `{_clip(text)}`: {e}") from e

    return Expr(text, frozenset(compiler.refs), evaluate)


def is_templated(value: Any) -> bool:
    """Whether a string holds at least one `${{ }}`."""
    return isinstance(value, str) and "${{" in value


def split_template(text: str) -> Sequence[str | Expr]:
    """Split text into literal pieces and compiled expressions.

    A scan with `str.find`, linear in the text: each `${{` is closed by the first `}}` after
    it, and one left open is an error at once (a lazy regex rescanned the rest of the text
    for every open `${{`, which was quadratic).
    """
    parts: list[str | Expr] = []
    pos = 0
    while (start := text.find("${{", pos)) != -1:
        end = text.find("}}", start + 3)
        if end == -1:
            raise ExprError(f"unclosed `${{{{` in {_excerpt(text, start)}")
        if start > pos:
            parts.append(text[pos:start])
        parts.append(compile_expr(text[start + 3 : end]))
        pos = end + 2
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def _clip(source: str) -> str:
    return source if len(source) <= 200 else source[:200] + "..."


def _excerpt(text: str, at: int) -> str:
    """`text` quoted, or the part of it from `at` when it is long."""
    if len(text) <= 80:
        return repr(text)
    return f"{text[at : at + 40]!r}... (at character {at})"
