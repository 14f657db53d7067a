"""The Phase 1 cluster as separate processes on real Postgres and Redis: api, coordinators,
workers and a relay; workers and coordinators SIGKILLed while runs flow; nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from headrace.store.postgres import PostgresStore
from headrace.testing.replay import replay_diff
from headrace.testing.servers import free_port
from headrace.testing.services import postgres_database, redis_prefix

HEADRACE = str(Path(sys.executable).parent / "headrace")
SPEC = """
name: steady
inputs: {i: {type: integer}}
defaults: {retry: {max_attempts: 5, initial_interval: 10ms, max_interval: 100ms}}
nodes:
  a: {task: headrace.testing.tasks.sleep, with: {seconds: 0.3}}
  fan:
    needs: [a]
    map: "${{ [1, 2, 3, 4] }}"
    task: headrace.testing.tasks.sleep
    with: {seconds: 0.2, n: "${{ item + inputs.i }}"}
  total: {needs: [fan], task: headrace.testing.tasks.echo, with: {xs: "${{ nodes.fan.output }}"}}
outputs:
  count: "${{ len(nodes.total.output.xs) }}"
"""


class Cluster:
    def __init__(self, tmp: Path, db_url: str, redis_url: str, prefix: str) -> None:
        self.tmp = tmp
        self.env = {
            **os.environ,
            "HEADRACE_DATABASE_URL": db_url,
            "HEADRACE_BUS": redis_url,
            "HEADRACE_BUS_PREFIX": prefix,
            "HEADRACE_TASKS": "headrace.testing.tasks",
            "HEADRACE_LEASE_S": "2",
            "HEADRACE_HEARTBEAT_S": "0.5",
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, **env_extra: str) -> subprocess.Popen[bytes]:
        env = {**self.env, "HEADRACE_PROCESS_NAME": name, **env_extra}
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [HEADRACE, "serve", *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def up(self) -> None:
        self.start("api", "api", "--port", str(self.port))
        # coordinator-1 SIGKILLs itself between a commit and its publish, mid-stream
        self.start("coordinator-1", "coordinator", HEADRACE_CRASH_AT="after_commit:25")
        self.start("coordinator-2", "coordinator")
        for name in ("worker-1", "worker-2"):
            self.start(name, "worker")
        self.start("relay", "relay")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"the API did not start: {self.logs()}")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in self.tmp.glob("*.log"))

    def down(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        c = Cluster(tmp_path, db_url, redis_url, prefix)
        try:
            yield c
        finally:
            c.down()


def start_runs(client: httpx.Client, n: int) -> list[str]:
    return [
        client.post("/v1/runs", json={"workflow_tag": "steady", "inputs": {"i": i}}).json()[
            "run_id"
        ]
        for i in range(n)
    ]


def wait_all(client: httpx.Client, run_ids: list[str], cluster: Cluster) -> None:
    deadline = time.monotonic() + 60
    for run_id in run_ids:
        while client.get(f"/v1/runs/{run_id}").json()["status"] not in (
            "completed",
            "failed",
            "cancelled",
        ):
            assert time.monotonic() < deadline, f"run {run_id} did not end\n{cluster.logs()}"
            time.sleep(0.1)


async def check(db_url: str, run_ids: list[str]) -> None:
    store = PostgresStore(db_url)
    await store.open()
    try:
        for run_id in run_ids:
            record, _ = await store.get_run(run_id)
            assert record.status == "completed", (run_id, record.error)
            assert record.outputs == {"count": 4}
            assert await replay_diff(store, run_id) == {}
    finally:
        await store.close()


def held_jobs(cluster: Cluster, consumer: str) -> int:
    """Jobs delivered to `consumer` and not acknowledged."""
    client = redis.Redis.from_url(cluster.env["HEADRACE_BUS"])
    try:
        prefix = cluster.env["HEADRACE_BUS_PREFIX"]
        total = 0
        for lane in ("high", "normal", "low"):
            stream = f"{prefix}node.jobs.{lane}"
            if client.exists(stream):
                total += len(client.xpending_range(stream, "workers", "-", "+", 1000, consumer))
        return total
    finally:
        client.close()


def test_sigkill_a_worker_and_a_coordinator_while_runs_flow(cluster: Cluster) -> None:
    cluster.up()
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        run_ids = start_runs(client, 20)
        deadline = time.monotonic() + 30
        while held_jobs(cluster, "worker-worker-1") == 0:  # kill it while it holds jobs
            assert time.monotonic() < deadline, "worker-1 never held a job"
            time.sleep(0.02)
        cluster.kill("worker-1")
        run_ids += start_runs(client, 10)
        wait_all(client, run_ids, cluster)
    assert cluster.procs["coordinator-1"].wait(10) == -signal.SIGKILL  # its crash point fired
    assert held_jobs(cluster, "worker-worker-1") == 0  # its jobs were redelivered and done
    asyncio.run(check(cluster.env["HEADRACE_DATABASE_URL"], run_ids))
