"""Prometheus metrics, counted from committed transitions (one pass per batch, no per-node
I/O). Each process owns one registry, served at /metrics."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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


class _Histograms(Collector):
    """Histograms by label kept in plain lists, exported when scraped: an observation is a
    bisect and two additions (prometheus_client's takes a lock per bucket and per sum, and
    the per-node series were a tenth of a coordinator's CPU)."""

    def __init__(self, name: str, doc: str, label: str) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.series: dict[str, list[float]] = {}  # label -> bucket counts, then the sum

    def observe(self, label: str, seconds: float) -> None:
        row = self.series.get(label)
        if row is None:
            row = self.series[label] = [0.0] * (len(_TIMES) + 2)
        row[bisect.bisect_left(_TIMES, seconds)] += 1
        row[-1] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for label, row in self.series.items():
            cumulative = list(itertools.accumulate(row[:-1]))
            buckets = [(repr(float(b)), n) for b, n in zip(_TIMES, cumulative, strict=False)]
            family.add_metric([label], [*buckets, ("+Inf", cumulative[-1])], row[-1])
        yield family


class _Counts(Collector):
    """A counter by labels kept in a dict, exported when scraped (as `_Histograms`)."""

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.counts: dict[tuple[str, ...], int] = {}

    def inc(self, *labels: str, by: int = 1) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + by

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, n in self.counts.items():
            family.add_metric(list(labels), n)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs_started = Counter("headrace_runs_started", "Runs started", registry=r)
        self.runs_finished = _Counts("headrace_runs_finished", "Runs ended, by status", ["status"])
        self.node_attempts = _Counts(
            "headrace_node_attempts", "Node attempts by outcome", ["kind", "outcome"]
        )
        self.node_duration = _Histograms(
            "headrace_node_duration_seconds", "Attempt run time (started to result)", "kind"
        )
        self.queue_wait = _Histograms(
            "headrace_node_queue_wait_seconds", "Scheduled to started", "kind"
        )
        self.jobs_dispatched = _Counts(
            "headrace_jobs_dispatched",
            "Jobs sent to workers: through the bus, or to this process's own worker (local)",
            ["via"],
        )
        self.projected = _Counts(
            "headrace_projected_events",
            "Events a projector applied to the read models, or skipped (seen before)",
            ["outcome"],
        )
        self.projection_delay = _Histograms(
            "headrace_projection_delay_seconds",
            "Event committed to applied to the read models, per batch's newest event",
            "projector",
        )
        tallies = (self.runs_finished, self.node_attempts, self.node_duration, self.queue_wait)
        for tally in (*tallies, self.jobs_dispatched, self.projected, self.projection_delay):
            r.register(tally)
        self.commit_seconds = Histogram(
            "headrace_store_commit_seconds",
            "Event-store commit latency per batch",
            buckets=_TIMES,
            registry=r,
        )
        self.queue_depth = Gauge(
            "headrace_queue_depth", "Messages waiting per lane", ["lane"], registry=r
        )
        self.flag = Gauge(
            "headrace_flag_value",
            "Feature flags as this process applies them",
            ["flag"],
            registry=r,
        )

        self.projection_lag = Gauge(
            "headrace_projection_lag_seconds",
            "How far the read models are behind: the last batch's newest event committed to"
            " applied (0 while nothing waits)",
            ["projector"],
            registry=r,
        )

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
                    self.runs_finished.inc(_FINAL[type(e)])
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
                self.queue_wait.observe(kind, max(0, e.at_ms - scheduled) / 1000)
            return
        outcome = (
            "completed"
            if isinstance(e, NodeCompleted)
            else ("retrying" if isinstance(e, NodeRetrying) else "failed")
        )
        self.node_attempts.inc(kind, outcome)
        if started is not None and isinstance(e, NodeCompleted | NodeFailed | NodeRetrying):
            self.node_duration.observe(kind, max(0, e.at_ms - started) / 1000)
