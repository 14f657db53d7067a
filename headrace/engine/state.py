"""The state of one run: what the fold of its events gives (mutable, owned by the engine)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from headrace.events import ErrorInfo, NodeStatus, RunStatus
from headrace.spec import Plan


@dataclass
class NodeState:
    status: NodeStatus = "pending"
    attempt: int = 0
    output: Any = None
    error: ErrorInfo | None = None
    scheduled_at_ms: int | None = None
    started_at_ms: int | None = None
    ended_at_ms: int | None = None
    cost_cents: int = 0
    width: int | None = None  # map nodes: number of children
    launched: int = 0  # map nodes: children scheduled so far
    done: int = 0  # map nodes: children completed


@dataclass
class RunState:
    run_id: str
    plan: Plan
    status: RunStatus = "pending"
    inputs: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    version: int = 0  # store row version for optimistic concurrency; not part of the fold
    created_at_ms: int = 0
    started_at_ms: int | None = None
    ended_at_ms: int | None = None
    outputs: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    failed_node: str | None = None
    cost_cents: int = 0
    signals: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)  # needs not yet done, per node
    open_nodes: int = 0  # top-level nodes not yet terminal
    items: dict[str, list[Any]] = field(default_factory=dict, compare=False)  # map lists, cache
    # loaded without its maps' open children (a reload): `decided_alone` says which
    # commands it decides as it is; the others need those children first
    partial: bool = field(default=False, compare=False)

    def comparable(self) -> dict[str, Any]:
        """The fold's content, for replay checks (no cache, no store version)."""
        return {
            "status": self.status,
            "inputs": self.inputs,
            "labels": self.labels,
            "seq": self.seq,
            "started_at_ms": self.started_at_ms,
            "ended_at_ms": self.ended_at_ms,
            "outputs": self.outputs,
            "error": self.error,
            "cost_cents": self.cost_cents,
            "signals": self.signals,
            "nodes": self.nodes,
            "remaining": self.remaining,
            "open_nodes": self.open_nodes,
        }


def new_run(run_id: str, plan: Plan, created_at_ms: int = 0) -> RunState:
    """The state before any event: every node pending."""
    state = RunState(run_id=run_id, plan=plan, created_at_ms=created_at_ms)
    for nid, node in plan.nodes.items():
        state.nodes[nid] = NodeState()
        state.remaining[nid] = len(node.ir.needs)
    state.open_nodes = len(plan.nodes)
    return state


def child_id(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def split_child(node_id: str) -> tuple[str, int] | None:
    """('price', 3) for 'price[3]'; None for a top-level node."""
    if not node_id.endswith("]"):
        return None
    parent, _, index = node_id[:-1].partition("[")
    return parent, int(index)


class NodesView(Mapping[str, Any]):
    """`nodes.<id>.output` as expressions see it."""

    def __init__(self, state: RunState) -> None:
        self._nodes = state.nodes
        self._plan_nodes = state.plan.nodes

    def __getitem__(self, key: str) -> Any:
        if key not in self._plan_nodes:
            raise KeyError(key)
        return {"output": self._nodes[key].output}

    def __iter__(self) -> Iterator[str]:
        return iter(self._plan_nodes)

    def __len__(self) -> int:
        return len(self._plan_nodes)
