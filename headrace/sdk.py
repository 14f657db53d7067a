"""A small, typed Python SDK that writes workflows in the spec format.

The SDK builds the same plain mapping a YAML file would hold and hands it to `parse_workflow`,
so there is one validator and one IR: a workflow written here and the same workflow written in
YAML have the same `ir_hash`. Only the keys you set appear, so defaults behave as in YAML.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypedDict, Unpack

from headrace.errors import SpecError
from headrace.spec.ir import WorkflowIR
from headrace.spec.parse import parse_workflow

__all__ = ["Expr", "Node", "NodeOptions", "WaitOptions", "Workflow", "ref"]

_OR, _AND, _NOT, _CMP, _ATOM = 1, 2, 3, 4, 9  # precedence, loosest first


def _binary(op: str, level: int, operand: int) -> Callable[[Expr, object], Expr]:
    """An operator method: both sides at least as tight as `operand`, the result at `level`."""

    def apply(self: Expr, other: object) -> Expr:
        rhs = other._wrap(operand) if isinstance(other, Expr) else _literal(other)
        return Expr(f"{self._wrap(operand)} {op} {rhs}", level)

    return apply


class Expr:
    """An expression path or formula; `str()` gives `${{ source }}` (also inside f-strings).

    Attribute access and `[key]` extend the path; `> < >= <= == !=` compare, and `&`, `|`, `~`
    stand for `and`, `or`, `not`. An Expr has no public attributes, so any key name works.
    """

    __slots__ = ("_level", "_source")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, source: str, level: int = _ATOM) -> None:
        self._source = source
        self._level = level

    def __getattr__(self, name: str) -> Expr:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, key: str | int) -> Expr:
        if isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key):
            return Expr(f"{self._wrap(_ATOM)}.{key}")
        return Expr(f"{self._wrap(_ATOM)}[{_literal(key)}]")

    def __str__(self) -> str:
        return f"${{{{ {self._source} }}}}"

    def __repr__(self) -> str:
        return f"Expr({self._source!r})"

    def __bool__(self) -> NoReturn:
        raise TypeError("an Expr has no truth value: use &, | and ~ instead of and, or, not")

    def __iter__(self) -> NoReturn:
        raise TypeError("an Expr is not iterable")

    def _wrap(self, level: int) -> str:
        """The source, in parentheses unless it binds at least as tightly as `level`."""
        return self._source if self._level >= level else f"({self._source})"

    __gt__ = _binary(">", _CMP, _CMP + 1)
    __lt__ = _binary("<", _CMP, _CMP + 1)
    __ge__ = _binary(">=", _CMP, _CMP + 1)
    __le__ = _binary("<=", _CMP, _CMP + 1)
    __eq__ = _binary("==", _CMP, _CMP + 1)  # type: ignore[assignment]
    __ne__ = _binary("!=", _CMP, _CMP + 1)  # type: ignore[assignment]
    __and__ = _binary("and", _AND, _AND)
    __or__ = _binary("or", _OR, _OR)

    def __invert__(self) -> Expr:
        return Expr(f"not {self._wrap(_NOT)}", _NOT)


def ref(name: str) -> Expr:
    """Start a path at any root: `ref("item").sku`, `ref("vars").url`, `ref("secrets").token`."""
    return Expr(name)


def _literal(value: object) -> str:
    """A Python value as an expression literal: `100`, `'text'`, `null`, `true`, `[1, 2]`."""
    if isinstance(value, Expr):
        return value._source
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} in an expression")


def _plain(value: Any) -> Any:
    """Copy a value into spec form: every Expr becomes its `${{ }}` string."""
    if isinstance(value, Expr):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Node:
    """A node added to a Workflow; pass it in `needs` or read its `output`."""

    id: str

    @property
    def output(self) -> Expr:
        """The node's output, `nodes.<id>.output`."""
        return Expr(f"nodes.{self.id}.output")


class WaitOptions(TypedDict, total=False):
    """Options every node takes (a wait node's timeout is its own, see `Workflow.wait`)."""

    needs: Node | str | Sequence[Node | str] | None
    when: Expr | str | bool | None
    with_: Mapping[str, Any] | Expr | None
    retry: Mapping[str, Any] | None
    priority: str | None
    description: str | None


class NodeOptions(WaitOptions, total=False):
    """Options of task, http and agent nodes: the common ones plus timeout and map."""

    timeout: str | int | None
    map: Expr | str | None
    as_: str | None
    max_concurrency: int | None


class Workflow:
    """A workflow under construction; `build()` validates it into a `WorkflowIR`."""

    def __init__(
        self,
        name: str,
        version: int = 1,
        *,
        inputs: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self._top = {"inputs": inputs, "defaults": defaults, "description": description}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._outputs: dict[str, Any] = {}

    @property
    def inputs(self) -> Expr:
        """The run's inputs: `wf.inputs.order_id` is `inputs.order_id`."""
        return Expr("inputs")

    def task(self, id: str, fn: str | Callable[..., Any], **opts: Unpack[NodeOptions]) -> Node:
        """Add a task node running `fn` (a dotted name, or a function named by its module)."""
        name = fn if isinstance(fn, str) else f"{fn.__module__}.{fn.__qualname__}"
        return self._add(id, "task", name, dict(opts))

    def http(
        self,
        id: str,
        *,
        url: str | Expr,
        method: str | None = None,
        headers: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        json: Any = None,
        body: Any = None,
        auth: Mapping[str, Any] | None = None,
        expect_status: Sequence[int] | None = None,
        **opts: Unpack[NodeOptions],
    ) -> Node:
        """Add an HTTP request node; secrets may be used in headers and auth."""
        spec: dict[str, Any] = {"method": method, "url": url, "headers": headers, "query": query}
        spec |= {"json": json, "body": body, "auth": auth, "expect_status": expect_status}
        return self._add(id, "http", spec, dict(opts))

    def agent(
        self,
        id: str,
        *,
        command: Sequence[str | Expr],
        env: str | None = None,
        limits: Mapping[str, Any] | None = None,
        env_vars: Mapping[str, Any] | None = None,
        workdir: str | None = None,
        **opts: Unpack[NodeOptions],
    ) -> Node:
        """Add a node running `command` in an execution environment (`local`)."""
        spec: dict[str, Any] = {"env": env, "command": command, "limits": limits}
        spec |= {"env_vars": env_vars, "workdir": workdir}
        return self._add(id, "agent", spec, dict(opts))

    def wait(
        self, id: str, *, signal: str, timeout: str | int | None = None, **opts: Unpack[WaitOptions]
    ) -> Node:
        """Add a node that waits for `signal` (at most `timeout`, if given)."""
        return self._add(id, "wait", {"signal": signal, "timeout": timeout}, dict(opts))

    def outputs(self, values: Mapping[str, Any] | None = None, /, **named: Any) -> None:
        """Set (or add to) the workflow's outputs."""
        self._outputs.update(values or {}, **named)

    def _add(self, id: str, kind: str, spec: Any, opts: dict[str, Any]) -> Node:
        if id in self._nodes:
            raise SpecError(f"nodes.{id}", "a node with this id is already defined")
        needs = opts.pop("needs", None)
        if isinstance(needs, Node | str):
            needs = [needs]
        if needs is not None:
            opts["needs"] = [n.id if isinstance(n, Node) else n for n in needs]
        if isinstance(spec, dict):
            spec = {k: v for k, v in spec.items() if v is not None}
        raw = {k.rstrip("_"): v for k, v in opts.items() if v is not None}
        self._nodes[id] = {**raw, kind: spec}
        return Node(id)

    def to_dict(self) -> dict[str, Any]:
        """The workflow as a plain mapping in the spec format (what YAML would hold)."""
        doc = {"name": self.name, "version": self.version, **self._top}
        doc |= {"nodes": self._nodes, "outputs": self._outputs or None}
        return {k: _plain(v) for k, v in doc.items() if v is not None}

    def build(self) -> WorkflowIR:
        """Validate the workflow and build its IR; raises SpecError naming the bad field."""
        return parse_workflow(self.to_dict())
