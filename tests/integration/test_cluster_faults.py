"""Faults on the Phase 1 cluster, as separate processes on real Postgres and Redis: the API
SIGKILLed while it accepts runs (idempotent retries, no half-created run), and poison
messages on the job and result streams (dead-lettered once, acknowledged, never blocking)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from headrace.bus.topics import JOBS_NORMAL
from headrace.store.postgres import PostgresStore
from headrace.testing.cluster import ProcessCluster
from headrace.testing.replay import replay_diff
from headrace.testing.services import postgres_database, redis_prefix

SPEC = """
name: quick
inputs: {i: {type: integer}}
defaults: {retry: {max_attempts: 5, initial_interval: 10ms, max_interval: 100ms}}
nodes:
  a: {task: headrace.testing.tasks.sleep, with: {seconds: 0.05}}
  fan:
    needs: [a]
    map: "${{ [1, 2] }}"
    task: headrace.testing.tasks.sleep
    with: {seconds: 0.05, n: "${{ item + inputs.i }}"}
  total: {needs: [fan], task: headrace.testing.tasks.echo, with: {xs: "${{ nodes.fan.output }}"}}
outputs:
  count: "${{ len(nodes.total.output.xs) }}"
"""
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def fault_cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        c = ProcessCluster(tmp_path, db_url, redis_url, prefix)
        try:
            yield c
        finally:
            c.down()


def wait_ended(client: httpx.Client, run_ids: list[str], cluster: ProcessCluster) -> None:
    deadline = time.monotonic() + 45
    for run_id in run_ids:
        while client.get(f"/v1/runs/{run_id}").json()["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"run {run_id} did not end\n{cluster.logs()}"
            time.sleep(0.05)


async def check_runs(db_url: str, run_ids: list[str]) -> None:
    """Every run completed, was created whole (RunStarted, then its first node scheduled)
    and replays to its stored state."""
    store = PostgresStore(db_url)
    await store.open()
    try:
        for run_id in run_ids:
            record, _ = await store.get_run(run_id)
            assert record.status == "completed", (run_id, record.error)
            assert record.outputs == {"count": 2}
            events = await store.read_events(run_id, 0, 10_000)
            assert events and events[0].type == "RunStarted", (run_id, events[:2])
            first = [json.loads(e.data) for e in events if e.type == "NodeScheduled"]
            assert any(e.get("node_id") == "a" for e in first), (run_id, events[:3])
            assert await replay_diff(store, run_id) == {}
    finally:
        await store.close()


class Poster(threading.Thread):
    """Posts runs one after another, each under a new Idempotency-Key; remembers which
    got an answer (and the run) and which failed without one."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answered: dict[str, str] = {}
        self.unanswered: list[str] = []
        self.other: list[tuple[str, int, str]] = []  # an answer that was not 200/201
        self.stop = threading.Event()
        self.i = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                key = f"key-{self.i}"
                body = {"workflow_tag": "quick", "inputs": {"i": self.i}}
                self.i += 1
                try:
                    r = client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    self.unanswered.append(key)
                    time.sleep(0.1)
                    continue
                if r.status_code in (200, 201) and "run_id" in r.json():
                    self.answered[key] = r.json()["run_id"]
                else:
                    self.other.append((key, r.status_code, r.text))
                    self.unanswered.append(key)


def test_sigkill_the_api_while_it_accepts_runs(fault_cluster: ProcessCluster) -> None:
    cluster = fault_cluster
    cluster.up()
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        poster = Poster(cluster.url)
        poster.start()
        deadline = time.monotonic() + 20
        while len(poster.answered) < 15:
            assert time.monotonic() < deadline, f"runs are not accepted\n{cluster.logs()}"
            time.sleep(0.01)
        cluster.kill("api")  # mid-stream: a request may be in flight
        time.sleep(0.3)  # some requests find nobody listening
        cluster.start_api()
        answered_before = len(poster.answered)
        deadline = time.monotonic() + 20
        while len(poster.answered) < answered_before + 15:
            assert time.monotonic() < deadline, f"runs not accepted again\n{cluster.logs()}"
            time.sleep(0.01)
        poster.stop.set()
        poster.join(10)
        assert not poster.is_alive()
        assert poster.unanswered, "no request failed while the API was down"
        # only connection errors while it was down, or a 5xx cut short by the kill
        assert all(status >= 500 for _, status, _ in poster.other), poster.other

        # (b) retry every unanswered request with its key: one run per key
        retried: dict[str, str] = {}
        for key in poster.unanswered:
            i = int(key.split("-")[1])
            r = client.post(
                "/v1/runs",
                json={"workflow_tag": "quick", "inputs": {"i": i}},
                headers={"Idempotency-Key": key},
            )
            assert r.status_code in (200, 201), (key, r.status_code, r.text)
            retried[key] = r.json()["run_id"]
        # an answered request, retried, gives its run again (200), not a second one
        some_key, some_run = next(iter(poster.answered.items()))
        again = client.post(
            "/v1/runs",
            json={"workflow_tag": "quick", "inputs": {"i": 0}},
            headers={"Idempotency-Key": some_key},
        )
        assert (again.status_code, again.json()["run_id"]) == (200, some_run)

        by_key = {**poster.answered, **retried}
        assert len(by_key) == poster.i  # every request made has a run
        assert len(set(by_key.values())) == len(by_key)  # and no two keys share one

        # exactly one run per key in the database, and no run without a key
        with psycopg.connect(cluster.env["HEADRACE_DATABASE_URL"]) as conn:
            rows = conn.execute("SELECT run_id, idempotency_key FROM runs").fetchall()
        in_db = {str(run_id): key for run_id, key in rows}
        assert len(rows) == len(by_key), (len(rows), len(by_key))
        assert in_db == {run_id: key for key, run_id in by_key.items()}

        run_ids = sorted(in_db)
        wait_ended(client, run_ids, cluster)
    # (a) + (b) + (c): all complete, none half-created, all replay
    asyncio.run(check_runs(cluster.env["HEADRACE_DATABASE_URL"], run_ids))


def dead_letters(cluster: ProcessCluster) -> list[dict[str, str]]:
    client = cluster.redis()
    try:
        entries = client.xrange(cluster.key("dead-letter"), "-", "+")
    finally:
        client.close()
    return [
        {k.decode(): v.decode(errors="replace") for k, v in fields.items()} for _, fields in entries
    ]


def pending(cluster: ProcessCluster, topic: str, group: str) -> int:
    client = cluster.redis()
    try:
        if not client.exists(cluster.key(topic)):
            return 0
        return int(client.xpending(cluster.key(topic), group)["pending"])
    finally:
        client.close()


def test_poison_messages_are_dead_lettered_once(fault_cluster: ProcessCluster) -> None:
    cluster = fault_cluster
    cluster.up()
    poison_run = "00000000-0000-4000-8000-000000000000"
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        run_ids = [
            client.post("/v1/runs", json={"workflow_tag": "quick", "inputs": {"i": i}}).json()[
                "run_id"
            ]
            for i in range(8)
        ]
        r = cluster.redis()
        try:
            job_id = r.xadd(
                cluster.key("node.jobs.normal"), {"k": poison_run, "p": b"not json", "h": "{}"}
            ).decode()
            result_id = r.xadd(
                cluster.key("node.results"), {"k": poison_run, "p": b"not json", "h": "{}"}
            ).decode()
        finally:
            r.close()
        run_ids += [
            client.post("/v1/runs", json={"workflow_tag": "quick", "inputs": {"i": i}}).json()[
                "run_id"
            ]
            for i in range(8, 16)
        ]
        wait_ended(client, run_ids, cluster)

        # the two XADDs may get the same id (same millisecond): tell them apart by stream
        job_at = ("node.jobs.normal", job_id)
        result_at = ("node.results", result_id)

        def poisoned() -> dict[tuple[str, str], list[dict[str, str]]]:
            found: dict[tuple[str, str], list[dict[str, str]]] = {job_at: [], result_at: []}
            for entry in dead_letters(cluster):
                at = (entry.get("topic", ""), entry.get("id", ""))
                if at in found:
                    found[at].append(entry)
            return found

        deadline = time.monotonic() + 15
        while not all(poisoned().values()):
            assert time.monotonic() < deadline, f"{poisoned()}\n{cluster.logs()}"
            time.sleep(0.05)
        # past the lease (2 s): a poison message left pending would be claimed again now
        time.sleep(3)
        found = poisoned()
        assert len(found[job_at]) == 1, found
        assert len(found[result_at]) == 1, found
        job, result = found[job_at][0], found[result_at][0]
        assert job["group"] == "workers", job
        assert "undecodable job" in job["reason"], job
        assert result["group"] == "coordinators", result
        assert "undecodable result" in result["reason"], result
        assert job["k"] == result["k"] == poison_run and job["p"] == "not json"

        deadline = time.monotonic() + 10
        while pending(cluster, "node.jobs.normal", "workers") or pending(
            cluster, "node.results", "coordinators"
        ):
            assert time.monotonic() < deadline, (
                pending(cluster, "node.jobs.normal", "workers"),
                pending(cluster, "node.results", "coordinators"),
            )
            time.sleep(0.05)
        # taken once: one log line for each, in all the processes together
        workers = cluster.log("worker-1") + cluster.log("worker-2")
        coordinators = cluster.log("coordinator-1") + cluster.log("coordinator-2")
        assert workers.count(f"undecodable job {job_id}") == 1, workers[-3000:]
        assert coordinators.count(f"result {result_id} goes to the dead-letter") == 1
    asyncio.run(check_runs(cluster.env["HEADRACE_DATABASE_URL"], run_ids))


def test_a_job_the_bus_lost_is_sent_again(tmp_path: Path) -> None:
    """A bus can lose a message it acknowledged (a Redis failover; tansu after a SIGKILL):
    here the job stream is emptied before any worker read it. The relay sends again the job
    of an attempt not started after HEADRACE_REDISPATCH_S, and the run completes."""
    roles = {"api": "api", "coordinator-1": "coordinator", "relay": "relay"}
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        cluster = ProcessCluster(
            tmp_path, db_url, redis_url, prefix, roles=roles, HEADRACE_REDISPATCH_S="1"
        )
        try:
            cluster.up()
            with httpx.Client(base_url=cluster.url, timeout=10) as client:
                assert client.post("/v1/workflows", content=SPEC).status_code == 201
                body = {"workflow_tag": "quick", "inputs": {"i": 1}}
                run_id = client.post("/v1/runs", json=body).json()["run_id"]
                jobs = cluster.key(JOBS_NORMAL)
                with cluster.redis() as r:
                    deadline = time.monotonic() + 30
                    while not r.xlen(jobs):
                        assert time.monotonic() < deadline, cluster.logs()
                        time.sleep(0.02)
                    r.xtrim(jobs, maxlen=0)  # lost: no worker ever reads it
                cluster.start("worker-1", "worker")
                wait_ended(client, [run_id], cluster)
            assert "sent again" in cluster.log("relay"), cluster.log("relay")
        finally:
            cluster.down()
        asyncio.run(check_runs(db_url, [run_id]))
