"""Prometheus metrics, counted from committed transitions (one pass per batch, no per-node
I/O). Each process owns one registry, served at /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from headrace.events import (
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeStarted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
)
from headrace.store import Transition

_FINAL = {RunCompleted: "completed", RunFailed: "failed", RunCancelled: "cancelled"}
_TIMES = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs_started = Counter("headrace_runs_started", "Runs started", registry=r)
        self.runs_finished = Counter(
            "headrace_runs_finished", "Runs ended, by status", ["status"], registry=r
        )
        self.node_attempts = Counter(
            "headrace_node_attempts", "Node attempts by outcome", ["kind", "outcome"], registry=r
        )
        self.node_duration = Histogram(
            "headrace_node_duration_seconds",
            "Attempt run time (started to result)",
            ["kind"],
            buckets=_TIMES,
            registry=r,
        )
        self.queue_wait = Histogram(
            "headrace_node_queue_wait_seconds",
            "Scheduled to started",
            ["kind"],
            buckets=_TIMES,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "headrace_store_commit_seconds",
            "Event-store commit latency per batch",
            buckets=_TIMES,
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.queue_depth = Gauge(
            "headrace_queue_depth", "Messages waiting per lane", ["lane"], registry=r
        )
        self.flag = Gauge(
            "headrace_flag_value",
            "Feature flags as this process applies them",
            ["flag"],
            registry=r,
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(...)`, cached: the lookup costs more than the observation."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def flag_changed(self, name: str, value: bool | int) -> None:
        self.flag.labels(name).set(int(value))

    def watch_depth(self, lane: str, read: Callable[[], float]) -> None:
        self.queue_depth.labels(lane).set_function(read)

    def observe(self, transitions: list[Transition]) -> None:
        for t in transitions:
            nodes = t.state.nodes
            plan = t.state.plan
            for e in t.events:
                if isinstance(e, RunStarted):
                    self.runs_started.inc()
                elif type(e) in _FINAL:
                    self._child(self.runs_finished, _FINAL[type(e)]).inc()
                elif isinstance(e, NodeStarted | NodeCompleted | NodeFailed | NodeRetrying):
                    node = nodes.get(e.node_id)
                    top = e.node_id.partition("[")[0]
                    kind = plan.nodes[top].ir.kind if top in plan.nodes else "?"
                    if node is None or (node.width is not None and top == e.node_id):
                        continue  # a map node itself runs nothing
                    self._node(e, node.scheduled_at_ms, node.started_at_ms, kind)

    def _node(self, e: object, scheduled: int | None, started: int | None, kind: str) -> None:
        if isinstance(e, NodeStarted):
            if scheduled is not None:
                self._child(self.queue_wait, kind).observe(max(0, e.at_ms - scheduled) / 1000)
            return
        outcome = (
            "completed"
            if isinstance(e, NodeCompleted)
            else ("retrying" if isinstance(e, NodeRetrying) else "failed")
        )
        self._child(self.node_attempts, kind, outcome).inc()
        if started is not None and isinstance(e, NodeCompleted | NodeFailed | NodeRetrying):
            self._child(self.node_duration, kind).observe(max(0, e.at_ms - started) / 1000)
