"""`headrace run` takes no inputs the API would refuse: one limit, HEADRACE_MAX_BODY_BYTES."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HEADRACE = Path(sys.executable).parent / "headrace"
ECHO = """
name: echo
version: 1
inputs:
  blob: {type: string}
nodes:
  a: {task: headrace.testing.tasks.echo, with: {n: "${{ inputs.blob }}"}}
"""


def run(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    clean |= {"HEADRACE_DATABASE_URL": f"sqlite:///{tmp}/h.db", **env}
    command = [str(HEADRACE), "run", "echo.yaml", "--tasks", "headrace.testing.tasks", *args]
    return subprocess.run(
        command, cwd=tmp, env=clean, capture_output=True, text=True, timeout=120, check=False
    )


def test_run_refuses_inputs_over_the_api_body_limit(tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_text(ECHO)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"blob": "x" * 5_000_000}))  # the API refuses this body: 413

    r = run(tmp_path, "--input-file", "big.json")
    assert r.returncode == 2, r
    assert r.stdout == "" and "Traceback" not in r.stderr, r
    message = " ".join(r.stderr.split())
    assert "--input-file: big.json (5000012 bytes) is over the limit of 1048576 bytes" in message
    assert "(HEADRACE_MAX_BODY_BYTES)" in message
    assert not (tmp_path / "h.db").exists()  # refused before anything was stored

    # -i values count too, against the configured limit.
    r = run(tmp_path, "-i", "blob=" + "y" * 5000, HEADRACE_MAX_BODY_BYTES="4096")
    assert r.returncode == 2, r
    message = " ".join(r.stderr.split())
    assert "inputs: the inputs object (5011 bytes as JSON) is over the limit of 4096" in message
    assert "HEADRACE_MAX_BODY_BYTES" in message and not (tmp_path / "h.db").exists()

    r = run(tmp_path, "-i", "blob=" + "y" * 4000, "--json", HEADRACE_MAX_BODY_BYTES="4096")
    assert r.returncode == 0, r
    assert json.loads(r.stdout)["status"] == "completed"
