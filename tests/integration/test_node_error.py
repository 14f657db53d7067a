"""A user's own task module raising `NodeError` as the README shows, through `headrace run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

HEADRACE = Path(sys.executable).parent / "headrace"

BILLING = """
from headrace.errors import NodeError

def charge(customer: int) -> None:
    raise NodeError(f"customer {customer} does not exist", retryable=False)

def declined(customer: int) -> None:
    raise NodeError(f"card of customer {customer} declined", type="card_declined")
"""

SPEC = """
name: billing
nodes:
  charge:
    task: billing.{task}
    with: {{customer: 42}}
    retry: {{max_attempts: 3, initial_interval: 10ms, max_interval: 10ms}}
"""


def run(tmp_path: Path, task: str) -> dict[str, Any]:
    """`headrace run` of a one-node workflow calling `billing.<task>`; its --json summary."""
    (tmp_path / "billing.py").write_text(BILLING)
    (tmp_path / f"{task}.yaml").write_text(SPEC.format(task=task))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env.update(PYTHONPATH=str(tmp_path), HEADRACE_DATABASE_URL=f"sqlite:///{tmp_path}/{task}.db")
    done = subprocess.run(
        [str(HEADRACE), "run", f"{task}.yaml", "--tasks", "billing", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done  # the run failed
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_a_node_error_with_retryable_false_fails_the_node_after_one_attempt(
    tmp_path: Path,
) -> None:
    node = run(tmp_path, "charge")["nodes"]["charge"]
    assert node == {
        "status": "failed",
        "attempts": 1,
        "error": {
            "type": "task_error",
            "message": "customer 42 does not exist",
            "retryable": False,
        },
    }


def test_a_node_error_is_retryable_by_default_and_carries_its_type(tmp_path: Path) -> None:
    node = run(tmp_path, "declined")["nodes"]["charge"]
    assert node == {
        "status": "failed",
        "attempts": 3,
        "error": {
            "type": "card_declined",
            "message": "card of customer 42 declined",
            "retryable": True,
        },
    }
