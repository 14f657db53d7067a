"""Workflow text (YAML or JSON) or a plain dict -> validated `WorkflowIR`.

Every error is a `SpecError` whose `path` names the field (`nodes.price.retry.max_attempts`).
Nothing is stored by this module; callers store only what parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
import yaml

from headrace.errors import SpecError
from headrace.spec.durations import parse_duration_ms
from headrace.spec.expressions import Expr, ExprError, compile_expr, split_template
from headrace.spec.ir import (
    KINDS,
    PRIORITIES,
    AgentSpec,
    HttpSpec,
    MapSpec,
    Node,
    Retry,
    WaitSpec,
    WorkflowIR,
)
from headrace.spec.schemas import check_input_schema
from headrace.spec.sizes import parse_memory_bytes
from headrace.spec.values import join_path, json_problem

BUILTIN_RETRY: dict[str, Any] = {
    "max_attempts": 3,
    "backoff": "exponential",
    "initial_interval": "1s",
    "max_interval": "60s",
}
BUILTIN_TIMEOUT = "5m"
BUILTIN_PRIORITY = "normal"

# used with fullmatch: `$` alone also matches before a trailing newline
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_NODE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")
_SECRET_EXPR = re.compile(r"secrets\.[A-Za-z_][A-Za-z0-9_]*")
MAX_VERSION = 2**31 - 1  # the store's column is a 32-bit integer on Postgres
_TOP_KEYS = {"name", "version", "description", "inputs", "defaults", "nodes", "outputs"}
_COMMON_KEYS = {"needs", "when", "with", "retry", "timeout", "priority", "description"}
_MAP_KEYS = {"map", "as", "max_concurrency"}
_RETRY_KEYS = {"max_attempts", "backoff", "initial_interval", "max_interval"}
_HTTP_KEYS = {"method", "url", "headers", "query", "json", "body", "auth", "expect_status"}
_AGENT_KEYS = {"env", "command", "limits", "env_vars", "workdir"}
_WAIT_KEYS = {"signal", "timeout"}
_ENVS = {"local"}
ROOTS = frozenset({"inputs", "nodes", "vars"})


_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built with it


class _Loader(_Base):  # type: ignore[misc]
    """Safe YAML without aliases, and dates left as text (JSON has no dates).

    A few bytes of `*alias` could expand to millions of nodes. The C parser composes an
    alias as the anchored node again, so the second time a node is constructed is an alias.
    """

    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
        for first, resolvers in _Base.yaml_implicit_resolvers.items()
    }

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        if node in self.constructed_objects or node in self.recursive_objects:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "YAML aliases (*name) are not allowed: this anchored node is reused",
                node.start_mark,
            )
        return super().construct_object(node, deep)


def load_text(text: str | bytes) -> dict[str, Any]:
    """Parse YAML (JSON is YAML too) into a mapping."""
    doc = _json_object(text)
    try:
        doc = yaml.load(text, Loader=_Loader) if doc is None else doc
    except RecursionError:
        raise SpecError("", "the document is nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError("", f"invalid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise SpecError("", "a workflow must be a mapping with name, version and nodes")
    return doc


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    """A JSON object parsed by msgspec (in C, strict: no NaN), or None to parse it as YAML.

    A megabyte of JSON takes msgspec milliseconds and the YAML loader seconds."""
    head = text.lstrip()[:1]
    if head not in ("{", b"{"):
        return None
    try:
        doc = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None  # YAML's flow style, bad JSON or too deep: the YAML loader says where
    return doc if isinstance(doc, dict) else None


def parse_workflow(source: str | bytes | Mapping[str, Any]) -> WorkflowIR:
    """Validate a workflow and build its IR; raises SpecError naming the bad field."""
    doc = dict(source) if isinstance(source, Mapping) else load_text(source)
    problem = json_problem(doc)
    if problem is not None:
        raise SpecError(join_path("", problem[0]), problem[1])
    _check_keys(doc, _TOP_KEYS, "")
    name = _parse_name(doc.get("name"))
    version = doc.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise SpecError(
            "version", f"must be a whole number from 1 to {MAX_VERSION}, got {version!r}"
        )
    inputs = _parse_inputs(doc.get("inputs", {}))
    defaults = _parse_defaults(doc.get("defaults", {}))
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise SpecError("nodes", "must be a non-empty mapping of node id -> node")
    ctx = _Context(set(raw_nodes), set(inputs))
    nodes = [_parse_node(str(nid), raw, defaults, ctx) for nid, raw in raw_nodes.items()]
    _check_acyclic(nodes)
    outputs = doc.get("outputs", {})
    if not isinstance(outputs, dict):
        raise SpecError("outputs", "must be a mapping of name -> value")
    ctx.check_template(outputs, "outputs", ROOTS, self_id=None)
    return WorkflowIR(name, version, inputs, sorted(nodes, key=lambda n: n.id), outputs)


class _Context:
    """What references may point at, and the checks on templates."""

    def __init__(self, node_ids: set[str], input_names: set[str]) -> None:
        self.node_ids = node_ids
        self.input_names = input_names

    def check_template(
        self,
        raw: Any,
        path: str,
        roots: frozenset[str],
        *,
        self_id: str | None,
        secrets_ok: bool = False,
    ) -> set[str]:
        """Check every expression in `raw`; return the node ids it reads."""
        needs: set[str] = set()
        for sub_path, expr in _expressions(raw, path):
            needs |= self.check_expr(expr, sub_path, roots, self_id=self_id, secrets_ok=secrets_ok)
        return needs

    def check_expr(
        self,
        expr: Expr,
        path: str,
        roots: frozenset[str],
        *,
        self_id: str | None,
        secrets_ok: bool = False,
    ) -> set[str]:
        needs: set[str] = set()
        for ref in expr.refs:
            if ref.root == "secrets":
                if not secrets_ok:
                    raise SpecError(
                        path,
                        "secrets may only be used in http headers and auth and in agent env_vars",
                    )
                if not _SECRET_EXPR.fullmatch(expr.source):
                    raise SpecError(
                        path, f"write a secret as `secrets.NAME` alone, not `{expr.source}`"
                    )
            elif ref.root not in roots:
                known = ", ".join(sorted(roots | ({"secrets"} if secrets_ok else set())))
                raise SpecError(
                    path, f"unknown name {ref.root!r} in `{expr.source}` (known: {known})"
                )
            elif ref.root == "nodes":
                needs.add(self._check_node_ref(ref.key, expr, path, self_id))
            elif ref.root == "inputs" and ref.key is not None and ref.key not in self.input_names:
                raise SpecError(path, f"unknown input {ref.key!r} in `{expr.source}`")
        return needs

    def _check_node_ref(self, key: str | None, expr: Expr, path: str, self_id: str | None) -> str:
        if key is None:
            raise SpecError(path, f"write nodes.<id>.output, not `{expr.source}`")
        if key not in self.node_ids:
            raise SpecError(path, f"unknown node {key!r} in `{expr.source}`")
        if key == self_id:
            raise SpecError(path, f"a node cannot read its own output (`{expr.source}`)")
        return key


def _expressions(raw: Any, path: str) -> Iterable[tuple[str, Expr]]:
    if isinstance(raw, str):
        if "${{" in raw:
            try:
                parts = split_template(raw)
            except ExprError as e:
                raise SpecError(path, str(e)) from None
            yield from ((path, p) for p in parts if isinstance(p, Expr))
    elif isinstance(raw, dict):
        for key, value in raw.items():
            yield from _expressions(value, f"{path}.{key}")
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            yield from _expressions(value, f"{path}[{i}]")


def _parse_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            "name",
            f"must be lower-case letters, digits, '.', '_' or '-' (at most 100), got {name!r}",
        )
    return name


def _parse_inputs(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError("inputs", "must be a mapping of input name -> JSON Schema")
    for key, schema in raw.items():
        path = f"inputs.{key}"
        if not _NODE_ID.fullmatch(key):
            raise SpecError(
                path, "an input name is letters, digits, '_' or '-', starting with a letter"
            )
        check_input_schema(schema, path)
    return {str(k): v for k, v in raw.items()}


def _parse_defaults(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError("defaults", "must be a mapping with retry, timeout or priority")
    _check_keys(raw, {"retry", "timeout", "priority"}, "defaults")
    retry = raw.get("retry", {})
    if not isinstance(retry, dict):
        raise SpecError("defaults.retry", "must be a mapping")
    _check_keys(retry, _RETRY_KEYS, "defaults.retry")
    merged = {
        "retry": {**BUILTIN_RETRY, **retry},
        "timeout": raw.get("timeout", BUILTIN_TIMEOUT),
        "priority": raw.get("priority", BUILTIN_PRIORITY),
    }
    _parse_retry(merged["retry"], "defaults")  # report a bad default where it is written
    _duration(merged["timeout"], "defaults.timeout")
    _parse_priority(merged["priority"], "defaults")
    return merged


def _parse_node(nid: str, raw: Any, defaults: dict[str, Any], ctx: _Context) -> Node:
    path = f"nodes.{nid}"
    if not _NODE_ID.fullmatch(nid):
        raise SpecError(path, "a node id is letters, digits, '_' or '-', starting with a letter")
    if not isinstance(raw, dict):
        raise SpecError(path, "must be a mapping")
    kind = _node_kind(raw, path)
    allowed = _COMMON_KEYS | {kind} | (_MAP_KEYS if kind != "wait" else set())
    _check_keys(raw, allowed, path)
    if kind == "wait" and "timeout" in raw:
        raise SpecError(f"{path}.timeout", "a wait node has its own timeout: use wait.timeout")
    map_spec = _parse_map(raw, path, ctx, nid)
    roots = ROOTS | ({map_spec.item_name} if map_spec else set())
    needs = set(_parse_needs(raw.get("needs", []), path, ctx, nid))
    when = raw.get("when")
    if when is not None:
        if not isinstance(when, str | bool) or (isinstance(when, str) and "${{" not in when):
            raise SpecError(
                f"{path}.when", "must be an expression like ${{ inputs.x > 1 }} or true/false"
            )
        needs |= ctx.check_template(when, f"{path}.when", ROOTS, self_id=nid)
    args = raw.get("with", {})
    needs |= ctx.check_template(args, f"{path}.with", roots, self_id=nid)
    fields: dict[str, Any] = {}
    if kind == "task":
        fields["task"] = _parse_task(raw["task"], f"{path}.task")
    elif kind == "http":
        fields["http"], extra = _parse_http(raw["http"], f"{path}.http", roots, ctx, nid)
        needs |= extra
    elif kind == "agent":
        fields["agent"], extra = _parse_agent(raw["agent"], f"{path}.agent", roots, ctx, nid)
        needs |= extra
    else:
        fields["wait"] = _parse_wait(raw["wait"], f"{path}.wait")
    if map_spec:
        needs |= ctx.check_expr(compile_expr(map_spec.items), f"{path}.map", ROOTS, self_id=nid)
    return Node(
        id=nid,
        kind=kind,
        needs=sorted(needs),
        when=_normal_when(when),
        args=args,
        retry=_parse_retry({**defaults["retry"], **_mapping(raw, "retry", path)}, path),
        timeout_ms=_duration(raw.get("timeout", defaults["timeout"]), f"{path}.timeout"),
        priority=_parse_priority(raw.get("priority", defaults["priority"]), path),
        map=map_spec,
        **fields,
    )


def _normal_when(when: str | bool | None) -> str | None:
    if isinstance(when, bool):
        return None if when else "${{ false }}"
    return when


def _node_kind(raw: dict[str, Any], path: str) -> Any:
    kinds = [k for k in KINDS if k in raw]
    if "subflow" in raw:
        raise SpecError(f"{path}.subflow", "subflow nodes are not supported yet")
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        raise SpecError(
            path, f"a node needs exactly one of task, http, agent, wait (found: {found})"
        )
    return kinds[0]


def _parse_needs(raw: Any, path: str, ctx: _Context, nid: str) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise SpecError(f"{path}.needs", "must be a list of node ids")
    for i, dep in enumerate(raw):
        if dep not in ctx.node_ids:
            raise SpecError(f"{path}.needs[{i}]", f"unknown node {dep!r}")
        if dep == nid:
            raise SpecError(f"{path}.needs[{i}]", "a node cannot need itself")
    return [str(d) for d in raw]


def _parse_map(raw: dict[str, Any], path: str, ctx: _Context, nid: str) -> MapSpec | None:
    if "map" not in raw:
        for key in ("as", "max_concurrency"):
            if key in raw:
                raise SpecError(f"{path}.{key}", "only allowed together with map")
        return None
    items = raw["map"]
    exprs = list(_expressions(items, f"{path}.map"))
    if (
        not isinstance(items, str)
        or len(exprs) != 1
        or not items.strip().startswith("${{")
        or not items.strip().endswith("}}")
    ):
        raise SpecError(
            f"{path}.map", "must be one expression giving a list, e.g. ${{ inputs.items }}"
        )
    item_name = raw.get("as", "item")
    if (
        not isinstance(item_name, str)
        or not _NODE_ID.fullmatch(item_name)
        or item_name in ROOTS | {"secrets"}
    ):
        raise SpecError(
            f"{path}.as",
            f"must be a plain name other than inputs, nodes, vars, secrets; got {item_name!r}",
        )
    limit = raw.get("max_concurrency", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise SpecError(f"{path}.max_concurrency", f"must be a whole number >= 0, got {limit!r}")
    return MapSpec(exprs[0][1].source, item_name, limit)


def _parse_task(raw: Any, path: str) -> str:
    if (
        not isinstance(raw, str)
        or "." not in raw
        or not all(p.isidentifier() for p in raw.split("."))
    ):
        raise SpecError(path, f"must name a function as module.function, got {raw!r}")
    return raw


def _parse_http(
    raw: Any, path: str, roots: frozenset[str], ctx: _Context, nid: str
) -> tuple[HttpSpec, set[str]]:
    if not isinstance(raw, dict):
        raise SpecError(path, "must be a mapping with method and url")
    _check_keys(raw, _HTTP_KEYS, path)
    if not isinstance(raw.get("url"), str):
        raise SpecError(f"{path}.url", "is required, as text")
    method = raw.get("method", "GET")
    if not isinstance(method, str) or (
        "${{" not in method
        and method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
    ):
        raise SpecError(f"{path}.method", f"unknown HTTP method {method!r}")
    if "json" in raw and "body" in raw:
        raise SpecError(f"{path}.body", "give json or body, not both")
    for key in ("headers", "query", "auth"):
        if key in raw and not isinstance(raw[key], dict):
            raise SpecError(f"{path}.{key}", "must be a mapping")
    expect = raw.get("expect_status")
    if expect is not None and (
        not isinstance(expect, list)
        or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in expect
        )
    ):
        raise SpecError(f"{path}.expect_status", "must be a list of HTTP status codes")
    needs: set[str] = set()
    for key in ("method", "url", "query", "json", "body"):
        needs |= ctx.check_template(raw.get(key), f"{path}.{key}", roots, self_id=nid)
    for key in ("headers", "auth"):
        needs |= ctx.check_template(
            raw.get(key), f"{path}.{key}", roots, self_id=nid, secrets_ok=True
        )
    spec = HttpSpec(
        method=method.upper() if isinstance(method, str) and "${{" not in method else method,
        url=raw["url"],
        headers=raw.get("headers", {}),
        query=raw.get("query", {}),
        json=raw.get("json"),
        body=raw.get("body"),
        auth=raw.get("auth"),
        expect_status=expect,
    )
    return spec, needs


def _parse_agent(
    raw: Any, path: str, roots: frozenset[str], ctx: _Context, nid: str
) -> tuple[AgentSpec, set[str]]:
    if not isinstance(raw, dict):
        raise SpecError(path, "must be a mapping with env and command")
    _check_keys(raw, _AGENT_KEYS, path)
    env = raw.get("env", "local")
    if env not in _ENVS:
        raise SpecError(
            f"{path}.env",
            f"unknown execution environment {env!r} (available: {', '.join(sorted(_ENVS))})",
        )
    command = raw.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(c, str | int | float) for c in command)
    ):
        raise SpecError(f"{path}.command", "must be a non-empty list of strings")
    limits = _mapping(raw, "limits", path)
    _check_keys(limits, {"memory", "cpu_seconds"}, f"{path}.limits")
    memory = None
    if "memory" in limits:
        try:
            memory = parse_memory_bytes(limits["memory"])
        except ValueError as e:
            raise SpecError(f"{path}.limits.memory", str(e)) from None
    cpu = limits.get("cpu_seconds")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 1):
        raise SpecError(f"{path}.limits.cpu_seconds", f"must be a whole number >= 1, got {cpu!r}")
    env_vars = _mapping(raw, "env_vars", path)
    workdir = raw.get("workdir")
    if workdir is not None and not isinstance(workdir, str):
        raise SpecError(f"{path}.workdir", "must be a path")
    needs = ctx.check_template(command, f"{path}.command", roots, self_id=nid)
    needs |= ctx.check_template(env_vars, f"{path}.env_vars", roots, self_id=nid, secrets_ok=True)
    spec = AgentSpec(
        env,
        [str(c) if not isinstance(c, str) else c for c in command],
        memory,
        cpu,
        {str(k): v for k, v in env_vars.items()},
        workdir,
    )
    return spec, needs


def _parse_wait(raw: Any, path: str) -> WaitSpec:
    if isinstance(raw, str):
        raw = {"signal": raw}
    if not isinstance(raw, dict):
        raise SpecError(path, "must be a mapping with signal (and timeout)")
    _check_keys(raw, _WAIT_KEYS, path)
    signal = raw.get("signal")
    if not isinstance(signal, str) or not _NODE_ID.fullmatch(signal):
        raise SpecError(f"{path}.signal", f"must be a signal name, got {signal!r}")
    timeout = raw.get("timeout")
    return WaitSpec(signal, None if timeout is None else _duration(timeout, f"{path}.timeout"))


def _parse_retry(raw: dict[str, Any], path: str) -> Retry:
    _check_keys(raw, _RETRY_KEYS, f"{path}.retry")
    attempts = raw["max_attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise SpecError(
            f"{path}.retry.max_attempts", f"must be a whole number >= 1, got {attempts!r}"
        )
    backoff = raw["backoff"]
    if backoff not in ("exponential", "constant", "linear"):
        raise SpecError(
            f"{path}.retry.backoff", f"must be exponential, constant or linear, got {backoff!r}"
        )
    initial = _duration(raw["initial_interval"], f"{path}.retry.initial_interval")
    maximum = _duration(raw["max_interval"], f"{path}.retry.max_interval")
    if maximum < initial:
        raise SpecError(f"{path}.retry.max_interval", "must not be less than initial_interval")
    return Retry(attempts, backoff, initial, maximum)


def _parse_priority(value: Any, path: str) -> Any:
    if value not in PRIORITIES:
        raise SpecError(f"{path}.priority", f"must be high, normal or low, got {value!r}")
    return value


def _duration(value: Any, path: str) -> int:
    try:
        return _duration_text(value) if isinstance(value, str) else parse_duration_ms(value)
    except ValueError as e:
        raise SpecError(path, str(e)) from None


_duration_text = lru_cache(maxsize=1024)(parse_duration_ms)  # every node repeats the defaults


def _mapping(raw: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{path}.{key}", "must be a mapping")
    return value


def _check_keys(raw: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise SpecError(where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _check_acyclic(nodes: list[Node]) -> None:
    """Raise SpecError naming a cycle, if the needs form one."""
    needs = {n.id: n.needs for n in nodes}
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    for start in sorted(needs):
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            nid, i = stack.pop()
            if i == 0:
                if state.get(nid) == 2:
                    continue
                if state.get(nid) == 1:
                    cycle = [*path[path.index(nid) :], nid]
                    raise SpecError(f"nodes.{nid}.needs", "cycle: " + " -> ".join(cycle))
                state[nid] = 1
                path.append(nid)
            deps = needs[nid]
            if i < len(deps):
                stack.append((nid, i + 1))
                stack.append((deps[i], 0))
            else:
                state[nid] = 2
                path.pop()
