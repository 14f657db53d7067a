"""decide(state, command): the scheduling rules of a run (pure: no I/O, no clock).

Each command yields events, which are folded into `state` as they are emitted (so later
rules see them), plus the jobs, timers and job cancellations the runtime must carry out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from headrace.engine.evolve import evolve
from headrace.engine.policy import backoff_ms, may_retry
from headrace.engine.state import NodesView, RunState, child_id, split_child
from headrace.events import (
    IN_FLIGHT,
    NODE_TERMINAL,
    RUN_TERMINAL,
    CancelJob,
    ErrorInfo,
    Event,
    Job,
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
    Timer,
)
from headrace.spec import ExprError, PlanNode

DEADLINE_GRACE_MS = 5_000  # the worker enforces timeouts; the engine's deadline is a backstop


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    at_ms: int
    inputs: dict[str, Any]
    vars: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MarkStarted:
    node_id: str
    attempt: int
    at_ms: int


@dataclass(frozen=True)
class Complete:
    node_id: str
    attempt: int
    started_at_ms: int
    at_ms: int
    output: Any = None
    cost_cents: int = 0


@dataclass(frozen=True)
class Fail:
    node_id: str
    attempt: int
    started_at_ms: int
    at_ms: int
    error: ErrorInfo


@dataclass(frozen=True)
class Fire:
    timer: Timer
    at_ms: int


@dataclass(frozen=True)
class Signal:
    name: str
    payload: Any
    at_ms: int


@dataclass(frozen=True)
class Cancel:
    at_ms: int
    reason: str = "cancelled by request"


Command = Start | MarkStarted | Complete | Fail | Fire | Signal | Cancel


@dataclass
class Decision:
    """What one command produced. Events are already folded into the state."""

    events: list[Event] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    cancels: list[CancelJob] = field(default_factory=list)


def decide(state: RunState, command: Command) -> Decision:
    """Apply `command` to the run; stale or duplicate commands produce nothing."""
    d = _Decider(state, command.at_ms)
    if state.status in RUN_TERMINAL:
        return d.out
    match command:
        case Start():
            d.start(command)
        case MarkStarted():
            d.mark_started(command)
        case Complete():
            d.complete(command)
        case Fail():
            d.fail(command)
        case Fire():
            d.fire(command.timer)
        case Signal():
            d.signal(command)
        case Cancel():
            d.end_run(RunCancelled(seq=0, at_ms=d.now, reason=command.reason))
    return d.out


def maps_to_load(state: RunState, command: Command) -> list[str]:
    """The maps whose every child the decision on `command` reads: a child's result that
    may complete its map (the map's output is its children's). A state loaded with only
    its open children (a reload of a run with a wide map) needs those children first."""
    if not isinstance(command, Complete):
        return []
    parent, child = split_child(command.node_id), state.nodes.get(command.node_id)
    if parent is None or child is None or child.status not in IN_FLIGHT:
        return []  # a duplicate or stale result (a done child is not loaded): decides nothing
    p = state.nodes[parent[0]]
    return [parent[0]] if state.status == "running" and p.done + 1 == p.width else []


def child_of(command: Command) -> str | None:
    """The map child a command is about (its start notice, result or timer); None for any
    other command."""
    match command:
        case MarkStarted() | Complete() | Fail():
            node_id = command.node_id
        case Fire():
            node_id = command.timer.node_id
        case _:
            return None
    return node_id if split_child(node_id) is not None else None


def decided_alone(state: RunState, command: Command) -> bool:
    """Whether the decision on `command` reads no node but its map child (loaded) and the
    child's map: a start notice; a result that neither completes the map nor launches
    another child; a failure to be retried; a stale one. A state loaded without the map's
    other open children decides these as the whole run does. Any other command may end the
    run, which cancels every open node: it needs them all."""
    child = child_of(command)
    if child is None or not isinstance(command, MarkStarted | Complete | Fail):
        return False
    node = state.nodes.get(child)
    if node is None or node.status not in IN_FLIGHT or node.attempt != command.attempt:
        return True  # stale or a duplicate: decides nothing
    if isinstance(command, MarkStarted):
        return True
    pid = child.rpartition("[")[0]
    p = state.nodes[pid]
    if p.width is None or p.launched < p.width:
        return False  # it launches the map's next child, and building a job may fail
    if isinstance(command, Complete):
        return p.done + 1 < p.width
    return may_retry(state.plan.nodes[pid].ir.retry, command.attempt, command.error.retryable)


def jobs_in_flight(state: RunState, unstarted_before_ms: int | None = None) -> list[Job]:
    """Jobs for every attempt the run is waiting on: republished when a bus lost them.
    With `unstarted_before_ms`, only those scheduled before then and not started."""
    d = _Decider(state, 0)
    jobs = []
    for nid, node in state.nodes.items():
        if unstarted_before_ms is not None and not (
            node.status == "scheduled" and (node.scheduled_at_ms or 0) < unstarted_before_ms
        ):
            continue
        if node.status in IN_FLIGHT and node.width is None:
            job = d.build_job(nid, node.attempt, node.scheduled_at_ms or 0)
            if job is not None:
                jobs.append(job)
    return jobs


class _Decider:
    def __init__(self, state: RunState, now: int) -> None:
        self.state = state
        self.plan = state.plan
        self.now = now
        self.out = Decision()

    @property
    def seq(self) -> int:
        """The sequence number of the next event (each is emitted as soon as it is built)."""
        return self.state.seq + 1

    def emit(self, event: Event) -> None:
        evolve(self.state, event)
        self.out.events.append(event)

    # --- command handlers ---

    def start(self, cmd: Start) -> None:
        if self.state.status != "pending":
            return
        p = self.plan
        self.emit(
            RunStarted(
                seq=self.seq,
                at_ms=self.now,
                workflow_tag=p.tag,
                ir_hash=p.ir_hash,
                inputs=cmd.inputs,
                vars=cmd.vars,
                labels=cmd.labels,
            )
        )
        for nid in p.roots:
            self.ready(nid)
        self.maybe_finish()

    def mark_started(self, cmd: MarkStarted) -> None:
        node = self.state.nodes.get(cmd.node_id)
        if node is None or node.attempt != cmd.attempt or node.status != "scheduled":
            return
        self.emit(
            NodeStarted(seq=self.seq, at_ms=cmd.at_ms, node_id=cmd.node_id, attempt=cmd.attempt)
        )
        timeout = self.plan_node(cmd.node_id).ir.timeout_ms
        self.out.timers.append(
            Timer(
                run_id=self.state.run_id,
                kind="deadline",
                node_id=cmd.node_id,
                attempt=cmd.attempt,
                due_at_ms=cmd.at_ms + timeout + DEADLINE_GRACE_MS,
            )
        )

    def _accept(self, node_id: str, attempt: int, started_at_ms: int) -> bool:
        """Whether a result is for the live attempt; emits NodeStarted if not yet seen."""
        node = self.state.nodes.get(node_id)
        if node is None or node.attempt != attempt or node.status not in IN_FLIGHT:
            return False
        if node.status == "scheduled":
            self.emit(
                NodeStarted(seq=self.seq, at_ms=started_at_ms, node_id=node_id, attempt=attempt)
            )
        return True

    def complete(self, cmd: Complete) -> None:
        if not self._accept(cmd.node_id, cmd.attempt, cmd.started_at_ms):
            return
        self.emit(
            NodeCompleted(
                seq=self.seq,
                at_ms=cmd.at_ms,
                node_id=cmd.node_id,
                attempt=cmd.attempt,
                output=cmd.output,
                cost_cents=cmd.cost_cents,
            )
        )
        self.after_done(cmd.node_id)
        self.maybe_finish()

    def fail(self, cmd: Fail) -> None:
        if not self._accept(cmd.node_id, cmd.attempt, cmd.started_at_ms):
            return
        self.attempt_failed(cmd.node_id, cmd.attempt, cmd.error)

    def fire(self, timer: Timer) -> None:
        node = self.state.nodes.get(timer.node_id)
        if node is None or node.attempt != timer.attempt:
            return
        if timer.kind == "retry" and node.status == "retrying":
            self.schedule(timer.node_id, timer.attempt + 1)
        elif timer.kind == "deadline" and node.status in IN_FLIGHT:
            timeout = self.plan_node(timer.node_id).ir.timeout_ms
            error = ErrorInfo("timeout", f"no result within the {timeout} ms timeout", True)
            self.attempt_failed(timer.node_id, timer.attempt, error)
        elif timer.kind == "wait" and node.status == "waiting":
            name = self.plan_node(timer.node_id).ir.wait
            error = ErrorInfo(
                "timeout", f"signal {name.signal if name else ''!r} did not arrive in time", False
            )
            self.emit(
                NodeFailed(
                    seq=self.seq,
                    at_ms=self.now,
                    node_id=timer.node_id,
                    attempt=node.attempt,
                    error=error,
                )
            )
            self.run_failed(timer.node_id, error)
        self.maybe_finish()

    def signal(self, cmd: Signal) -> None:
        self.emit(SignalReceived(seq=self.seq, at_ms=self.now, name=cmd.name, payload=cmd.payload))
        for nid, pn in self.plan.nodes.items():
            wait = pn.ir.wait
            if wait and wait.signal == cmd.name and self.state.nodes[nid].status == "waiting":
                self.emit(
                    NodeCompleted(
                        seq=self.seq, at_ms=self.now, node_id=nid, attempt=1, output=cmd.payload
                    )
                )
                self.after_done(nid)
        self.maybe_finish()

    # --- rules ---

    def plan_node(self, node_id: str) -> PlanNode:
        parent = split_child(node_id)
        return self.plan.nodes[parent[0] if parent else node_id]

    def context(self, item: tuple[str, Any] | None = None) -> dict[str, Any]:
        ctx = {"inputs": self.state.inputs, "nodes": NodesView(self.state), "vars": self.state.vars}
        if item is not None:
            ctx[item[0]] = item[1]
        return ctx

    def ready(self, nid: str) -> None:
        """All needs of top-level node `nid` are done: skip, wait, fan out or schedule it."""
        if self.state.status != "running":
            return
        pn = self.plan.nodes[nid]
        if pn.when is not None:
            try:
                go = bool(pn.when(self.context()))
            except ExprError as e:
                return self.failed_for_good(nid, 0, ErrorInfo("expression", f"when: {e}"))
            if not go:
                self.emit(NodeSkipped(seq=self.seq, at_ms=self.now, node_id=nid))
                return self.after_done(nid)
        if pn.ir.wait is not None:
            return self.wait(nid, pn)
        if pn.items is not None:
            return self.fan_out(nid, pn)
        self.schedule(nid, 1)

    def wait(self, nid: str, pn: PlanNode) -> None:
        assert pn.ir.wait is not None
        signal = pn.ir.wait.signal
        self.emit(NodeWaiting(seq=self.seq, at_ms=self.now, node_id=nid, signal=signal))
        if signal in self.state.signals:
            self.emit(
                NodeCompleted(
                    seq=self.seq,
                    at_ms=self.now,
                    node_id=nid,
                    attempt=1,
                    output=self.state.signals[signal],
                )
            )
            return self.after_done(nid)
        if pn.ir.wait.timeout_ms is not None:
            self.out.timers.append(
                Timer(
                    run_id=self.state.run_id,
                    kind="wait",
                    node_id=nid,
                    attempt=1,
                    due_at_ms=self.now + pn.ir.wait.timeout_ms,
                )
            )

    def fan_out(self, nid: str, pn: PlanNode) -> None:
        assert pn.items is not None
        try:
            items = pn.items(self.context())
        except ExprError as e:
            return self.failed_for_good(nid, 0, ErrorInfo("expression", f"map: {e}"))
        if not isinstance(items, list):
            error = ErrorInfo("expression", f"map: expected a list, got {type(items).__name__}")
            return self.failed_for_good(nid, 0, error)
        self.state.items[nid] = items
        self.emit(
            NodeStarted(seq=self.seq, at_ms=self.now, node_id=nid, attempt=1, width=len(items))
        )
        if not items:
            self.emit(NodeCompleted(seq=self.seq, at_ms=self.now, node_id=nid, attempt=1))
            return self.after_done(nid)
        limit = pn.ir.map.max_concurrency if pn.ir.map else 0
        for _ in range(min(len(items), limit or len(items))):
            self.launch_child(nid)

    def launch_child(self, parent: str) -> None:
        if self.state.status != "running":
            return
        self.schedule(child_id(parent, self.state.nodes[parent].launched), 1)

    def schedule(self, node_id: str, attempt: int) -> None:
        try:
            job = self.build_job(node_id, attempt, self.now)
        except ExprError as e:
            return self.failed_for_good(node_id, attempt, ErrorInfo("expression", str(e)))
        self.emit(NodeScheduled(seq=self.seq, at_ms=self.now, node_id=node_id, attempt=attempt))
        if job is not None:
            self.out.jobs.append(job)

    def map_item(self, node_id: str) -> tuple[str, Any] | None:
        parent = split_child(node_id)
        if parent is None:
            return None
        pid, index = parent
        items = self.state.items.get(pid)
        if items is None:  # after a reload: evaluate the (deterministic) list again
            pn = self.plan.nodes[pid]
            assert pn.items is not None
            items = self.state.items[pid] = pn.items(self.context())
        spec = self.plan.nodes[pid].ir.map
        assert spec is not None
        return spec.item_name, items[index]

    def build_job(self, node_id: str, attempt: int, scheduled_at_ms: int) -> Job | None:
        pn = self.plan_node(node_id)
        ctx = self.context(self.map_item(node_id))
        ir = pn.ir
        return Job(
            run_id=self.state.run_id,
            node_id=node_id,
            attempt=attempt,
            kind=ir.kind,
            priority=ir.priority,
            timeout_ms=ir.timeout_ms,
            scheduled_at_ms=scheduled_at_ms,
            idempotency_key=f"{self.state.run_id}/{node_id}",
            args=pn.args(ctx),
            task=ir.task,
            config=_agent_limits(pn, pn.config(ctx)),
        )

    def attempt_failed(self, node_id: str, attempt: int, error: ErrorInfo) -> None:
        policy = self.plan_node(node_id).ir.retry
        if may_retry(policy, attempt, error.retryable):
            due = self.now + backoff_ms(policy, attempt)
            self.emit(
                NodeRetrying(
                    seq=self.seq,
                    at_ms=self.now,
                    node_id=node_id,
                    attempt=attempt,
                    error=error,
                    retry_at_ms=due,
                )
            )
            self.out.timers.append(
                Timer(
                    run_id=self.state.run_id,
                    kind="retry",
                    node_id=node_id,
                    attempt=attempt,
                    due_at_ms=due,
                )
            )
            return
        self.failed_for_good(node_id, attempt, error)

    def failed_for_good(self, node_id: str, attempt: int, error: ErrorInfo) -> None:
        self.emit(
            NodeFailed(seq=self.seq, at_ms=self.now, node_id=node_id, attempt=attempt, error=error)
        )
        parent = split_child(node_id)
        if parent is not None:
            pid = parent[0]
            wrapped = ErrorInfo(error.type, f"item {parent[1]}: {error.message}", False)
            self.emit(
                NodeFailed(seq=self.seq, at_ms=self.now, node_id=pid, attempt=1, error=wrapped)
            )
            return self.run_failed(pid, wrapped)
        self.run_failed(node_id, error)

    def run_failed(self, node_id: str, error: ErrorInfo) -> None:
        message = f"node {node_id} failed: {error.message}"
        self.end_run(
            RunFailed(
                seq=self.seq,
                at_ms=self.now,
                node_id=node_id,
                error=ErrorInfo(error.type, message, False),
            )
        )

    def end_run(self, final: RunFailed | RunCancelled | RunCompleted) -> None:
        """Cancel every node still open, then emit the run's terminal event."""
        for nid in sorted(
            (n for n, s in self.state.nodes.items() if s.status not in NODE_TERMINAL),
            key=self.position,
        ):
            node = self.state.nodes[nid]
            if node.status in IN_FLIGHT and node.width is None:
                self.out.cancels.append(
                    CancelJob(run_id=self.state.run_id, node_id=nid, attempt=node.attempt)
                )
            self.emit(NodeCancelled(seq=self.seq, at_ms=self.now, node_id=nid))
        self.emit(msgspec.structs.replace(final, seq=self.seq))  # built before the loop

    def position(self, node_id: str) -> tuple[int, int, int]:
        """Top-level nodes in plan order, then map children by map and index: the same
        order whatever order the nodes were loaded or launched in."""
        parent = split_child(node_id)
        top, index = parent if parent else (node_id, -1)
        return (parent is not None, self.plan.position[top], index)

    def after_done(self, node_id: str) -> None:
        """`node_id` completed or was skipped: advance its map or its dependents."""
        parent = split_child(node_id)
        if parent is not None:
            pid = parent[0]
            p = self.state.nodes[pid]
            assert p.width is not None
            if p.launched < p.width:
                self.launch_child(pid)
            elif p.done == p.width:
                self.emit(NodeCompleted(seq=self.seq, at_ms=self.now, node_id=pid, attempt=1))
                self.after_done(pid)
            return
        for dep in self.plan.nodes[node_id].dependents:
            if self.state.remaining[dep] == 0 and self.state.nodes[dep].status == "pending":
                self.ready(dep)

    def maybe_finish(self) -> None:
        if self.state.status != "running" or self.state.open_nodes:
            return
        try:
            outputs = self.plan.outputs(self.context())
        except ExprError as e:
            error = ErrorInfo("expression", f"outputs: {e}")
            self.emit(RunFailed(seq=self.seq, at_ms=self.now, error=error))
            return
        self.emit(RunCompleted(seq=self.seq, at_ms=self.now, outputs=outputs))


def _agent_limits(pn: PlanNode, config: dict[str, Any]) -> dict[str, Any]:
    agent = pn.ir.agent
    if agent is None:
        return config
    return {
        **config,
        "env": agent.env,
        "memory_bytes": agent.memory_bytes,
        "cpu_seconds": agent.cpu_seconds,
        "workdir": agent.workdir,
    }
