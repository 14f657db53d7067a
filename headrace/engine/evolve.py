"""evolve(state, event): fold one event into the run state, in place (pure, no I/O)."""

from __future__ import annotations

from headrace.engine.state import NodeState, RunState, child_id, split_child
from headrace.events import (
    NODE_DONE,
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
    SignalReceived,
)


def evolve(state: RunState, event: Event) -> RunState:
    """Apply `event` to `state` and return it. Events must come in `seq` order."""
    state.seq = event.seq
    match event:
        case RunStarted():
            state.status = "running"
            state.inputs = event.inputs
            state.vars = event.vars
            state.labels = event.labels
            state.started_at_ms = event.at_ms
        case NodeScheduled():
            node = _node(state, event.node_id)
            node.status, node.attempt = "scheduled", event.attempt
            node.scheduled_at_ms, node.error = event.at_ms, None
            _count_launch(state, event.node_id, event.attempt)
        case NodeStarted():
            node = _node(state, event.node_id)
            node.status, node.attempt, node.started_at_ms = "running", event.attempt, event.at_ms
            if event.width is not None:
                node.width = event.width
        case NodeWaiting():
            node = _node(state, event.node_id)
            node.status, node.attempt, node.started_at_ms = "waiting", 1, event.at_ms
        case NodeCompleted():
            _complete(state, event)
        case NodeRetrying():
            node = _node(state, event.node_id)
            node.status, node.error = "retrying", event.error
        case NodeFailed():
            node = _node(state, event.node_id)
            node.status, node.error = "failed", event.error
            _end(state, event.node_id, node, event.at_ms)
        case NodeSkipped():
            node = _node(state, event.node_id)
            node.status, node.output = "skipped", None
            _end(state, event.node_id, node, event.at_ms)
        case NodeCancelled():
            node = _node(state, event.node_id)
            node.status = "cancelled"
            _end(state, event.node_id, node, event.at_ms)
        case SignalReceived():
            state.signals[event.name] = event.payload
        case RunCompleted():
            state.status, state.outputs, state.ended_at_ms = "completed", event.outputs, event.at_ms
        case RunFailed():
            state.status, state.error, state.ended_at_ms = "failed", event.error, event.at_ms
            state.failed_node = event.node_id
        case RunCancelled():
            state.status, state.ended_at_ms = "cancelled", event.at_ms
    return state


def _node(state: RunState, node_id: str) -> NodeState:
    node = state.nodes.get(node_id)
    if node is None:  # a map child seen for the first time
        node = state.nodes[node_id] = NodeState()
    return node


def _count_launch(state: RunState, node_id: str, attempt: int) -> None:
    parent = split_child(node_id)
    if parent is not None and attempt == 1:
        state.nodes[parent[0]].launched += 1


def _complete(state: RunState, event: NodeCompleted) -> None:
    node = _node(state, event.node_id)
    node.status, node.attempt, node.cost_cents = "completed", event.attempt, event.cost_cents
    if node.width is not None and split_child(event.node_id) is None:
        node.output = [state.nodes[child_id(event.node_id, i)].output for i in range(node.width)]
    else:
        node.output = event.output
    state.cost_cents += event.cost_cents
    _end(state, event.node_id, node, event.at_ms)
    parent = split_child(event.node_id)
    if parent is not None:
        state.nodes[parent[0]].done += 1


def _end(state: RunState, node_id: str, node: NodeState, at_ms: int) -> None:
    node.ended_at_ms = at_ms
    if node_id not in state.plan.nodes:
        return
    state.open_nodes -= 1
    if node.status in NODE_DONE:
        for dep in state.plan.nodes[node_id].dependents:
            state.remaining[dep] -= 1
