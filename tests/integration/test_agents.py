"""Agent nodes in real headrace processes (which run on uvloop): an agent that ignores its
stdin ends as its exit says, every time; an agent and its grandchildren die with their worker
when it is SIGKILLed, so a redelivered job never runs beside its orphan."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.testing.cluster import ProcessCluster, wait_all
from headrace.testing.servers import free_port
from headrace.testing.services import postgres_database, redis_prefix

pytestmark = pytest.mark.integration

HEADRACE = str(Path(sys.executable).parent / "headrace")
TERMINAL = ("completed", "failed", "cancelled")

# argv: a directory. Starts a grandchild (`sleep 60`, in the agent's process group), writes
# "<own pid> <grandchild pid>" to DIR/<run id>.<pid> (atomically), and counts the agents that
# ran this run before it and are still alive. The first agent of a run hangs; a later one
# (the job redelivered) answers that count.
AGENT = """
import json, os, subprocess, sys, time
from pathlib import Path

def alive(pid):
    try:
        return "State:\\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False

here = Path(sys.argv[1])
run = os.environ["HEADRACE_RUN_ID"]
before = [int(p.read_text().split()[0]) for p in here.glob(run + ".*")]
grandchild = subprocess.Popen(["sleep", "60"])
tmp = here / f"{run}.{os.getpid()}.tmp"
tmp.write_text(f"{os.getpid()} {grandchild.pid}")
tmp.rename(here / f"{run}.{os.getpid()}")
if not before:
    time.sleep(60)
print(json.dumps({"orphans_alive": sum(alive(p) for p in before)}))
"""


def agent_spec(pids: Path) -> str:
    node = {"agent": {"command": ["python", "-c", AGENT, str(pids)]}, "timeout": "2m"}
    return json.dumps({"name": "orphan", "nodes": {"a": node}})


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def pids_of(pids: Path) -> list[int]:
    """Every pid the agents wrote (agents and their grandchildren)."""
    return [
        int(p)
        for f in sorted(pids.glob("*.*"))
        if "tmp" not in f.name
        for p in f.read_text().split()
    ]


def wait_for_agents(pids: Path, n: int, logs: Any) -> list[int]:
    deadline = time.monotonic() + 60
    while len(found := pids_of(pids)) < 2 * n:
        assert time.monotonic() < deadline, f"{len(found) // 2} of {n} agents started\n{logs()}"
        time.sleep(0.05)
    return found


def assert_all_die(found: list[int], within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while any(alive(p) for p in found):
        left = [p for p in found if alive(p)]
        assert time.monotonic() < deadline, f"still alive {within_s}s after the worker: {left}"
        time.sleep(0.05)


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """Where the agents write their pids; whatever is left of them is killed afterwards."""
    where = tmp_path / "pids"
    where.mkdir()
    try:
        yield where
    finally:
        for pid in pids_of(where):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Dev:
    """`headrace dev` on its own SQLite file and port."""

    def __init__(self, tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "dev.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
        env["HEADRACE_DATABASE_URL"] = f"sqlite:///{tmp}/dev.db"
        port = self.url.rsplit(":", 1)[1]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [HEADRACE, "dev", "--port", port], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not self.healthy():
            assert time.monotonic() < deadline, f"headrace dev did not start: {self.logs()}"
            time.sleep(0.05)

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def start_runs(client: httpx.Client, tag: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = client.post("/v1/runs", json={"workflow_tag": tag})
        assert r.status_code == 201, r.text
        ids.append(r.json()["run_id"])
    return ids


def ended(client: httpx.Client, run_ids: list[str], logs: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    runs = []
    for run_id in run_ids:
        while (run := client.get(f"/v1/runs/{run_id}").json())["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"run {run_id} did not end\n{logs()}"
            time.sleep(0.05)
        runs.append(run)
    return runs


def test_agents_that_ignore_their_stdin_end_as_their_exit_says_every_time(dev: Dev) -> None:
    once = {"max_attempts": 1}
    # Never read, and more than a pipe buffer (64 KiB); a workflow body may hold 1 MiB.
    big = {"blob": "x" * 300_000}
    fails = ["sh", "-c", "echo about to fail >&2; exit 1"]
    cases = {
        "quiet": {"agent": {"command": ["true"]}, "retry": once},
        "fails": {"agent": {"command": fails}, "retry": once},
        "fails-big": {"agent": {"command": fails}, "with": big, "retry": once},
        "quiet-big": {"agent": {"command": ["true"]}, "with": big, "retry": once},
    }
    expected_error = {
        "type": "exit_code",
        "message": "agent exited with code 1; stderr: about to fail",
        "retryable": True,
    }
    with httpx.Client(base_url=dev.url, timeout=30) as client:
        started: dict[str, list[str]] = {}
        for name, node in cases.items():
            spec = json.dumps({"name": name, "nodes": {"a": node}})
            assert client.post("/v1/workflows", content=spec).status_code == 201
            started[name] = start_runs(client, name, 50)
        for name, run_ids in started.items():
            for run in ended(client, run_ids, dev.logs):
                node = run["nodes"]["a"]
                if name.startswith("quiet"):
                    assert node == {"status": "completed", "attempts": 1, "output": None}, run
                else:
                    assert node == {"status": "failed", "attempts": 1, "error": expected_error}


def test_agents_and_their_grandchildren_die_with_a_sigkilled_dev(dev: Dev, pids: Path) -> None:
    with httpx.Client(base_url=dev.url, timeout=30) as client:
        assert client.post("/v1/workflows", content=agent_spec(pids)).status_code == 201
        start_runs(client, "orphan", 5)
    found = wait_for_agents(pids, 5, dev.logs)
    assert all(alive(p) for p in found)
    dev.proc.send_signal(signal.SIGKILL)
    assert dev.proc.wait(10) == -signal.SIGKILL
    assert_all_die(found)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    roles = {"api": "api", "coordinator-1": "coordinator", "relay": "relay"}
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        c = ProcessCluster(tmp_path, db_url, redis_url, prefix, roles=roles)
        try:
            yield c
        finally:
            c.down()


def test_a_redelivered_job_never_runs_beside_its_orphan(
    cluster: ProcessCluster, pids: Path
) -> None:
    cluster.up()
    cluster.start("worker-1", "worker")
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        assert client.post("/v1/workflows", content=agent_spec(pids)).status_code == 201
        run_ids = start_runs(client, "orphan", 5)
        first = wait_for_agents(pids, 5, cluster.logs)
        cluster.kill("worker-1")
        assert_all_die(first)
        cluster.start("worker-2", "worker")  # the jobs come back to it after their lease
        wait_all(client, run_ids, cluster)
        for run_id in run_ids:
            run = client.get(f"/v1/runs/{run_id}").json()
            assert run["nodes"]["a"]["status"] == "completed", run
            assert run["nodes"]["a"]["output"] == {"orphans_alive": 0}, run
    assert len(pids_of(pids)) == 2 * 2 * 5  # each job ran twice: killed, then redelivered
