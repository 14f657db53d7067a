"""Drills of the Redis → Kafka migration with real processes, Postgres, Redis and the test
Kafka broker (ARCHITECTURE §4): the whole path under load with SIGKILLs on the way, and
the monitor's automatic rollback when the broker dies."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from headrace.bus.migrating import in_kafka_share
from headrace.events import NodeCompleted, decode_event
from headrace.store.postgres import PostgresStore
from headrace.testing.cluster import ROLES, ProcessCluster
from headrace.testing.kafka import Tansu
from headrace.testing.replay import replay_diff
from headrace.testing.services import postgres_database, redis_prefix

pytestmark = pytest.mark.integration

STEADY = """
name: steady
inputs: {i: {type: integer}}
defaults: {retry: {max_attempts: 5, initial_interval: 10ms, max_interval: 100ms}}
nodes:
  a: {task: headrace.testing.tasks.sleep, with: {seconds: 0.2}}
  fan:
    needs: [a]
    map: "${{ [1, 2, 3, 4] }}"
    task: headrace.testing.tasks.sleep
    with: {seconds: 0.1, n: "${{ item + inputs.i }}"}
  total: {needs: [fan], task: headrace.testing.tasks.echo, with: {xs: "${{ nodes.fan.output }}"}}
outputs:
  count: "${{ len(nodes.total.output.xs) }}"
"""
QUICK = """
name: quick
inputs: {i: {type: integer}}
defaults: {retry: {max_attempts: 5, initial_interval: 10ms, max_interval: 100ms}}
nodes:
  one: {task: headrace.testing.tasks.add, with: {a: "${{ inputs.i }}", b: 1}}
outputs:
  sum: "${{ nodes.one.output.sum }}"
"""
PROCESSES = {**ROLES, "shadow": "shadow"}
END_S = 180.0  # a generous ceiling for every run to end


class Load:
    """A steady stream of `steady` runs from a thread, one every `every_s`."""

    def __init__(self, url: str, every_s: float = 0.2) -> None:
        self.url = url
        self.every_s = every_s
        self.runs: dict[str, dict[str, Any]] = {}  # run id -> expected outputs
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    body = {"workflow_tag": "steady", "inputs": {"i": i}}
                    r = client.post("/v1/runs", json=body)
                    if r.status_code == 201:
                        self.runs[r.json()["run_id"]] = {"count": 4}
                    else:
                        self.errors += 1
                except httpx.HTTPError:
                    self.errors += 1
                i += 1
                self.stop.wait(self.every_s)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


async def burst(url: str, n: int) -> dict[str, dict[str, Any]]:
    """Start `n` quick runs at once (32 at a time); run id -> expected outputs."""
    out: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> None:
            async with gate:
                body = {"workflow_tag": "quick", "inputs": {"i": i}}
                r = await client.post("/v1/runs", json=body)
                assert r.status_code == 201, r.text
                out[r.json()["run_id"]] = {"sum": i + 1}

        await asyncio.gather(*(one(i) for i in range(n)))
    return out


def move(client: httpx.Client, action: str, **body: Any) -> dict[str, Any]:
    at = client.get("/v1/migration").json()["step"]
    body = {"from": at, "why": "drill", "who": "drill", **body}
    r = client.post(f"/v1/migration/{action}", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_ended(db_url: str, cluster: ProcessCluster, run_ids: list[str] | None = None) -> None:
    """Until every run (or every one of `run_ids`) ended."""
    deadline = time.monotonic() + END_S
    only = "" if run_ids is None else " AND run_id = ANY(%s)"
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            (left,) = conn.execute(  # type: ignore[misc]
                "SELECT count(*) FROM runs WHERE status IN ('pending', 'running')" + only,
                () if run_ids is None else (run_ids,),
            ).fetchone()
            if left == 0:
                return
            assert time.monotonic() < deadline, f"{left} runs did not end\n{cluster.logs()}"
            time.sleep(0.2)


async def check_all(db_url: str, expected: dict[str, dict[str, Any]]) -> None:
    """Every run completed with its outputs, no node completed twice, and its events
    replay to its stored state."""
    store = PostgresStore(db_url)
    await store.open()
    try:
        for run_id, outputs in expected.items():
            record, _ = await store.get_run(run_id)
            assert (record.status, record.outputs) == ("completed", outputs), run_id
            events = [decode_event(e.data) for e in await store.read_events(run_id, 0, 10_000)]
            done = Counter(e.node_id for e in events if isinstance(e, NodeCompleted))
            assert done and max(done.values()) == 1, (run_id, done)
            assert await replay_diff(store, run_id) == {}, run_id
    finally:
        await store.close()


async def pins_of(db_url: str, run_ids: list[str]) -> dict[str, str]:
    store = PostgresStore(db_url)
    await store.open()
    try:
        return await store.pins(run_ids)
    finally:
        await store.close()


def assert_share(pins: dict[str, str], run_ids: list[str], percent: int) -> float:
    """Each run pinned as its id says at `percent`, and the share within ±5 points."""
    for run_id in run_ids:
        assert pins[run_id] == ("kafka" if in_kafka_share(run_id, percent) else "redis")
    share = 100 * sum(pins[r] == "kafka" for r in run_ids) / len(run_ids)
    assert abs(share - percent) <= 5, (share, percent)
    return share


def redis_lengths(cluster: ProcessCluster) -> dict[str, int]:
    client = redis.Redis.from_url(cluster.env["HEADRACE_BUS"])
    try:
        prefix = cluster.env["HEADRACE_BUS_PREFIX"]
        return {k.decode(): client.xlen(k) for k in client.scan_iter(match=prefix + "*")}
    finally:
        client.close()


def shadow_figures(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT figures FROM process_figures WHERE process = 'shadow'"
        ).fetchone()
    assert row is not None, "the shadow validator never reported"
    import json

    return dict(json.loads(row[0])["shadow"])


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[Tansu, str, str, str]]:
    with Tansu(tmp_path) as broker, postgres_database() as db, redis_prefix() as (url, prefix):
        yield broker, db, url, prefix


def migrating_cluster(
    tmp: Path, services: tuple[Tansu, str, str, str], roles: dict[str, str], **env: str
) -> ProcessCluster:
    broker, db, url, prefix = services
    return ProcessCluster(
        tmp,
        db,
        url,
        prefix,
        roles,
        HEADRACE_KAFKA_URL=f"kafka://{broker.bootstrap}",
        HEADRACE_KAFKA_PARTITIONS="4",
        **env,
    )


@pytest.mark.timeout(300)
def test_migration_drill_redis_to_kafka_and_back(
    tmp_path: Path, services: tuple[Tansu, str, str, str]
) -> None:
    db = services[1]
    cluster = migrating_cluster(tmp_path, services, PROCESSES)
    expected: dict[str, dict[str, Any]] = {}
    shares: dict[int, float] = {}
    client = httpx.Client(base_url=cluster.url, timeout=30)
    try:
        cluster.up()
        for spec in (STEADY, QUICK):
            assert client.post("/v1/workflows", content=spec).status_code == 201
        with Load(cluster.url) as load:
            time.sleep(2)  # phase 1
            assert move(client, "advance")["to"] == "dual-write"
            time.sleep(3)
            for percent, n in ((10, 300), (50, 1000), (100, 100)):
                # forced: a burst's latency is not the checks' business here
                assert move(client, "advance", force=True)["to"] == f"kafka-{percent}"
                started = asyncio.run(burst(cluster.url, n))
                expected |= started
                pins = asyncio.run(pins_of(db, list(started)))
                shares[percent] = assert_share(pins, list(started), percent)
                if percent == 50:
                    cluster.kill("worker-1")
                    cluster.start("worker-1", "worker")
                if percent == 100:
                    cluster.kill("coordinator-1")
                    cluster.start("coordinator-1", "coordinator")
                time.sleep(1)
            assert move(client, "advance", force=True)["to"] == "redis-off"
            time.sleep(3)  # every process applied the flags
            before = redis_lengths(cluster)
            time.sleep(3)
            assert redis_lengths(cluster) == before  # nothing written to Redis
            moved = move(client, "rollback", to="dual-write")  # back to 0 %
            assert moved["to"] == "dual-write"
            time.sleep(3)
        expected |= load.runs
        wait_ended(db, cluster)
        asyncio.run(check_all(db, expected))
        time.sleep(2)  # the shadow's last report
        shadow = shadow_figures(db)
        assert shadow["mismatched"] == 0, shadow
        assert shadow["matched"] > 0, shadow
        print(f"\ndrill: {len(expected)} runs, kafka shares {shares}, shadow {shadow}, "
              f"re-pinned {moved['repinned_runs']} runs, load errors {load.errors}")  # fmt: skip
        cluster.assert_alive()
    finally:
        client.close()
        cluster.down()


@pytest.mark.timeout(300)
def test_monitor_rolls_back_when_the_broker_dies(
    tmp_path: Path, services: tuple[Tansu, str, str, str]
) -> None:
    broker, db = services[0], services[1]
    roles = {**PROCESSES, "monitor": "monitor"}
    cluster = migrating_cluster(
        tmp_path,
        services,
        roles,
        HEADRACE_MONITOR_WINDOW_S="5",
        HEADRACE_MONITOR_LATENCY_FLOOR_MS="5000",  # bursts are slow here: not the point
    )
    client = httpx.Client(base_url=cluster.url, timeout=30)
    try:
        cluster.up()
        for spec in (STEADY, QUICK):
            assert client.post("/v1/workflows", content=spec).status_code == 201
        with Load(cluster.url, every_s=0.1) as load:
            for _ in range(4):  # phase 1 -> dual-write -> 10 % -> 50 %
                move(client, "advance", force=True)
            started = asyncio.run(burst(cluster.url, 200))
            wait_ended(db, cluster, list(started))  # Kafka carries runs to the end
            time.sleep(2)
            assert client.get("/v1/flags/ENABLE_KAFKA").json()["value"] is True
            broker.kill()
            killed = time.monotonic()
            while client.get("/v1/flags/ENABLE_KAFKA").json()["value"] is not False:
                assert time.monotonic() - killed < 60, f"no rollback\n{cluster.logs()}"
                time.sleep(0.2)
            took = time.monotonic() - killed
            time.sleep(3)
        wait_ended(db, cluster)
        asyncio.run(check_all(db, started | load.runs))
        (change,) = [
            c
            for c in client.get("/v1/flags/history", params={"name": "ENABLE_KAFKA"}).json()[
                "items"
            ]
            if c["who"] == "monitor"
        ]
        assert change["why"].startswith(("monitor: kafka_error_rate", "monitor: kafka_consumer"))
        print(f"\nrollback {took:.1f} s after the broker died: {change['why']}")
        cluster.assert_alive()
    finally:
        client.close()
        cluster.down()
