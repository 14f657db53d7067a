"""Run state <-> table rows, shared by the SQL stores."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from headrace.bus.topics import JOB_LANES
from headrace.engine import NodeState, RunState, split_child
from headrace.events import (
    IN_FLIGHT,
    NODE_DONE,
    NODE_OPEN,
    NODE_TERMINAL,
    ErrorInfo,
    Event,
    Message,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    Timer,
)
from headrace.spec import Plan, decode_ir
from headrace.store.base import (
    FlagChange,
    NodeRecord,
    RunHead,
    RunRecord,
    Transition,
    WorkflowRecord,
)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
_err_dec = msgspec.json.Decoder(ErrorInfo)
_timer_dec = msgspec.json.Decoder(Timer)


class _JobRef(msgspec.Struct):
    node_id: str
    attempt: int


_job_ref_dec = msgspec.json.Decoder(_JobRef)
# SQL: the statuses of a node whose current attempt may still run (its job is not stale)
OPEN_ATTEMPT = "(" + ", ".join(f"'{s}'" for s in sorted(IN_FLIGHT)) + ")"  # SQL
# SQL: a map child not yet ended. No index holds these: a partial one cost maps 7-15 % of
# their throughput (a child enters it and leaves it), and the server filters a 100,000-wide
# map's rows in ~25 ms; what a reload saves is shipping and decoding them (~320 ms).
OPEN_CHILD = (
    "parent IS NOT NULL AND status IN (" + ", ".join(f"'{s}'" for s in sorted(NODE_OPEN)) + ")"
)


def job_ref(m: Message) -> tuple[str | None, int | None]:
    """(node id, attempt) of a job message; (None, None) for any other."""
    if m.topic not in JOB_LANES:
        return None, None
    ref = _job_ref_dec.decode(m.payload)
    return ref.node_id, ref.attempt


def outbox_values(run_id: str, m: Message, holder: str | None, now: int) -> tuple[Any, ...]:
    """The values of an outbox row: topic, key, payload, headers, holder, node_id, attempt,
    created_at."""
    node_id, attempt = job_ref(m)
    return (m.topic, m.key, m.payload, dumps(m.headers), holder, node_id, attempt, now)


def ended_attempts(t: Transition) -> list[tuple[str, str, int]]:
    """(run id, node id, attempt) of every attempt the transition's events end."""
    s = t.state
    out = []
    for e in t.events:
        if isinstance(e, NodeCompleted | NodeFailed | NodeRetrying):
            out.append((s.run_id, e.node_id, e.attempt))
        elif isinstance(e, NodeCancelled):
            out.append((s.run_id, e.node_id, s.nodes[e.node_id].attempt))
    return out


def dumps(value: Any) -> str:
    return _enc.encode(value).decode()


def loads(text: str | bytes | None) -> Any:
    return None if text is None else _dec.decode(text)


def load_error(text: str | None) -> ErrorInfo | None:
    return None if text is None else _err_dec.decode(text)


def load_timer(text: str) -> Timer:
    return _timer_dec.decode(text)


# Column lists of the SELECTs both stores run, in the order the converters below read them.
WORKFLOW_SELECT = "name, version, ir_hash, ir, created_at"
RUN_SELECT = (
    "run_id, workflow_name, workflow_version, ir_hash, status, inputs, outputs, error, "
    "failed_node, cost_cents, seq, created_at, started_at, ended_at, labels"
)
RUN_HEAD_SELECT = "run_id, workflow_name, workflow_version, status, seq"
RUN_STATE_SELECT = (
    "ir_hash, status, version, seq, inputs, vars, signals, outputs, error, failed_node, "
    "cost_cents, created_at, started_at, ended_at, labels"
)
NODE_SELECT = (
    "node_id, status, attempt, output, error, scheduled_at, started_at, ended_at, cost_cents, "
    "width, launched, done"
)


RUN_COLUMNS = (
    "status",
    "version",
    "seq",
    "signals",
    "outputs",
    "error",
    "failed_node",
    "cost_cents",
    "started_at",
    "ended_at",
)


def run_values(s: RunState) -> tuple[Any, ...]:
    """Values for RUN_COLUMNS."""
    return (
        s.status,
        s.version,
        s.seq,
        dumps(s.signals),
        None if s.outputs is None else dumps(s.outputs),
        None if s.error is None else dumps(s.error),
        s.failed_node,
        s.cost_cents,
        s.started_at_ms,
        s.ended_at_ms,
    )


def new_run_values(t: Transition) -> tuple[Any, ...]:
    """The values of a new `runs` row: identity, inputs, then RUN_COLUMNS (version + 1)."""
    s = t.state
    run = run_values(s)
    return (
        s.run_id,
        s.plan.ir.name,
        s.plan.ir.version,
        s.plan.ir_hash,
        dumps(s.inputs),
        dumps(s.vars),
        s.created_at_ms,
        t.idempotency_key,
        dumps(s.labels),
        run[0],
        s.version + 1,
        *run[2:],
    )


NODE_COLUMNS = (
    "run_id",
    "node_id",
    "parent",
    "idx",
    "status",
    "attempt",
    "output",
    "error",
    "scheduled_at",
    "started_at",
    "ended_at",
    "cost_cents",
    "width",
    "launched",
    "done",
)


def node_values(run_id: str, node_id: str, n: NodeState) -> tuple[Any, ...]:
    parent = split_child(node_id)
    return (
        run_id,
        node_id,
        parent[0] if parent else None,
        parent[1] if parent else None,
        n.status,
        n.attempt,
        None if n.output is None else dumps(n.output),
        None if n.error is None else dumps(n.error),
        n.scheduled_at_ms,
        n.started_at_ms,
        n.ended_at_ms,
        n.cost_cents,
        n.width,
        n.launched,
        n.done,
    )


def touched(events: list[Event]) -> list[str]:
    """The nodes whose rows a transition rewrites: those its events name, and the map node of
    each child among them (its counters moved)."""
    ids: dict[str, None] = {}
    for e in events:
        node_id = getattr(e, "node_id", None)
        if isinstance(node_id, str):
            ids[node_id] = None
            parent = split_child(node_id)
            if parent is not None:
                ids[parent[0]] = None
    return list(ids)


def node_from_row(row: Any) -> NodeState:
    """A NodeState from a row holding NODE_COLUMNS[4:] in order."""
    (status, attempt, output, error, scheduled, started, ended, cost, width, launched, done) = row
    return NodeState(
        status=status,
        attempt=attempt,
        output=loads(output),
        error=load_error(error),
        scheduled_at_ms=scheduled,
        started_at_ms=started,
        ended_at_ms=ended,
        cost_cents=cost,
        width=width,
        launched=launched,
        done=done,
    )


def rebuild(run_id: str, plan: Plan, run_row: Any, node_rows: list[tuple[str, Any]]) -> RunState:
    """The state from its rows: the counters the fold keeps are derived from node statuses."""
    (
        status,
        version,
        seq,
        inputs,
        vars_,
        signals,
        outputs,
        error,
        failed_node,
        cost,
        created,
        started,
        ended,
        labels,
    ) = run_row
    state = RunState(
        run_id=run_id,
        plan=plan,
        status=status,
        inputs=loads(inputs),
        vars=loads(vars_),
        seq=seq,
        version=version,
        created_at_ms=created,
        started_at_ms=started,
        ended_at_ms=ended,
        outputs=loads(outputs),
        error=load_error(error),
        failed_node=failed_node,
        cost_cents=cost,
        signals=loads(signals),
        labels=loads(labels),
    )
    for nid in plan.nodes:
        state.nodes[nid] = NodeState()
    for node_id, row in node_rows:
        state.nodes[node_id] = node_from_row(row)
    for nid, pn in plan.nodes.items():
        state.remaining[nid] = sum(
            1 for need in pn.ir.needs if state.nodes[need].status not in NODE_DONE
        )
    state.open_nodes = sum(1 for nid in plan.nodes if state.nodes[nid].status not in NODE_TERMINAL)
    return state


def workflow_record(row: Any) -> WorkflowRecord:
    """A WorkflowRecord from a row holding WORKFLOW_SELECT."""
    return WorkflowRecord(row[0], row[1], row[2], decode_ir(row[3].encode()), row[4])


def run_record(r: Any) -> RunRecord:
    """A RunRecord from a row holding RUN_SELECT."""
    return RunRecord(
        run_id=r[0],
        workflow_tag=f"{r[1]}@{r[2]}",
        ir_hash=r[3],
        status=r[4],
        inputs=loads(r[5]),
        outputs=loads(r[6]),
        error=load_error(r[7]),
        failed_node=r[8],
        cost_cents=r[9],
        seq=r[10],
        created_at_ms=r[11],
        started_at_ms=r[12],
        ended_at_ms=r[13],
        labels=loads(r[14]),
    )


def run_head(r: Any) -> RunHead:
    """A RunHead from a row holding RUN_HEAD_SELECT."""
    return RunHead(run_id=r[0], workflow_tag=f"{r[1]}@{r[2]}", status=r[3], seq=r[4])


def node_record(node_id: str, row: Any, children: dict[str, int] | None) -> NodeRecord:
    """A NodeRecord from a row holding NODE_SELECT[1:] (None: the node has no row yet)."""
    if row is None:
        return NodeRecord(node_id, "pending", 0, None, None, None, None, None, 0)
    n = node_from_row(row)
    return NodeRecord(
        node_id,
        n.status,
        n.attempt,
        n.output,
        n.error,
        n.scheduled_at_ms,
        n.started_at_ms,
        n.ended_at_ms,
        n.cost_cents,
        n.width,
        children if n.width is not None else None,
    )


FLAG_CHANGE_SELECT = "name, old, new, who, why, at"


def flag_change(row: Any) -> FlagChange:
    name, old, new, who, why, at = row
    return FlagChange(name, None if old is None else json.loads(old), json.loads(new), who, why, at)


def flag_values(
    names: Iterable[str], stored: Mapping[str, str], initial: Mapping[str, bool | int]
) -> dict[str, bool | int]:
    """The values of the flags `names`: stored (as JSON text), else initial."""
    return {n: json.loads(stored[n]) if n in stored else initial[n] for n in names}
