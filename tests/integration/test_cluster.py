"""The Phase 1 cluster as separate processes on real Postgres and Redis: api, coordinators,
workers and a relay; workers and coordinators SIGKILLed while runs flow; nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from headrace.testing.cluster import ProcessCluster, check_runs, wait_all
from headrace.testing.servers import free_port
from headrace.testing.services import postgres_database, redis_prefix

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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        c = ProcessCluster(tmp_path, db_url, redis_url, prefix)
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


def held_jobs(cluster: ProcessCluster, consumer: str) -> int:
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


def test_sigkill_a_worker_and_a_coordinator_while_runs_flow(cluster: ProcessCluster) -> None:
    # coordinator-1 SIGKILLs itself between a commit and its publish, mid-stream
    cluster.up(env={"coordinator-1": {"HEADRACE_CRASH_AT": "after_commit:25"}})
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        run_ids = start_runs(client, 20)
        deadline = time.monotonic() + 30
        while held_jobs(cluster, "worker-worker-1") == 0:  # kill it while it holds jobs
            assert time.monotonic() < deadline, "worker-1 never held a job"
            time.sleep(0.02)
        cluster.kill("worker-1")
        run_ids += start_runs(client, 10)
        deadline = time.monotonic() + 60
        while cluster.procs["coordinator-1"].poll() is None:  # until its crash point fires
            assert time.monotonic() < deadline, "coordinator-1 never reached its crash point"
            run_ids += start_runs(client, 5)  # under load, batches are larger: fewer commits
            time.sleep(0.2)
        wait_all(client, run_ids, cluster)
    assert cluster.procs["coordinator-1"].wait(10) == -signal.SIGKILL  # its crash point fired
    assert held_jobs(cluster, "worker-worker-1") == 0  # its jobs were redelivered and done
    asyncio.run(check_runs(cluster.env["HEADRACE_DATABASE_URL"], run_ids, {"count": 4}))


@pytest.mark.parametrize("crash_at", ["after_handoff:15", "after_commit:15"])
def test_serve_all_sigkilled_between_a_local_result_and_its_acknowledgement(
    cluster: ProcessCluster, crash_at: str
) -> None:
    # Two `serve all` processes: each applies its own workers' results without the bus (and
    # takes every job from the bus: local jobs are the next test's). One dies holding
    # results it took (not committed), or committed ones whose jobs it had not acknowledged
    # yet: the jobs are redelivered to the other, and each run completes once.
    bus_jobs = {"HEADRACE_LOCAL_JOBS": "false"}
    cluster.start(
        "all-1", "all", "--port", str(free_port()), HEADRACE_CRASH_AT=crash_at, **bus_jobs
    )
    cluster.start("all-2", "all", "--port", str(cluster.port), **bus_jobs)  # the test's API
    cluster.wait_healthy()
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        run_ids: list[str] = []
        deadline = time.monotonic() + 60
        while cluster.procs["all-1"].poll() is None:  # runs flow until the crash point fires
            assert time.monotonic() < deadline, "all-1 never reached its crash point"
            run_ids += start_runs(client, 2)
            time.sleep(0.05)
        assert cluster.procs["all-1"].returncode == -signal.SIGKILL
        assert held_jobs(cluster, "worker-all-1") > 0  # it died holding unacknowledged jobs
        run_ids += start_runs(client, 5)
        wait_all(client, run_ids, cluster)
    assert held_jobs(cluster, "worker-all-1") == 0  # redelivered and done
    asyncio.run(check_runs(cluster.env["HEADRACE_DATABASE_URL"], run_ids, {"count": 4}))


def two_serve_all(cluster: ProcessCluster, **env_1: str) -> str:
    """`serve all` as all-1 (with `env_1`; the URL of its API is returned) and as all-2
    (the cluster's API), both answering."""
    api_1 = f"http://127.0.0.1:{free_port()}"
    cluster.start("all-1", "all", "--port", api_1.rpartition(":")[2], **env_1)
    cluster.start("all-2", "all", "--port", str(cluster.port))
    cluster.wait_healthy()
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{api_1}/healthz", timeout=1).status_code == 200:
                return api_1
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)


async def held_rows(db_url: str) -> set[int]:
    """Ids of the job rows of the outbox that a process holds (it runs the jobs itself)."""
    conn = await asyncpg.connect(db_url)
    try:
        found = await conn.fetch(
            "SELECT id FROM outbox WHERE holder IS NOT NULL AND node_id IS NOT NULL"
        )
        return {r[0] for r in found}
    finally:
        await conn.close()


@pytest.mark.parametrize("crash_at", [None, "after_commit:20", "after_execute:12"])
def test_serve_all_sigkilled_while_it_runs_its_own_jobs(
    cluster: ProcessCluster, crash_at: str | None
) -> None:
    # all-1 starts the runs, so it runs their jobs itself (no bus) and holds their outbox
    # rows. It dies (SIGKILLed from outside, or at a crash point: between a commit and the
    # start of its local jobs, or after a job ran and before its result was handed over):
    # once its lease lapses, the relay of all-2 sends the jobs to the bus, and every run
    # completes once.
    db_url = cluster.env["HEADRACE_DATABASE_URL"]
    api_1 = two_serve_all(cluster, **({"HEADRACE_CRASH_AT": crash_at} if crash_at else {}))
    run_ids: list[str] = []
    with httpx.Client(base_url=api_1, timeout=10) as client:
        deadline = time.monotonic() + 60
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        while cluster.procs["all-1"].poll() is None:
            assert time.monotonic() < deadline, "all-1 never died"
            with contextlib.suppress(httpx.HTTPError):  # it may die while answering
                run_ids += start_runs(client, 2)
            if crash_at is None and asyncio.run(held_rows(db_url)):
                cluster.kill("all-1")  # while it holds local jobs
            time.sleep(0.05)
    assert cluster.procs["all-1"].returncode == -signal.SIGKILL
    held = asyncio.run(held_rows(db_url))
    assert held, "all-1 died holding no local job"
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        run_ids += start_runs(client, 5)
        wait_all(client, run_ids, cluster)
    assert not held & asyncio.run(held_rows(db_url))  # sent by all-2's relay
    assert "relay republished" in cluster.log("all-2")
    asyncio.run(check_runs(db_url, run_ids, {"count": 4}))


def test_serve_all_stopped_gracefully_hands_its_local_jobs_back(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    # all-1 runs long local jobs when it gets SIGTERM: after its grace it stops them and
    # releases their outbox rows, so all-2's relay sends them on at once, not after the lease
    # (60 s here, longer than the test may take).
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = f"""
name: long
inputs: {{name: {{type: string}}}}
nodes:
  a: {{task: headrace.testing.tasks.marked_sleep,
      with: {{marks: "{marks}", name: "${{{{ inputs.name }}}}", seconds: 2}}}}
"""
    graceful = {"HEADRACE_SHUTDOWN_GRACE_S": "0.2", "HEADRACE_LEASE_S": "60"}
    api_1 = two_serve_all(cluster, **graceful)
    db_url = cluster.env["HEADRACE_DATABASE_URL"]
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=api_1, timeout=10) as client:
        assert client.post("/v1/workflows", content=spec).status_code == 201
        run_ids = [
            client.post(
                "/v1/runs", json={"workflow_tag": "long", "inputs": {"name": f"r{i}"}}
            ).json()["run_id"]
            for i in range(3)
        ]
    while len(list(marks.iterdir())) < 3:  # all three run in all-1
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    assert len(asyncio.run(held_rows(db_url))) == 3
    cluster.procs["all-1"].send_signal(signal.SIGTERM)
    assert cluster.procs["all-1"].wait(20) in (0, -signal.SIGTERM)
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        wait_all(client, run_ids, cluster, timeout_s=30)
    for i in range(3):  # begun in all-1, run again in all-2
        assert len(list(marks.glob(f"r{i}.*"))) == 2, sorted(p.name for p in marks.iterdir())
    asyncio.run(check_runs(db_url, run_ids, {}))
