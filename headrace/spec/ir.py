"""The IR: the compiled, validated, normalised form of a workflow that runs execute.

Everything here is plain data (msgspec Structs) so the IR serialises to canonical JSON and
its `ir_hash` is the same whether the workflow came from YAML, JSON or the Python SDK.
Templates (values that may hold `${{ }}`) are kept as written; `spec.plan` compiles them.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

Kind = Literal["task", "http", "agent", "wait"]
Priority = Literal["high", "normal", "low"]
Backoff = Literal["exponential", "constant", "linear"]

KINDS: tuple[Kind, ...] = ("task", "http", "agent", "wait")
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")


class Retry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_attempts: int
    backoff: Backoff
    initial_interval_ms: int
    max_interval_ms: int


class MapSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    items: str  # an expression (without `${{ }}`) giving the list to fan out over
    item_name: str
    max_concurrency: int  # 0 = all at once


class WaitSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    signal: str
    timeout_ms: int | None


class AgentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    env: str
    command: list[Any]
    memory_bytes: int | None
    cpu_seconds: int | None
    env_vars: dict[str, Any]
    workdir: str | None


class HttpSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    method: Any
    url: Any
    headers: dict[str, Any]
    query: dict[str, Any]
    json: Any  # None when absent (a literal null body is not useful)
    body: Any
    auth: dict[str, Any] | None
    expect_status: list[int] | None


class Node(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    kind: Kind
    needs: list[str]  # explicit and implied by expressions, sorted
    when: str | None
    args: Any  # the node's `with`
    retry: Retry
    timeout_ms: int
    priority: Priority
    task: str | None = None
    http: HttpSpec | None = None
    agent: AgentSpec | None = None
    wait: WaitSpec | None = None
    map: MapSpec | None = None


class WorkflowIR(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    version: int
    inputs: dict[str, Any]  # input name -> JSON Schema
    nodes: list[Node]  # sorted by id
    outputs: dict[str, Any]

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


def canonical_json(ir: WorkflowIR) -> bytes:
    """The IR as canonical JSON: keys sorted, so equal IRs give equal bytes."""
    return msgspec.json.encode(ir, order="sorted")


def ir_hash(ir: WorkflowIR) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(ir)).hexdigest()


def decode_ir(data: bytes) -> WorkflowIR:
    return msgspec.json.decode(data, type=WorkflowIR)
