"""The cluster survives its infrastructure restarting under it: a throwaway Redis (with an
append-only file) and a throwaway Postgres are killed and started again while runs flow;
every process reconnects and every run completes once and replays to its stored state."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from headrace.testing.cluster import ProcessCluster, check_runs, run_status, wait_all
from headrace.testing.services import postgres_database, redis_prefix
from headrace.testing.throwaway import ThrowawayPostgres, ThrowawayRedis

SPEC = """
name: restarts
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


@contextmanager
def running(tmp: Path, db_url: str, redis_url: str, prefix: str) -> Iterator[ProcessCluster]:
    c = ProcessCluster(tmp, db_url, redis_url, prefix)
    try:
        c.up()
        yield c
    finally:
        c.down()


def submit(client: httpx.Client, first: int, n: int) -> list[str]:
    ids = []
    for i in range(first, first + n):
        r = client.post("/v1/runs", json={"workflow_tag": "restarts", "inputs": {"i": i}})
        assert r.status_code in (200, 201, 202), r.text
        ids.append(r.json()["run_id"])
    return ids


def wait_some_progress(client: httpx.Client, run_ids: list[str]) -> None:
    """Until the first run's node `a` completed: its fan-out is in flight, the rest queued."""
    deadline = time.monotonic() + 30
    while True:
        try:
            r = client.get(f"/v1/runs/{run_ids[0]}/nodes/a")
            if r.status_code == 200 and r.json().get("status") == "completed":
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "no run made progress"
        time.sleep(0.05)


def assert_in_flight(client: httpx.Client, run_ids: list[str]) -> None:
    """The restart is about to hit live traffic: some run has not ended yet."""
    ended = [r for r in run_ids if run_status(client, r) in ("completed", "failed", "cancelled")]
    assert len(ended) < len(run_ids), "every run ended before the restart"


# --- a throwaway Redis ---------------------------------------------------------------------


def test_redis_restarts_while_runs_flow(tmp_path: Path) -> None:
    t0 = time.monotonic()
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        with (
            postgres_database() as db_url,
            running(tmp_path, db_url, server.url, "headrace-restart:") as cluster,
            httpx.Client(base_url=cluster.url, timeout=10) as client,
        ):
            assert client.post("/v1/workflows", content=SPEC).status_code == 201
            run_ids = submit(client, 0, 10)
            wait_some_progress(client, run_ids)
            assert_in_flight(client, run_ids)
            server.stop(signal.SIGTERM)  # graceful: rewrites nothing, AOF fsynced always
            time.sleep(1)
            server.start()
            run_ids += submit(client, 10, 5)
            time.sleep(1.5)
            server.stop(signal.SIGKILL)  # abrupt: what was fsynced is what comes back
            time.sleep(1)
            server.start()
            run_ids += submit(client, 15, 5)
            wait_all(client, run_ids, cluster)
            cluster.assert_alive()  # they reconnected rather than died
            asyncio.run(check_runs(db_url, run_ids, {"count": 4}))
    finally:
        server.stop(signal.SIGKILL)
    print(f"redis restart test: {time.monotonic() - t0:.1f}s")


# --- a throwaway Postgres ------------------------------------------------------------------


def test_postgres_restarts_while_runs_flow(tmp_path: Path) -> None:
    t0 = time.monotonic()
    server = ThrowawayPostgres()
    try:
        server.init()
        server.start()
        with (
            redis_prefix() as (redis_url, prefix),
            running(tmp_path, server.url, redis_url, prefix) as cluster,
            httpx.Client(base_url=cluster.url, timeout=10) as client,
        ):
            assert client.post("/v1/workflows", content=SPEC).status_code == 201
            run_ids = submit(client, 0, 10)
            wait_some_progress(client, run_ids)
            assert_in_flight(client, run_ids)
            server.stop()  # immediate: no checkpoint, the WAL replays at start
            time.sleep(1)
            server.start()
            run_ids += submit(client, 10, 5)
            time.sleep(1.5)
            server.stop()
            time.sleep(1)
            server.start()
            run_ids += submit(client, 15, 5)
            wait_all(client, run_ids, cluster)
            cluster.assert_alive()
            asyncio.run(check_runs(server.url, run_ids, {"count": 4}))
    finally:
        server.remove()
    print(f"postgres restart test: {time.monotonic() - t0:.1f}s")


def test_runs_are_accepted_while_redis_hangs(tmp_path: Path) -> None:
    """Redis stopped (SIGSTOP: connections open, nothing answers) while runs are started: the
    API answers once a run is committed, not when the publish gives up (the bus's socket
    timeout is 10 s, above this client's 5 s ceiling); once Redis goes on, every run
    completes."""
    r = ThrowawayRedis(tmp_path)
    r.start()
    try:
        with postgres_database() as db, running(tmp_path, db, r.url, "hang:") as cluster:
            with httpx.Client(base_url=cluster.url, timeout=5) as client:
                assert client.post("/v1/workflows", content=SPEC).status_code == 201
                run_ids = submit(client, 0, 1)
                wait_all(client, run_ids, cluster, timeout_s=60)  # the bus works
                assert r.proc is not None
                r.proc.send_signal(signal.SIGSTOP)
                try:
                    run_ids += submit(client, 1, 3)
                finally:
                    r.proc.send_signal(signal.SIGCONT)
                wait_all(client, run_ids, cluster, timeout_s=90)
            cluster.assert_alive()
            asyncio.run(check_runs(db, run_ids, {"count": 4}))
    finally:
        r.stop(signal.SIGTERM)
