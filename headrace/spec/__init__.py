"""Workflow specs: YAML/JSON and the SDK compile to one IR, then to a Plan (pure)."""

from headrace.spec.expressions import ExprError
from headrace.spec.ir import Node, WorkflowIR, canonical_json, decode_ir, ir_hash
from headrace.spec.parse import MAX_VERSION, load_text, parse_workflow
from headrace.spec.plan import Plan, PlanNode, build_plan, plan_from_json, plan_of, with_defaults
from headrace.spec.templates import resolve_secrets, secret_names
from headrace.spec.values import MAX_DEPTH, json_problem

__all__ = [
    "MAX_DEPTH",
    "MAX_VERSION",
    "ExprError",
    "Node",
    "Plan",
    "PlanNode",
    "WorkflowIR",
    "build_plan",
    "canonical_json",
    "decode_ir",
    "ir_hash",
    "json_problem",
    "load_text",
    "parse_workflow",
    "plan_from_json",
    "plan_of",
    "resolve_secrets",
    "secret_names",
    "with_defaults",
]
