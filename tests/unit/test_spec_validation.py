"""Spec validation (headrace.spec.parse), the IR hash and Plan input checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace.errors import InputError, SpecError
from headrace.spec import (
    canonical_json,
    decode_ir,
    ir_hash,
    load_text,
    parse_workflow,
    plan_of,
    with_defaults,
)
from headrace.spec.ir import AgentSpec, MapSpec, Retry, WaitSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "order-fulfilment.yaml"


def wf(nodes: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "w", "version": 1, "nodes": nodes, **top}


def task(**extra: Any) -> dict[str, Any]:
    return {"task": "m.f", **extra}


def http(**spec: Any) -> dict[str, Any]:
    return {"http": {"url": "http://example.test", **spec}}


def agent(**spec: Any) -> dict[str, Any]:
    return {"agent": {"command": ["true"], **spec}}


INPUTS = {"order_id": {"type": "string"}, "items": {"type": "array"}}


def map_node(**extra: Any) -> dict[str, Any]:
    return task(map="${{ inputs.items }}", **extra)


# --- bad documents ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: w\nnodes: [a, b\n", r"invalid YAML at line \d+, column \d+"),
        ("name: w\n  bad: indent\n", r"invalid YAML at line 2"),
        ('{"name": "w", "nodes": {', "invalid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("just text", "must be a mapping"),
        ("42", "must be a mapping"),
        ("", "must be a mapping"),
    ],
)
def test_bad_documents(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_workflow(text)
    assert info.value.path == ""


# --- bad specs: (document, path, message) -----------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # top level
    ("missing name", {"nodes": {"a": task()}}, "name", "got None"),
    ("upper-case name", wf({"a": task()}, name="Order"), "name", "lower-case"),
    ("name with space", wf({"a": task()}, name="a b"), "name", "lower-case"),
    ("name not text", wf({"a": task()}, name=5), "name", "got 5"),
    ("version 0", wf({"a": task()}, version=0), "version", "from 1 to 2147483647, got 0"),
    ("version text", wf({"a": task()}, version="1"), "version", "got '1'"),
    ("version bool", wf({"a": task()}, version=True), "version", "got True"),
    ("version float", wf({"a": task()}, version=1.5), "version", "got 1.5"),
    ("no nodes", {"name": "w"}, "nodes", "non-empty mapping"),
    ("empty nodes", wf({}), "nodes", "non-empty mapping"),
    ("nodes list", {"name": "w", "nodes": [task()]}, "nodes", "non-empty mapping"),
    ("unknown top key", wf({"a": task()}, steps={}), "steps", "unknown key 'steps'"),
    ("outputs list", wf({"a": task()}, outputs=[1]), "outputs", "must be a mapping"),
    # nodes
    ("bad node id", wf({"1a": task()}), "nodes.1a", "a node id is"),
    ("node not mapping", wf({"a": "m.f"}), "nodes.a", "must be a mapping"),
    ("unknown node key", wf({"a": task(retries=3)}), "nodes.a.retries", "unknown key 'retries'"),
    ("no kind", wf({"a": {"needs": []}}), "nodes.a", "exactly one of task, http, agent, wait"),
    ("two kinds", wf({"a": task(wait="go")}), "nodes.a", r"\(found: task, wait\)"),
    ("subflow", wf({"a": {"subflow": "other@1"}}), "nodes.a.subflow", "not supported yet"),
    ("subflow + task", wf({"a": task(subflow="x@1")}), "nodes.a.subflow", "not supported yet"),
    ("bad task name", wf({"a": {"task": "nodots"}}), "nodes.a.task", "module.function"),
    ("task with dash", wf({"a": {"task": "m.my-f"}}), "nodes.a.task", "module.function"),
    ("when number", wf({"a": task(when=5)}), "nodes.a.when", "must be an expression"),
    # needs and cycles
    ("unknown need", wf({"a": task(needs=["zz"])}), "nodes.a.needs[0]", "unknown node 'zz'"),
    (
        "unknown second need",
        wf({"a": task(needs=["b", "zz"]), "b": task()}),
        "nodes.a.needs[1]",
        "unknown node 'zz'",
    ),
    ("self need", wf({"a": task(needs="a")}), "nodes.a.needs[0]", "cannot need itself"),
    ("needs mapping", wf({"a": task(needs={"b": 1})}), "nodes.a.needs", "list of node ids"),
    (
        "direct cycle",
        wf({"a": task(needs=["b"]), "b": task(needs=["a"])}),
        "nodes.a.needs",
        "cycle: a -> b -> a",
    ),
    (
        "3-long cycle",
        wf({"a": task(needs=["c"]), "b": task(needs=["a"]), "c": task(needs=["b"])}),
        "nodes.a.needs",
        "cycle: a -> c -> b -> a",
    ),
    (
        "cycle below a root",
        wf({"p": task(needs=["q"]), "q": task(needs=["r"]), "r": task(needs=["q"])}),
        "nodes.q.needs",
        "cycle: q -> r -> q",
    ),
    (
        "cycle implied by expressions",
        wf(
            {
                "a": task(**{"with": {"total": "${{ nodes.b.output }}"}}),
                "b": task(when="${{ nodes.a.output > 1 }}"),
            }
        ),
        "nodes.a.needs",
        "cycle: a -> b -> a",
    ),
    # expressions
    (
        "unknown node in expression",
        wf({"a": task(**{"with": {"x": "${{ nodes.zz.output }}"}})}),
        "nodes.a.with.x",
        "unknown node 'zz'",
    ),
    (
        "unknown node in a list",
        wf({"a": task(**{"with": {"xs": ["ok", "${{ nodes.zz.output }}"]}})}),
        "nodes.a.with.xs[1]",
        "unknown node 'zz'",
    ),
    (
        "own output",
        wf({"a": task(**{"with": {"x": "${{ nodes.a.output }}"}})}),
        "nodes.a.with.x",
        "cannot read its own output",
    ),
    (
        "own output in when",
        wf({"a": task(when="${{ nodes['a'].output }}")}),
        "nodes.a.when",
        "cannot read its own output",
    ),
    (
        "nodes without an id",
        wf({"a": task(**{"with": {"x": "${{ nodes }}"}})}),
        "nodes.a.with.x",
        "write nodes.<id>.output",
    ),
    (
        "unknown input",
        wf({"a": task(**{"with": {"x": "${{ inputs.nope }}"}})}, inputs=INPUTS),
        "nodes.a.with.x",
        "unknown input 'nope'",
    ),
    (
        "unknown root",
        wf({"a": task(**{"with": {"x": "${{ env.HOME }}"}})}),
        "nodes.a.with.x",
        r"unknown name 'env' in `env.HOME` \(known: inputs, nodes, vars\)",
    ),
    (
        "item outside a map",
        wf({"a": task(**{"with": {"x": "${{ item.sku }}"}})}),
        "nodes.a.with.x",
        "unknown name 'item'",
    ),
    (
        "item in a map node's when",
        wf({"a": map_node(when="${{ item.ok }}")}, inputs=INPUTS),
        "nodes.a.when",
        "unknown name 'item'",
    ),
    (
        "item in the map expression",
        wf({"a": task(map="${{ item.list }}")}),
        "nodes.a.map",
        "unknown name 'item'",
    ),
    (
        "default item name after as",
        wf({"a": map_node(**{"as": "sku", "with": {"x": "${{ item }}"}})}, inputs=INPUTS),
        "nodes.a.with.x",
        "unknown name 'item'",
    ),
    (
        "unknown node in outputs",
        wf({"a": task()}, outputs={"x": "${{ nodes.zz.output }}"}),
        "outputs.x",
        "unknown node 'zz'",
    ),
    (
        "item in outputs",
        wf({"a": map_node()}, inputs=INPUTS, outputs={"x": "${{ item }}"}),
        "outputs.x",
        "unknown name 'item'",
    ),
    (
        "unclosed expression",
        wf({"a": task(**{"with": {"x": "${{ inputs.x"}})}),
        "nodes.a.with.x",
        "unclosed",
    ),
    (
        "forbidden call",
        wf({"a": task(**{"with": {"x": "${{ __import__('os') }}"}})}),
        "nodes.a.with.x",
        "only these functions may be called",
    ),
    (
        "forbidden construct",
        wf({"a": task(**{"with": {"x": "${{ [x for x in inputs] }}"}})}),
        "nodes.a.with.x",
        "ListComp is not allowed",
    ),
    # secrets
    (
        "secret in task args",
        wf({"a": task(**{"with": {"t": "${{ secrets.token }}"}})}),
        "nodes.a.with.t",
        "secrets may only be used in http headers and auth and in agent env_vars",
    ),
    (
        "secret in when",
        wf({"a": task(when="${{ secrets.on }}")}),
        "nodes.a.when",
        "secrets may only be used",
    ),
    (
        "secret in url",
        wf({"a": http(url="https://x/?k=${{ secrets.k }}")}),
        "nodes.a.http.url",
        "secrets may only be used",
    ),
    (
        "secret in query",
        wf({"a": http(query={"k": "${{ secrets.k }}"})}),
        "nodes.a.http.query.k",
        "secrets may only be used",
    ),
    (
        "secret in json",
        wf({"a": http(json={"k": ["${{ secrets.k }}"]})}),
        "nodes.a.http.json.k[0]",
        "secrets may only be used",
    ),
    (
        "secret in agent command",
        wf({"a": agent(command=["run", "${{ secrets.k }}"])}),
        "nodes.a.agent.command[1]",
        "secrets may only be used",
    ),
    (
        "secret in map",
        wf({"a": task(map="${{ secrets.k }}")}),
        "nodes.a.map",
        "secrets may only be used",
    ),
    (
        "secret in outputs",
        wf({"a": task()}, outputs={"x": "${{ secrets.k }}"}),
        "outputs.x",
        "secrets may only be used",
    ),
    (
        "secret arithmetic",
        wf({"a": http(headers={"Authorization": "${{ secrets.a + 'x' }}"})}),
        "nodes.a.http.headers.Authorization",
        r"write a secret as `secrets.NAME` alone, not `secrets.a \+ 'x'`",
    ),
    (
        "secret in a function",
        wf({"a": agent(env_vars={"K": "${{ upper(secrets.a) }}"})}),
        "nodes.a.agent.env_vars.K",
        "write a secret as `secrets.NAME` alone",
    ),
    (
        "secret subscript",
        wf({"a": http(auth={"password": "${{ secrets['a'] }}"})}),
        "nodes.a.http.auth.password",
        "write a secret as `secrets.NAME` alone",
    ),
    # durations
    ("timeout in parsecs", wf({"a": task(timeout="5 parsecs")}), "nodes.a.timeout", "5 parsecs"),
    ("negative timeout", wf({"a": task(timeout=-1)}), "nodes.a.timeout", "cannot be negative"),
    ("bool timeout", wf({"a": task(timeout=True)}), "nodes.a.timeout", "got True"),
    ("empty timeout", wf({"a": task(timeout="")}), "nodes.a.timeout", "expected a duration"),
    ("list timeout", wf({"a": task(timeout=[5])}), "nodes.a.timeout", "expected a duration"),
    ("unit first", wf({"a": task(timeout="s5")}), "nodes.a.timeout", "expected a duration"),
    (
        "bad default timeout",
        wf({"a": task()}, defaults={"timeout": "soon"}),
        "defaults.timeout",
        "got 'soon'",
    ),
    (
        "bad retry interval",
        wf({"a": task(retry={"initial_interval": "5 parsecs"})}),
        "nodes.a.retry.initial_interval",
        "5 parsecs",
    ),
    (
        "bad wait timeout",
        wf({"a": {"wait": {"signal": "go", "timeout": "-5s"}}}),
        "nodes.a.wait.timeout",
        "expected a duration",
    ),
    # retry
    ("retry not mapping", wf({"a": task(retry=3)}), "nodes.a.retry", "must be a mapping"),
    (
        "unknown retry key",
        wf({"a": task(retry={"attempts": 3})}),
        "nodes.a.retry.attempts",
        "unknown key 'attempts'",
    ),
    (
        "max_attempts 0",
        wf({"a": task(retry={"max_attempts": 0})}),
        "nodes.a.retry.max_attempts",
        ">= 1, got 0",
    ),
    (
        "max_attempts bool",
        wf({"a": task(retry={"max_attempts": True})}),
        "nodes.a.retry.max_attempts",
        "got True",
    ),
    (
        "max_attempts float",
        wf({"a": task(retry={"max_attempts": 2.5})}),
        "nodes.a.retry.max_attempts",
        "got 2.5",
    ),
    (
        "random backoff",
        wf({"a": task(retry={"backoff": "random"})}),
        "nodes.a.retry.backoff",
        "exponential, constant or linear, got 'random'",
    ),
    (
        "max below initial",
        wf({"a": task(retry={"initial_interval": "10s", "max_interval": "5s"})}),
        "nodes.a.retry.max_interval",
        "not be less than initial_interval",
    ),
    (
        "initial above builtin max",
        wf({"a": task(retry={"initial_interval": "2m"})}),
        "nodes.a.retry.max_interval",
        "not be less than initial_interval",
    ),
    (
        "unknown defaults key",
        wf({"a": task()}, defaults={"retries": {}}),
        "defaults.retries",
        "unknown key 'retries'",
    ),
    (
        "unknown defaults.retry key",
        wf({"a": task()}, defaults={"retry": {"attempts": 2}}),
        "defaults.retry.attempts",
        "unknown key 'attempts'",
    ),
    ("defaults list", wf({"a": task()}, defaults=[1]), "defaults", "must be a mapping"),
    (
        "defaults.retry list",
        wf({"a": task()}, defaults={"retry": [1]}),
        "defaults.retry",
        "must be a mapping",
    ),
    # priority
    ("bad priority", wf({"a": task(priority="urgent")}), "nodes.a.priority", "got 'urgent'"),
    ("priority case", wf({"a": task(priority="HIGH")}), "nodes.a.priority", "got 'HIGH'"),
    # wait
    (
        "wait with node timeout",
        wf({"a": {"wait": "go", "timeout": "1h"}}),
        "nodes.a.timeout",
        "use wait.timeout",
    ),
    ("bad signal", wf({"a": {"wait": {"signal": "a b"}}}), "nodes.a.wait.signal", "signal name"),
    ("no signal", wf({"a": {"wait": {"timeout": "1h"}}}), "nodes.a.wait.signal", "got None"),
    ("wait list", wf({"a": {"wait": ["go"]}}), "nodes.a.wait", "must be a mapping"),
    (
        "unknown wait key",
        wf({"a": {"wait": {"signal": "go", "every": "1s"}}}),
        "nodes.a.wait.every",
        "unknown key",
    ),
    ("map on a wait", wf({"a": {"wait": "go", "map": "${{ [1] }}"}}), "nodes.a.map", "unknown"),
    # map
    ("map of a list", wf({"a": task(map=[1, 2])}), "nodes.a.map", "must be one expression"),
    (
        "map not an expression",
        wf({"a": task(map="inputs.items")}, inputs=INPUTS),
        "nodes.a.map",
        "must be one expression",
    ),
    (
        "map with text around",
        wf({"a": task(map="x ${{ inputs.items }}")}, inputs=INPUTS),
        "nodes.a.map",
        "must be one expression",
    ),
    (
        "map of two expressions",
        wf({"a": task(map="${{ inputs.items }}${{ inputs.items }}")}, inputs=INPUTS),
        "nodes.a.map",
        "must be one expression",
    ),
    ("as without map", wf({"a": task(**{"as": "x"})}), "nodes.a.as", "only allowed together"),
    (
        "max_concurrency without map",
        wf({"a": task(max_concurrency=2)}),
        "nodes.a.max_concurrency",
        "only allowed together",
    ),
    *[
        (
            f"as {name!r}",
            wf({"a": map_node(**{"as": name})}, inputs=INPUTS),
            "nodes.a.as",
            f"other than inputs, nodes, vars, secrets; got {name!r}",
        )
        for name in ("inputs", "nodes", "vars", "secrets", "1x", "a.b", 5)
    ],
    (
        "negative max_concurrency",
        wf({"a": map_node(max_concurrency=-1)}, inputs=INPUTS),
        "nodes.a.max_concurrency",
        ">= 0, got -1",
    ),
    (
        "bool max_concurrency",
        wf({"a": map_node(max_concurrency=True)}, inputs=INPUTS),
        "nodes.a.max_concurrency",
        "got True",
    ),
    # http
    ("http list", wf({"a": {"http": ["GET"]}}), "nodes.a.http", "must be a mapping"),
    ("http without url", wf({"a": {"http": {"method": "GET"}}}), "nodes.a.http.url", "required"),
    ("bad method", wf({"a": http(method="FETCH")}), "nodes.a.http.method", "'FETCH'"),
    ("method not text", wf({"a": http(method=5)}), "nodes.a.http.method", "unknown HTTP method"),
    (
        "unknown http key",
        wf({"a": http(timeout="1s")}),
        "nodes.a.http.timeout",
        "unknown key 'timeout'",
    ),
    ("json and body", wf({"a": http(json={}, body="x")}), "nodes.a.http.body", "not both"),
    ("headers list", wf({"a": http(headers=["a"])}), "nodes.a.http.headers", "must be a mapping"),
    ("auth text", wf({"a": http(auth="x")}), "nodes.a.http.auth", "must be a mapping"),
    *[
        (
            f"expect_status {status!r}",
            wf({"a": http(expect_status=status)}),
            "nodes.a.http.expect_status",
            "list of HTTP status codes",
        )
        for status in (200, [99], [600], ["200"], [True], [200.0])
    ],
    # agent
    (
        "env kubernetes",
        wf({"a": agent(env="kubernetes")}),
        "nodes.a.agent.env",
        r"unknown execution environment 'kubernetes' \(available: local\)",
    ),
    ("agent list", wf({"a": {"agent": ["ls"]}}), "nodes.a.agent", "must be a mapping"),
    (
        "unknown agent key",
        wf({"a": agent(image="x")}),
        "nodes.a.agent.image",
        "unknown key 'image'",
    ),
    ("empty command", wf({"a": agent(command=[])}), "nodes.a.agent.command", "non-empty list"),
    ("text command", wf({"a": agent(command="ls")}), "nodes.a.agent.command", "non-empty list"),
    ("no command", wf({"a": {"agent": {}}}), "nodes.a.agent.command", "non-empty list"),
    (
        "nested command",
        wf({"a": agent(command=["ls", ["-l"]])}),
        "nodes.a.agent.command",
        "non-empty list",
    ),
    (
        "memory in parsecs",
        wf({"a": agent(limits={"memory": "12 parsecs"})}),
        "nodes.a.agent.limits.memory",
        "invalid memory size '12 parsecs'",
    ),
    (
        "zero memory",
        wf({"a": agent(limits={"memory": 0})}),
        "nodes.a.agent.limits.memory",
        "invalid memory size 0",
    ),
    (
        "bool memory",
        wf({"a": agent(limits={"memory": True})}),
        "nodes.a.agent.limits.memory",
        "invalid memory size True",
    ),
    (
        "cpu_seconds 0",
        wf({"a": agent(limits={"cpu_seconds": 0})}),
        "nodes.a.agent.limits.cpu_seconds",
        ">= 1, got 0",
    ),
    (
        "cpu_seconds text",
        wf({"a": agent(limits={"cpu_seconds": "10"})}),
        "nodes.a.agent.limits.cpu_seconds",
        "got '10'",
    ),
    (
        "cpu_seconds bool",
        wf({"a": agent(limits={"cpu_seconds": True})}),
        "nodes.a.agent.limits.cpu_seconds",
        "got True",
    ),
    (
        "unknown limit",
        wf({"a": agent(limits={"gpu": 1})}),
        "nodes.a.agent.limits.gpu",
        "unknown key 'gpu'",
    ),
    ("env_vars list", wf({"a": agent(env_vars=["A=1"])}), "nodes.a.agent.env_vars", "mapping"),
    ("workdir number", wf({"a": agent(workdir=5)}), "nodes.a.agent.workdir", "must be a path"),
    # inputs
    (
        "misspelt schema type",
        wf({"a": task()}, inputs={"order_id": {"type": "strnig"}}),
        "inputs.order_id",
        "invalid JSON Schema: 'strnig' is not valid",
    ),
    (
        "schema not a mapping",
        wf({"a": task()}, inputs={"order_id": "string"}),
        "inputs.order_id",
        "must be a JSON Schema",
    ),
    ("inputs a list", wf({"a": task()}, inputs=["order_id"]), "inputs", "must be a mapping"),
    ("inputs text", wf({"a": task()}, inputs="order_id"), "inputs", "must be a mapping"),
]


@pytest.mark.parametrize(("doc", "path", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec(doc: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_workflow(doc)
    assert info.value.path == path
    assert str(info.value) == f"{path}: {info.value.message}"


def test_bad_spec_ids_are_unique() -> None:
    ids = [b[0] for b in BAD]
    assert len(ids) == len(set(ids))


def test_errors_from_text_have_the_same_paths() -> None:
    text = "name: w\nnodes:\n  a: {task: m.f, retry: {max_attempts: 0}}\n"
    with pytest.raises(SpecError) as info:
        parse_workflow(text)
    assert info.value.path == "nodes.a.retry.max_attempts"


# --- good specs -------------------------------------------------------------------------------


def test_example_parses() -> None:
    ir = parse_workflow(EXAMPLE.read_text())
    assert ir.tag == "order-fulfilment@1"
    assert set(ir.inputs) == {"order_id", "items"}
    nodes = {n.id: n for n in ir.nodes}
    assert [n.id for n in ir.nodes] == sorted(nodes)
    assert {nid: n.kind for nid, n in nodes.items()} == {
        "approve": "wait",
        "fraud_check": "http",
        "price": "task",
        "ship": "agent",
        "total": "task",
        "validate": "task",
    }
    assert {nid: n.needs for nid, n in nodes.items()} == {
        "validate": [],
        "price": ["validate"],
        "total": ["price"],  # implied by nodes.price.output
        "fraud_check": ["total"],  # implied by when and json
        "approve": ["fraud_check", "total"],
        "ship": ["approve"],
    }
    assert nodes["price"].map == MapSpec("inputs.items", "item", 8)
    assert nodes["approve"].wait == WaitSpec("approval", 3_600_000)
    assert nodes["ship"].agent == AgentSpec(
        "local", ["python", "examples/shop/ship.py"], 256 * 1024**2, 10, {}, None
    )
    http_spec = nodes["fraud_check"].http
    assert http_spec is not None
    assert http_spec.method == "POST"
    assert http_spec.headers == {"Authorization": "Bearer ${{ secrets.fraud_token }}"}
    assert nodes["fraud_check"].priority == "high"
    for n in ir.nodes:
        assert n.retry == Retry(3, "exponential", 100, 5_000)
        assert n.timeout_ms == 30_000
        if n.id != "fraud_check":
            assert n.priority == "normal"
    assert decode_ir(canonical_json(ir)) == ir


def test_defaults_then_node_override_key_by_key() -> None:
    ir = parse_workflow(
        wf(
            {
                "a": task(retry={"initial_interval": "2s"}, timeout="1.5m", priority="low"),
                "b": task(),
            },
            defaults={"retry": {"max_attempts": 5}, "timeout": "10s", "priority": "high"},
        )
    )
    a, b = ir.nodes
    assert a.retry == Retry(5, "exponential", 2_000, 60_000)
    assert (a.timeout_ms, a.priority) == (90_000, "low")
    assert b.retry == Retry(5, "exponential", 1_000, 60_000)
    assert (b.timeout_ms, b.priority) == (10_000, "high")


def test_builtin_defaults() -> None:
    (node,) = parse_workflow(wf({"a": task()})).nodes
    assert node.retry == Retry(3, "exponential", 1_000, 60_000)
    assert node.timeout_ms == 300_000
    assert node.priority == "normal"
    assert (node.needs, node.when, node.args, node.map) == ([], None, {}, None)


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("100ms", 100),
        ("5s", 5_000),
        ("1.5m", 90_000),
        ("1h30m", 5_400_000),
        ("2d", 172_800_000),
        (0, 0),
        (2, 2_000),
        (0.25, 250),
        (" 5s ", 5_000),
    ],
)
def test_durations(value: Any, ms: int) -> None:
    (node,) = parse_workflow(wf({"a": task(timeout=value)})).nodes
    assert node.timeout_ms == ms


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("256Mi", 256 * 1024**2),
        ("1Gi", 1024**3),
        ("512M", 512_000_000),
        ("100k", 100_000),
        ("1048576", 1_048_576),
        (4096, 4096),
    ],
)
def test_memory_sizes(value: Any, size: int) -> None:
    (node,) = parse_workflow(wf({"a": agent(limits={"memory": value})})).nodes
    assert node.agent is not None
    assert node.agent.memory_bytes == size


@pytest.mark.parametrize(
    ("nodes", "needs"),
    [
        ({"x": task(), "y": task(**{"with": {"v": "${{ nodes.x.output }}"}})}, ["x"]),
        ({"x": task(), "y": task(when="${{ nodes['x'].output.ok }}")}, ["x"]),
        ({"x": task(), "y": http(url="${{ nodes.x.output.url }}")}, ["x"]),
        ({"x": task(), "y": http(headers={"H": "${{ nodes.x.output }}"})}, ["x"]),
        ({"x": task(), "y": agent(command=["echo", "${{ nodes.x.output }}"])}, ["x"]),
        ({"x": task(), "y": task(map="${{ nodes.x.output }}")}, ["x"]),
        ({"x": task(), "y": task(**{"with": {"n": "${{ len(nodes.x.output) }}"}})}, ["x"]),
        (
            {
                "x": task(),
                "z": task(),
                "y": task(needs=["z", "x"], **{"with": {"v": "${{ nodes.x.output }}"}}),
            },
            ["x", "z"],
        ),
    ],
)
def test_implied_needs(nodes: dict[str, Any], needs: list[str]) -> None:
    ir = parse_workflow(wf(nodes))
    assert {n.id: n.needs for n in ir.nodes}["y"] == needs


@pytest.mark.parametrize(
    "node",
    [
        http(headers={"Authorization": "Bearer ${{ secrets.token }}"}),
        http(auth={"username": "u", "password": "${{ secrets.pw }}"}),
        agent(env_vars={"TOKEN": "${{ secrets.token }}"}),
        http(method="post", json={"a": "${{ inputs.order_id }}"}),
        http(method="${{ inputs.order_id }}", expect_status=[200, 201]),
        {"wait": "go"},
        task(when=True),
        map_node(**{"as": "it", "with": {"sku": "${{ it.sku }}"}}, max_concurrency=0),
        task(**{"with": {"x": "${{ vars.anything }}", "n": "${{ len(inputs.items) }}"}}),
    ],
)
def test_good_nodes(node: dict[str, Any]) -> None:
    ir = parse_workflow(wf({"a": node}, inputs=INPUTS))
    assert [n.id for n in ir.nodes] == ["a"]


def test_node_normalisation() -> None:
    ir = parse_workflow(
        wf(
            {
                "on": task(when=True),
                "off": task(when=False),
                "post": http(method="post"),
                "get": http(),
                "waits": {"wait": "go"},
                "each": map_node(),
            },
            inputs=INPUTS,
        )
    )
    nodes = {n.id: n for n in ir.nodes}
    assert nodes["on"].when is None
    assert nodes["off"].when == "${{ false }}"
    assert nodes["post"].http is not None and nodes["post"].http.method == "POST"
    assert nodes["get"].http is not None and nodes["get"].http.method == "GET"
    assert nodes["waits"].wait == WaitSpec("go", None)
    assert nodes["each"].map == MapSpec("inputs.items", "item", 0)


YAML_TEXT = """
name: hashed
version: 2
inputs:
  n: {type: integer, default: 1}
defaults:
  timeout: 10s
nodes:
  a:
    task: m.f
    with: {n: "${{ inputs.n }}", list: [1, 2]}
  b:
    needs: a
    http: {method: post, url: "http://x/${{ nodes.a.output }}"}
outputs:
  b: "${{ nodes.b.output }}"
"""

JSON_TEXT = """{
  "outputs": {"b": "${{ nodes.b.output }}"},
  "nodes": {
    "b": {"http": {"url": "http://x/${{ nodes.a.output }}", "method": "POST"},
          "needs": ["a"], "timeout": "10s"},
    "a": {"with": {"list": [1, 2], "n": "${{ inputs.n }}"}, "task": "m.f", "timeout": 10}
  },
  "inputs": {"n": {"default": 1, "type": "integer"}},
  "version": 2, "name": "hashed"
}"""


def test_yaml_and_json_give_the_same_hash() -> None:
    from_yaml = parse_workflow(YAML_TEXT)
    from_json = parse_workflow(JSON_TEXT)
    assert from_yaml == from_json
    assert ir_hash(from_yaml) == ir_hash(from_json)
    assert ir_hash(parse_workflow(load_text(YAML_TEXT))) == ir_hash(from_yaml)
    assert ir_hash(from_yaml).startswith("sha256:")
    example = EXAMPLE.read_text()
    as_json = json.dumps(yaml.safe_load(example), sort_keys=True)
    assert ir_hash(parse_workflow(as_json)) == ir_hash(parse_workflow(example))


def _set(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value

    return change


CHANGES = {
    "task name": _set("nodes/validate/task", "shop.check_order"),
    "task args": _set("nodes/validate/with/order_id", "${{ inputs.order_id }} "),
    "explicit need": _set("nodes/total/needs", ["validate"]),
    "when": _set("nodes/fraud_check/when", "${{ nodes.total.output.amount > 101 }}"),
    "node retry": _set("nodes/validate/retry", {"max_attempts": 4}),
    "node timeout": _set("nodes/validate/timeout", "31s"),
    "node priority": _set("nodes/validate/priority", "low"),
    "map concurrency": _set("nodes/price/max_concurrency", 9),
    "map item name": _set("nodes/price/as", "it"),
    "http url": _set("nodes/fraud_check/http/url", "${{ vars.fraud_url }}/v2/check"),
    "http header": _set("nodes/fraud_check/http/headers/X-Id", "1"),
    "wait signal": _set("nodes/approve/wait/signal", "approved"),
    "wait timeout": _set("nodes/approve/wait/timeout", "2h"),
    "agent memory": _set("nodes/ship/agent/limits/memory", "512Mi"),
    "agent command": _set("nodes/ship/agent/command", ["python", "ship.py"]),
    "new node": _set("nodes/extra", {"task": "m.f"}),
    "defaults": _set("defaults/timeout", "31s"),
    "input schema": _set("inputs/order_id", {"type": "string", "minLength": 1}),
    "outputs": _set("outputs/amount", "${{ nodes.total.output }}"),
    "version": _set("version", 2),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_any_change_changes_the_hash(change: Any) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    before = ir_hash(parse_workflow(doc))
    changed = copy.deepcopy(doc)
    change(changed)
    if "price" in changed["nodes"] and changed["nodes"]["price"].get("as") == "it":
        changed["nodes"]["price"]["with"] = {"sku": "${{ it.sku }}", "qty": "${{ it.qty }}"}
    assert ir_hash(parse_workflow(changed)) != before


def test_hash_ignores_node_order_and_description() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    before = ir_hash(parse_workflow(doc))
    reordered = copy.deepcopy(doc)
    reordered["nodes"] = dict(reversed(list(doc["nodes"].items())))
    reordered["description"] = "the same workflow"
    reordered["nodes"]["ship"]["description"] = "ships it"
    assert ir_hash(parse_workflow(reordered)) == before


# --- Plan.validate_inputs ---------------------------------------------------------------------

PLAN_DOC = wf(
    {"a": task()},
    inputs={
        "order_id": {"type": "string"},
        "qty": {"type": "integer", "minimum": 1},
        "note": {"type": "string", "default": "none"},
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"sku": {"type": "string"}}},
            "default": [],
        },
    },
)
GOOD = {"order_id": "o-1", "qty": 2}


@pytest.mark.parametrize(
    ("inputs", "path", "message"),
    [
        ({"qty": 2}, "inputs.order_id", "is required"),
        ({}, "inputs.order_id", "is required"),
        ({"order_id": "o-1"}, "inputs.qty", "is required"),  # note has a default
        ({**GOOD, "order_id": 5}, "inputs.order_id", "5 is not of type 'string'"),
        ({**GOOD, "qty": "2"}, "inputs.qty", "'2' is not of type 'integer'"),
        ({**GOOD, "qty": 0}, "inputs.qty", "0 is less than the minimum of 1"),
        ({**GOOD, "note": None}, "inputs.note", "None is not of type 'string'"),
        ({**GOOD, "items": [{"sku": 1}]}, "inputs.items.0.sku", "1 is not of type 'string'"),
        ({**GOOD, "extra": 1}, "inputs.extra", "is not an input of this workflow"),
        ({**GOOD, "zz": 1, "aa": 2}, "inputs.aa", "is not an input of this workflow"),
        ([], "inputs", "must be an object"),
        (None, "inputs", "must be an object"),
    ],
)
def test_validate_inputs_errors(inputs: Any, path: str, message: str) -> None:
    plan = plan_of(parse_workflow(PLAN_DOC))
    with pytest.raises(InputError) as info:
        plan.validate_inputs(inputs)
    assert (info.value.path, info.value.message) == (path, message)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (GOOD, {**GOOD, "note": "none", "items": []}),
        ({**GOOD, "note": "hi"}, {**GOOD, "note": "hi", "items": []}),
        ({**GOOD, "items": [{"sku": "A"}]}, {**GOOD, "note": "none", "items": [{"sku": "A"}]}),
    ],
)
def test_validate_inputs_and_defaults(inputs: dict[str, Any], expected: dict[str, Any]) -> None:
    plan = plan_of(parse_workflow(PLAN_DOC))
    given = copy.deepcopy(inputs)
    plan.validate_inputs(inputs)
    filled = with_defaults(plan, inputs)
    assert filled == expected
    plan.validate_inputs(filled)
    assert inputs == given  # the caller's mapping is not modified


def test_no_inputs() -> None:
    plan = plan_of(parse_workflow(wf({"a": task()})))
    plan.validate_inputs({})
    assert with_defaults(plan, {}) == {}
    with pytest.raises(InputError) as info:
        plan.validate_inputs({"x": 1})
    assert info.value.path == "inputs.x"
