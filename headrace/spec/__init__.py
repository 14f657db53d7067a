"""Workflow specs: YAML/JSON and the SDK compile to one IR, then to a Plan (pure)."""

from headrace.spec.expressions import ExprError
from headrace.spec.ir import Node, WorkflowIR, canonical_json, decode_ir, ir_hash
from headrace.spec.parse import load_text, parse_workflow
from headrace.spec.plan import Plan, PlanNode, build_plan, plan_from_json, plan_of, with_defaults
from headrace.spec.templates import resolve_secrets, secret_names

__all__ = [
    "ExprError",
    "Node",
    "Plan",
    "PlanNode",
    "WorkflowIR",
    "build_plan",
    "canonical_json",
    "decode_ir",
    "ir_hash",
    "load_text",
    "parse_workflow",
    "plan_from_json",
    "plan_of",
    "resolve_secrets",
    "secret_names",
    "with_defaults",
]
