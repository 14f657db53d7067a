"""The read models' rows, and how a run's events fold into them (pure: no I/O).

`runs_read` has a `RunRow` per run, `states_read` a `StateRow` per node (map children
included) that has had an event. `fold` is the one definition of both: the projector applies
it to what the bus brings, `verify` to the whole event log, and the two must agree.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from headrace.events import (
    NODE_TERMINAL,
    ErrorInfo,
    Event,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    NodeWaiting,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
)


class RunRow(msgspec.Struct, kw_only=True):
    run_id: str
    workflow_name: str = ""
    workflow_version: int = 0
    status: str = "pending"
    created_at: int | None = None
    started_at: int | None = None
    ended_at: int | None = None
    active_nodes: int = 0  # nodes (map children included) with an event and not ended
    cost_cents: int = 0
    labels: dict[str, str] = {}
    last_seq: int = 0  # the last event applied: the run's position
    last_event_at: int | None = None
    error_type: str | None = None


class StateRow(msgspec.Struct, kw_only=True):
    run_id: str
    node_id: str
    status: str = "pending"
    attempts: int = 0
    started_at: int | None = None
    ended_at: int | None = None
    output_ref: int | None = None  # the seq of the event holding the output (the event log)
    error: ErrorInfo | None = None


def fold(run: RunRow, nodes: dict[str, StateRow], events: Iterable[Event]) -> set[str]:
    """Apply `events` (the run's next ones, in seq order from `run.last_seq + 1`) to `run`
    and to `nodes` (its rows by node id: the rows the events touch must be there when they
    exist; missing ones are created). The ids of the nodes changed."""
    touched: set[str] = set()
    for e in events:
        node_id = getattr(e, "node_id", None)
        if isinstance(node_id, str) and not isinstance(e, RunFailed):
            node = nodes.get(node_id)
            if node is None:
                node = nodes[node_id] = StateRow(run_id=run.run_id, node_id=node_id)
            was_open = node.status not in NODE_TERMINAL and node.status != "pending"
            _fold_node(node, e)
            is_open = node.status not in NODE_TERMINAL
            run.active_nodes += is_open - was_open
            if isinstance(e, NodeCompleted):
                run.cost_cents += e.cost_cents
            touched.add(node_id)
        else:
            _fold_run(run, e)
        run.last_seq, run.last_event_at = e.seq, e.at_ms
    return touched


def _fold_run(run: RunRow, e: Event) -> None:
    match e:
        case RunStarted():
            name, _, version = e.workflow_tag.partition("@")
            run.workflow_name, run.workflow_version = name, int(version or 0)
            run.status, run.labels = "running", dict(e.labels)
            run.created_at = run.started_at = e.at_ms
        case RunCompleted():
            run.status, run.ended_at = "completed", e.at_ms
        case RunFailed():
            run.status, run.ended_at, run.error_type = "failed", e.at_ms, e.error.type
        case RunCancelled():
            run.status, run.ended_at = "cancelled", e.at_ms


def _fold_node(node: StateRow, e: Event) -> None:
    """As the engine's `evolve` sets a node's status, attempt, times and error."""
    match e:
        case NodeScheduled():
            node.status, node.attempts, node.error = "scheduled", e.attempt, None
        case NodeStarted():
            node.status, node.attempts, node.started_at = "running", e.attempt, e.at_ms
        case NodeWaiting():
            node.status, node.attempts, node.started_at = "waiting", 1, e.at_ms
        case NodeCompleted():
            node.status, node.attempts, node.ended_at = "completed", e.attempt, e.at_ms
            node.output_ref = e.seq
        case NodeRetrying():
            node.status, node.error = "retrying", e.error
        case NodeFailed():
            node.status, node.error, node.ended_at = "failed", e.error, e.at_ms
        case NodeSkipped():
            node.status, node.ended_at = "skipped", e.at_ms
        case NodeCancelled():
            node.status, node.ended_at = "cancelled", e.at_ms
