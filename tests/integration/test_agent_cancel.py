"""Cancelling a run stops its running agent: the whole process group, grandchildren too."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

AGENT = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while being read
        return False
    return "State:\tZ" not in state  # a zombie has stopped running


async def test_cancel_kills_the_agent_and_its_grandchild(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    spec = {
        "name": "long-agent",
        "nodes": {
            "a": {"agent": {"command": ["python", "-c", AGENT, str(pids_file)]}, "timeout": "2m"}
        },
    }
    assert (await api.post("/v1/workflows", content=json.dumps(spec))).status_code == 201
    run_id = (await api.post("/v1/runs", json={"workflow_tag": "long-agent"})).json()["run_id"]
    for _ in range(200):
        if pids_file.exists() and pids_file.read_text():
            break
        await asyncio.sleep(0.05)
    agent_pid, grandchild_pid = map(int, pids_file.read_text().split())
    assert alive(agent_pid) and alive(grandchild_pid)
    r = await api.post(f"/v1/runs/{run_id}/cancel")
    assert r.json()["status"] == "cancelled"
    for _ in range(200):
        if not alive(agent_pid) and not alive(grandchild_pid):
            break
        await asyncio.sleep(0.05)
    assert not alive(agent_pid) and not alive(grandchild_pid)
