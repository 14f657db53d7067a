"""The JSON shapes users see (CLI `--json` and the REST API), built from store records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from headrace.events import ErrorInfo
from headrace.flags import Flag
from headrace.store import FlagChange, NodeRecord, RunRecord, WorkflowRecord
from headrace.store.listing import RunItem


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def error_view(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "retryable": error.retryable}


def node_view(n: NodeRecord) -> dict[str, Any]:
    view: dict[str, Any] = {"status": n.status, "attempts": n.attempt}
    if n.error is not None and n.status == "failed":
        view["error"] = error_view(n.error)
    else:
        view["output"] = n.output
    if n.width is not None:
        view["children"] = {"total": n.width, **(n.children or {})}
    return view


def child_view(n: NodeRecord) -> dict[str, Any]:
    return {
        "node_id": n.node_id,
        **node_view(n),
        "started_at": rfc3339(n.started_at_ms),
        "ended_at": rfc3339(n.ended_at_ms),
    }


def map_page_view(
    node: NodeRecord, children: list[NodeRecord], offset: int, limit: int
) -> dict[str, Any]:
    """`GET /v1/runs/{id}/nodes/{map}`: the map node without its `output` (the list of every
    child's output, which could be huge) and one page of its children, each with its own."""
    view = {"node_id": node.node_id, **node_view(node)}
    view.pop("output", None)
    view["items"] = [child_view(c) for c in children]
    more = offset + limit < view["children"]["total"]
    view["next_offset"] = offset + limit if more and children else None
    return view


def run_summary(r: RunRecord, nodes: list[NodeRecord]) -> dict[str, Any]:
    """The `headrace run --json` object."""
    view: dict[str, Any] = {
        "run_id": r.run_id,
        "status": r.status,
        "outputs": r.outputs,
        "nodes": {n.node_id: node_view(n) for n in nodes},
    }
    if r.error is not None:
        view["error"] = error_view(r.error)
    return view


def run_view(r: RunRecord, nodes: list[NodeRecord], pin: str | None = None) -> dict[str, Any]:
    """`GET /v1/runs/{id}`: the summary plus where, when and what it cost, and the bus the
    run is pinned to while Redis → Kafka is migrated."""
    return {
        **run_summary(r, nodes),
        "workflow_tag": r.workflow_tag,
        "inputs": r.inputs,
        "created_at": rfc3339(r.created_at_ms),
        "started_at": rfc3339(r.started_at_ms),
        "ended_at": rfc3339(r.ended_at_ms),
        "cost_cents": r.cost_cents,
        "error": error_view(r.error),
        "labels": r.labels,
        "pin": pin,
    }


def run_item(r: RunItem) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "workflow_tag": r.workflow_tag,
        "status": r.status,
        "created_at": rfc3339(r.created_at_ms),
        "ended_at": rfc3339(r.ended_at_ms),
        "labels": r.labels,
    }


def workflow_view(w: WorkflowRecord) -> dict[str, Any]:
    return {
        "name": w.name,
        "version": w.version,
        "tag": w.tag,
        "ir_hash": w.ir_hash,
        "created_at": rfc3339(w.created_at_ms),
    }


def flag_view(flag: Flag, value: bool | int, stored: bool) -> dict[str, Any]:
    return {
        "name": flag.name,
        "value": value,
        "source": "store" if stored else "initial",  # initial: environment or default
        "kind": flag.kind,
        "default": flag.default,
        "help": flag.help,
    }


def flag_change_view(c: FlagChange) -> dict[str, Any]:
    return {
        "name": c.name,
        "old": c.old,
        "new": c.new,
        "who": c.who,
        "why": c.why,
        "at": rfc3339(c.at_ms),
    }
