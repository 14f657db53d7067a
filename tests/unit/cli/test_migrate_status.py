"""`headrace migrate status`: what an operator reads first."""

from __future__ import annotations

import pytest

from headrace.cli.client import print_status

STATUS = {
    "step": "dual-write",
    "what": "Redis primary, a copy of every message to Kafka",
    "next": "kafka-10",
    "flags": {"ENABLE_KAFKA_WRITE": True},
    "baseline": {"p95_ms": 20.0, "samples": 812, "at_ms": 1796600000000, "step": "kafka-10"},
    "window_s": 120.0,
    "last_rollback": {
        "from": "kafka-50",
        "to": "dual-write",
        "why": "monitor: kafka_error_rate=0.6 (limit <= 0.05)",
        "at_ms": 1796600100000,
    },
    "pins": {"kafka": 3},
    "checks": [
        {
            "name": "kafka_error_rate",
            "value": 0.0,
            "limit": "<= 0.05",
            "ok": True,
            "trigger": True,
            "detail": "0 of 900 writes to Kafka failed in the last 120 s",
        }
    ],
}


def test_the_monitors_last_rollback_comes_first_and_each_check_says_what_it_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_status(STATUS)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "last monitor rollback: 2026-12-06 23:35:00 UTC, kafka-50 -> dual-write: "
        "monitor: kafka_error_rate=0.6 (limit <= 0.05)"
    )
    assert "Redis p95 baseline: 20 ms (812 messages, 23:33:20 UTC, kafka-10)" in lines[3]
    assert lines[4] == "checks over the last 120 s:"
    assert lines[5] == (
        "  [pass] kafka_error_rate = 0 (want <= 0.05): "
        "0 of 900 writes to Kafka failed in the last 120 s"
    )
