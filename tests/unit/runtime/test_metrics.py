"""The per-node series are tallied in plain Python and exported in Prometheus's format."""

from __future__ import annotations

from prometheus_client import generate_latest

from headrace.runtime.metrics import Metrics


def test_histograms_and_counts_export_as_prometheus_would() -> None:
    m = Metrics()
    for seconds in (0.0005, 0.001, 0.002, 400.0):
        m.queue_wait.observe("task", seconds)
    m.node_attempts.inc("http", "failed")
    m.node_attempts.inc("http", "failed")
    m.runs_finished.inc("completed")
    text = generate_latest(m.registry).decode()
    assert 'headrace_node_queue_wait_seconds_bucket{kind="task",le="0.001"} 2.0' in text
    assert 'headrace_node_queue_wait_seconds_bucket{kind="task",le="0.005"} 3.0' in text
    assert 'headrace_node_queue_wait_seconds_bucket{kind="task",le="300.0"} 3.0' in text
    assert 'headrace_node_queue_wait_seconds_bucket{kind="task",le="+Inf"} 4.0' in text
    assert 'headrace_node_queue_wait_seconds_count{kind="task"} 4.0' in text
    assert 'headrace_node_queue_wait_seconds_sum{kind="task"} 400.0035' in text
    assert 'headrace_node_attempts_total{kind="http",outcome="failed"} 2.0' in text
    assert 'headrace_runs_finished_total{status="completed"} 1.0' in text
    assert "# TYPE headrace_node_duration_seconds histogram" in text
