"""Sync (plain function) tasks through `headrace run`: real processes, each on its own SQLite file.

A sync task runs on a daemon thread; one hung past its timeout is abandoned, and must not keep
the process alive once the run has ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HEADRACE = Path(sys.executable).parent / "headrace"
T = "headrace.testing.tasks"

HUNG_S = 60  # how long the hung task would block its thread
CEILING_S = 20.0  # generous for a loaded machine, far below HUNG_S

HUNG = f"""
name: hung-sync
nodes:
  stuck:
    task: {T}.block
    with: {{seconds: {HUNG_S}}}
    timeout: 300ms
    retry: {{max_attempts: 1}}
"""

ORDINARY = f"""
name: sync-tasks
inputs:
  xs: {{type: array}}
nodes:
  sum: {{task: {T}.add, with: {{a: 2, b: 3}}}}
  echo: {{task: {T}.echo, with: {{total: "${{{{ nodes.sum.output.sum }}}}"}}}}
  flaky:
    task: {T}.fail_times
    with: {{key: flaky, times: 1}}
    retry: {{max_attempts: 2, initial_interval: 10ms}}
  each:
    map: "${{{{ inputs.xs }}}}"
    as: x
    max_concurrency: 10
    task: {T}.echo
    with: {{x: "${{{{ x }}}}"}}
outputs:
  total: "${{{{ nodes.echo.output.total }}}}"
  each: "${{{{ nodes.each.output }}}}"
"""


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bytecode shared by this module's commands (PYTHONDONTWRITEBYTECODE may be set)."""
    return tmp_path_factory.mktemp("pycache")


def headrace_run(tmp: Path, pycache: Path, spec: str, *extra: str) -> tuple[int, Any]:
    """`headrace run SPEC --json` in a fresh process; fails the test past CEILING_S."""
    path = tmp / "spec.yaml"
    path.write_text(spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEADRACE_", "PYTHONPATH"))}
    env |= {"PYTHONPYCACHEPREFIX": str(pycache), "HEADRACE_DATABASE_URL": f"sqlite:///{tmp}/h.db"}
    args = [str(HEADRACE), "run", str(path), "--tasks", T, "--json", *extra]
    try:
        r = subprocess.run(
            args, env=env, cwd=REPO, capture_output=True, text=True, timeout=CEILING_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"headrace run was still alive after {CEILING_S} s")
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_a_hung_sync_task_does_not_keep_headrace_run_alive(tmp_path: Path, pycache: Path) -> None:
    # The thread cannot be interrupted: it is abandoned, still sleeping, when the run fails,
    # and the process must exit then (headrace_run fails the test past CEILING_S).
    code, summary = headrace_run(tmp_path, pycache, HUNG)
    assert code == 1, summary
    assert summary["status"] == "failed"
    stuck = summary["nodes"]["stuck"]
    assert stuck["status"] == "failed" and stuck["attempts"] == 1, stuck
    assert stuck["error"]["type"] == "timeout", stuck


def test_ordinary_sync_tasks_return_raise_and_run_side_by_side(
    tmp_path: Path, pycache: Path
) -> None:
    (tmp_path / "inputs.json").write_text(json.dumps({"xs": list(range(12))}))
    code, summary = headrace_run(
        tmp_path, pycache, ORDINARY, "--input-file", str(tmp_path / "inputs.json")
    )
    assert code == 0, summary
    assert summary["outputs"] == {"total": 5, "each": [{"x": x} for x in range(12)]}
    nodes = summary["nodes"]
    assert nodes["sum"] == {"status": "completed", "attempts": 1, "output": {"sum": 5}}
    # a sync task that raised was retried like any failure
    flaky = nodes["flaky"]
    assert flaky == {"status": "completed", "attempts": 2, "output": {"key": "flaky", "calls": 2}}
