"""A `Plan` is a workflow's IR with its templates compiled and its graph indexed.

Built once per `ir_hash` in each process and shared by every run of that workflow.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from jsonschema.protocols import Validator

from headrace.errors import InputError
from headrace.spec.expressions import compile_expr
from headrace.spec.ir import Node, WorkflowIR, canonical_json, decode_ir, ir_hash
from headrace.spec.schemas import InputValidator
from headrace.spec.templates import Template, compile_template
from headrace.spec.values import join_path, json_problem


@dataclass
class PlanNode:
    """One node: its IR and compiled templates."""

    ir: Node
    args: Template
    when: Template | None
    config: Template  # the kind's own fields (http request, agent command...), see below
    items: Template | None  # map only: the list to fan out over
    dependents: list[str] = field(default_factory=list)


@dataclass
class Plan:
    ir: WorkflowIR
    ir_hash: str
    nodes: dict[str, PlanNode]
    roots: list[str]
    order: list[str]  # topological, ties by id: how nodes are listed to people
    outputs: Template
    input_schema: dict[str, Any]
    input_validator: Validator

    @property
    def tag(self) -> str:
        return self.ir.tag

    @cached_property
    def position(self) -> dict[str, int]:
        """Each node's place in the workflow as written."""
        return {nid: i for i, nid in enumerate(self.nodes)}

    def validate_inputs(self, inputs: Any) -> None:
        """Raise InputError naming the first input that does not match its schema, or that
        could not be stored and read back (see `spec.values`)."""
        problem = input_problem(self.input_schema, self.input_validator, inputs)
        if problem is not None:
            raise InputError(*problem)


def input_problem(
    schema: dict[str, Any], validator: Validator, inputs: Any
) -> tuple[str, str] | None:
    """(field, why) of the first input that does not match the inputs' `schema`, or that
    could not be stored and read back; None when they are fine. Pure: it may run in another
    process (services/offload.py)."""
    if not isinstance(inputs, dict):
        return "inputs", "must be an object"
    problem = json_problem(inputs)
    if problem is not None:
        return join_path("inputs", problem[0]), problem[1]
    # One pass: a check first and the errors after cost a large input twice.
    errors = sorted(validator.iter_errors(inputs), key=_error_path)
    if not errors:
        return None
    err = errors[0]
    top = not err.absolute_path  # the inputs object itself, not a value inside one
    if top and err.validator == "additionalProperties":
        extra = sorted(set(inputs) - set(schema["properties"]))
        return f"inputs.{extra[0]}", "is not an input of this workflow"
    if top and err.validator == "required":
        missing = sorted(set(schema["required"]) - set(inputs))
        return f"inputs.{missing[0]}", "is required"
    return ".".join(["inputs", *(str(p) for p in err.absolute_path)]), err.message


def _error_path(error: Any) -> list[Any]:
    return list(error.absolute_path)


def _config_template(node: Node) -> Template:
    if node.http is not None:
        h = node.http
        raw = {
            "method": h.method,
            "url": h.url,
            "headers": h.headers,
            "query": h.query,
            "json": h.json,
            "body": h.body,
            "auth": h.auth,
        }
        return compile_template(raw)
    if node.agent is not None:
        return compile_template({"command": node.agent.command, "env_vars": node.agent.env_vars})
    return compile_template({})


def build_plan(ir: WorkflowIR) -> Plan:
    """Compile the IR's templates and index its graph."""
    nodes: dict[str, PlanNode] = {}
    for n in ir.nodes:
        nodes[n.id] = PlanNode(
            ir=n,
            args=compile_template(n.args),
            when=compile_template(n.when) if n.when is not None else None,
            config=_config_template(n),
            items=compile_expr(n.map.items).evaluate if n.map else None,
        )
    for n in ir.nodes:
        for dep in n.needs:
            nodes[dep].dependents.append(n.id)
    required = [k for k, s in ir.inputs.items() if "default" not in s]
    schema = {
        "type": "object",
        "properties": ir.inputs,
        "required": required,
        "additionalProperties": False,
    }
    return Plan(
        ir=ir,
        ir_hash=ir_hash(ir),
        nodes=nodes,
        roots=[n.id for n in ir.nodes if not n.needs],
        order=_topological(ir),
        outputs=compile_template(ir.outputs),
        input_schema=schema,
        input_validator=InputValidator(schema),
    )


def _topological(ir: WorkflowIR) -> list[str]:
    remaining = {n.id: len(n.needs) for n in ir.nodes}
    dependents: dict[str, list[str]] = {n.id: [] for n in ir.nodes}
    for n in ir.nodes:
        for dep in n.needs:
            dependents[dep].append(n.id)
    ready = sorted(nid for nid, count in remaining.items() if count == 0)  # a sorted list is a heap
    order: list[str] = []
    while ready:
        nid = heapq.heappop(ready)
        order.append(nid)
        for dep in dependents[nid]:
            remaining[dep] -= 1
            if remaining[dep] == 0:
                heapq.heappush(ready, dep)
    return order


@lru_cache(maxsize=256)
def plan_from_json(data: bytes) -> Plan:
    """The plan of a stored IR; cached so each process compiles a workflow once."""
    return build_plan(decode_ir(data))


def plan_of(ir: WorkflowIR) -> Plan:
    return plan_from_json(canonical_json(ir))


def with_defaults(plan: Plan, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs with each schema's `default` filled in."""
    out = dict(inputs)
    for key, schema in plan.ir.inputs.items():
        if key not in out and "default" in schema:
            out[key] = schema["default"]
    return out
