"""Events, jobs and results: the values that cross the store and the bus (pure data).

Times are integer milliseconds since the epoch (`*_ms`). Every event carries its run's
sequence number; the engine assigns it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
NodeStatus = Literal[
    "pending",
    "scheduled",
    "running",
    "waiting",
    "retrying",
    "completed",
    "failed",
    "skipped",
    "cancelled",
]
RUN_TERMINAL: frozenset[RunStatus] = frozenset({"completed", "failed", "cancelled"})
NODE_TERMINAL: frozenset[NodeStatus] = frozenset({"completed", "failed", "skipped", "cancelled"})
NODE_DONE: frozenset[NodeStatus] = frozenset({"completed", "skipped"})
IN_FLIGHT: frozenset[NodeStatus] = frozenset({"scheduled", "running"})  # an attempt in flight
NODE_OPEN: frozenset[NodeStatus] = frozenset(get_args(NodeStatus)) - NODE_TERMINAL


class ErrorInfo(msgspec.Struct, frozen=True):
    type: str
    message: str
    retryable: bool = False


class _Event(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    seq: int
    at_ms: int


class RunStarted(_Event, frozen=True):
    workflow_tag: str
    ir_hash: str
    inputs: dict[str, Any]
    vars: dict[str, Any] = {}
    labels: dict[str, str] = {}


class NodeScheduled(_Event, frozen=True):
    node_id: str
    attempt: int


class NodeStarted(_Event, frozen=True):
    node_id: str
    attempt: int
    width: int | None = None  # map nodes: how many children


class NodeWaiting(_Event, frozen=True):
    node_id: str
    signal: str


class NodeCompleted(_Event, frozen=True):
    node_id: str
    attempt: int
    output: Any = None  # map nodes: assembled from the children, not stored twice
    cost_cents: int = 0


class NodeRetrying(_Event, frozen=True):
    node_id: str
    attempt: int
    error: ErrorInfo
    retry_at_ms: int


class NodeFailed(_Event, frozen=True):
    node_id: str
    attempt: int
    error: ErrorInfo


class NodeSkipped(_Event, frozen=True):
    node_id: str


class NodeCancelled(_Event, frozen=True):
    node_id: str


class SignalReceived(_Event, frozen=True):
    name: str
    payload: Any = None


class RunCompleted(_Event, frozen=True):
    outputs: dict[str, Any]


class RunFailed(_Event, frozen=True):
    error: ErrorInfo
    node_id: str | None = None


class RunCancelled(_Event, frozen=True):
    reason: str = ""


Event = (
    RunStarted
    | NodeScheduled
    | NodeStarted
    | NodeWaiting
    | NodeCompleted
    | NodeRetrying
    | NodeFailed
    | NodeSkipped
    | NodeCancelled
    | SignalReceived
    | RunCompleted
    | RunFailed
    | RunCancelled
)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """Asks a worker to run one attempt of one node."""

    run_id: str
    node_id: str
    attempt: int
    kind: str
    priority: str
    timeout_ms: int
    scheduled_at_ms: int
    idempotency_key: str
    args: Any = None  # the node's evaluated `with`
    task: str | None = None
    config: dict[str, Any] = {}  # http request / agent command, secrets still as markers


class Started(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """A worker began a job that is taking a while (sent lazily, see runtime.worker)."""

    run_id: str
    node_id: str
    attempt: int
    at_ms: int


class Finished(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """The outcome of one attempt: an output, or an error."""

    run_id: str
    node_id: str
    attempt: int
    started_at_ms: int
    at_ms: int
    output: Any = None
    error: ErrorInfo | None = None
    cost_cents: int = 0


Result = Started | Finished


class CancelJob(msgspec.Struct, frozen=True, kw_only=True):
    """Tells workers to stop an attempt whose run ended."""

    run_id: str
    node_id: str
    attempt: int


class Timer(msgspec.Struct, frozen=True, kw_only=True):
    """A durable wake-up: retry backoff, wait timeout, or an attempt's deadline."""

    run_id: str
    kind: Literal["retry", "wait", "deadline"]
    node_id: str
    attempt: int
    due_at_ms: int

    @property
    def timer_id(self) -> str:
        return f"{self.kind}:{self.node_id}:{self.attempt}"


class Message(msgspec.Struct, frozen=True):
    """What the bus carries and the outbox keeps: a payload for a topic, keyed by run id."""

    topic: str
    key: str
    payload: bytes
    headers: dict[str, str] = {}
