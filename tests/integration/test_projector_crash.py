"""Projectors as processes on Postgres + Redis: two share the stream; one is SIGKILLed inside
its transaction and the other just after its commit, before the acknowledgement; messages are
deleted from the stream while they are down. When they are back, every run's read rows are
the fold of its event log: nothing counted twice, nothing missing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from headrace.bus.topics import EVENTS
from headrace.events import decode_event
from headrace.projections.fold import RunRow, fold
from headrace.store.postgres import PostgresStore
from headrace.testing.cluster import ProcessCluster, wait_all
from headrace.testing.services import postgres_database, redis_prefix

pytestmark = pytest.mark.integration

SPEC = """
name: fan
inputs: {xs: {type: array}}
nodes:
  a: {task: headrace.testing.tasks.echo, with: {x: 1}}
  m:
    needs: [a]
    map: "${{ inputs.xs }}"
    task: headrace.testing.tasks.add
    with: {a: "${{ item }}", b: 1}
  z: {needs: [m], task: headrace.testing.tasks.echo, with: {xs: "${{ nodes.m.output }}"}}
"""
ROLES = {"api": "api", "coordinator": "coordinator", "worker": "worker", "relay": "relay"}
PROJECTORS = ("projector-1", "projector-2")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with postgres_database() as db, redis_prefix() as (redis_url, prefix):
        c = ProcessCluster(tmp_path, db, redis_url, prefix, ROLES, ENABLE_PROJECTIONS="true")
        try:
            yield c
        finally:
            c.down()


def start_runs(client: httpx.Client, n: int) -> list[str]:
    return [
        client.post(
            "/v1/runs", json={"workflow_tag": "fan", "inputs": {"xs": [1] * (i % 5)}}
        ).json()["run_id"]
        for i in range(n)
    ]


async def differences(db: str, run_ids: list[str]) -> list[str]:
    """The runs whose read rows are not the fold of their event log."""
    store = PostgresStore(db)
    await store.open()
    try:
        wrong = []
        for run_id in run_ids:
            log = [decode_event(e.data) for e in await store.read_events(run_id, 0, 10_000)]
            run, nodes = RunRow(run_id=run_id), {}
            fold(run, nodes, log)
            if await store.read_rows(run_id) != (run, [nodes[n] for n in sorted(nodes)]):
                wrong.append(run_id)
        return wrong
    finally:
        await store.close()


def settle(cluster: ProcessCluster, run_ids: list[str], within_s: float = 60) -> None:
    db = cluster.env["HEADRACE_DATABASE_URL"]
    deadline = time.monotonic() + within_s
    while wrong := asyncio.run(differences(db, run_ids)):
        assert time.monotonic() < deadline, f"{len(wrong)} runs not projected\n{cluster.logs()}"
        time.sleep(0.2)


def test_projectors_killed_mid_batch_and_messages_lost_leave_the_read_models_exact(
    cluster: ProcessCluster,
) -> None:
    cluster.up()
    crash = {"projector-1": "projector_in_commit:3", "projector-2": "projector_after_commit:3"}
    for name in PROJECTORS:
        cluster.start(name, "projector", HEADRACE_CRASH_AT=crash[name])
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code in (200, 201)
        ids = start_runs(client, 40)
        wait_all(client, ids, cluster)
        deadline = time.monotonic() + 60
        while any(cluster.procs[n].poll() is None for n in PROJECTORS):
            assert time.monotonic() < deadline, f"a projector did not crash\n{cluster.logs()}"
            if len(ids) < 400:  # more batches until both reached their crash point
                ids += start_runs(client, 5)
            time.sleep(0.1)
        assert [cluster.procs[n].returncode for n in PROJECTORS] == [-signal.SIGKILL] * 2
        for name in PROJECTORS:
            cluster.start(name, "projector")
        wait_all(client, ids, cluster)
        settle(cluster, ids)

        for name in PROJECTORS:  # down; runs go on, and some of their messages are lost
            cluster.procs[name].send_signal(signal.SIGTERM)
            cluster.procs[name].wait(20)
        more = start_runs(client, 10)
        wait_all(client, more, cluster)
        r, key = cluster.redis(), cluster.key(EVENTS)
        entries = r.xrange(key, count=10_000)[-30:]
        assert r.xdel(key, *[e[0] for e in entries[::7]]) == len(entries[::7])
        for name in PROJECTORS:
            cluster.start(name, "projector")
        settle(cluster, ids + more)
    cluster.assert_alive()
