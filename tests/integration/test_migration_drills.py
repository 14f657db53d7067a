"""Drills of the Redis → Kafka migration with real processes, Postgres, Redis and the test
Kafka broker (ARCHITECTURE §4): the whole path under load with SIGKILLs on the way, and
the monitor's automatic rollback when the broker dies."""

from __future__ import annotations

import asyncio
import signal
import statistics
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

from headrace.events import NodeCompleted, decode_event
from headrace.runtime.pins import in_kafka_share
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
    """A steady stream of runs of `workflow` (steady or quick) from a thread, one every
    `every_s`: run id -> expected outputs."""

    def __init__(self, url: str, every_s: float = 0.2, workflow: str = "steady") -> None:
        self.url = url
        self.every_s = every_s
        self.workflow = workflow
        self.runs: dict[str, dict[str, Any]] = {}  # run id -> expected outputs
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    body = {"workflow_tag": self.workflow, "inputs": {"i": i}}
                    r = client.post("/v1/runs", json=body)
                    if r.status_code == 201:
                        quick = self.workflow == "quick"
                        self.runs[r.json()["run_id"]] = {"sum": i + 1} if quick else {"count": 4}
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
            "SELECT figures FROM process_figures WHERE process LIKE 'shadow@%' "
            "ORDER BY updated_at DESC LIMIT 1"
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


def advance(client: httpx.Client, to: str) -> dict[str, Any]:
    """One step forward, never forced: refused (the test fails) if a check fails."""
    status: dict[str, Any] = client.get("/v1/migration").json()
    failing = [
        f"{c['name']}={c['value']}: {c['detail']}" for c in status["checks"] if c["ok"] is False
    ]
    assert not failing, f"checks fail at {status['step']}: {failing}"
    moved = move(client, "advance")
    assert moved["to"] == to, moved
    return status


def monitor_changes(client: httpx.Client) -> list[dict[str, Any]]:
    history = client.get("/v1/flags/history", params={"limit": 1000}).json()["items"]
    return [c for c in history if c["who"] == "monitor"]


MIGRATING_ENV = {
    "HEADRACE_MIGRATION_WINDOW_S": "30",  # the checklist's window: shorter, for a test
}


@pytest.mark.timeout(420)
def test_migration_drill_redis_to_kafka_and_back(
    tmp_path: Path, services: tuple[Tansu, str, str, str]
) -> None:
    """The documented procedure under load, with the monitor and the shadow running, a
    worker SIGKILLed at 50 % and a coordinator at 100 %: every step passes its checks
    without --force, the monitor rolls nothing back, the shadow finds nothing, two
    rollbacks at once move (and re-pin) once, and every run completes once."""
    db = services[1]
    roles = {**PROCESSES, "monitor": "monitor"}
    cluster = migrating_cluster(tmp_path, services, roles, **MIGRATING_ENV)
    expected: dict[str, dict[str, Any]] = {}
    shares: dict[int, float] = {}
    client = httpx.Client(base_url=cluster.url, timeout=30)
    try:
        cluster.up()
        for spec in (STEADY, QUICK):
            assert client.post("/v1/workflows", content=spec).status_code == 201
        with Load(cluster.url) as load:
            time.sleep(3)  # phase 1
            advance(client, "dual-write")
            time.sleep(5)
            for percent, n in ((10, 300), (50, 600), (100, 100)):
                advance(client, f"kafka-{percent}")
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
                wait_ended(db, cluster, list(started))
                time.sleep(5)  # a calm stretch
            advance(client, "redis-off")
            time.sleep(3)  # every process applied the flags
            before = redis_lengths(cluster)
            time.sleep(3)
            assert redis_lengths(cluster) == before  # nothing written to Redis
            answers = both_at_once(client, {"from": "redis-off", "to": "dual-write"})
            assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
            moved = next(a.json() for a in answers if a.status_code == 200)
            refused = next(a.json() for a in answers if a.status_code == 409)
            assert "at dual-write, not redis-off" in refused["detail"], refused
            assert client.get("/v1/migration").json()["step"] == "dual-write"
            time.sleep(3)
        expected |= load.runs
        wait_ended(db, cluster)
        asyncio.run(check_all(db, expected))
        time.sleep(2)  # the shadow's last report
        shadow = shadow_figures(db)
        assert (shadow["mismatched"], shadow["missing"]) == (0, 0), (
            shadow
        )  # lost: with a killed writer
        assert shadow["matched"] > 0, shadow
        assert monitor_changes(client) == [], monitor_changes(client)
        shadow.pop("slots", None)
        print(f"\ndrill: {len(expected)} runs accepted, 0 lost, 0 duplicated; kafka shares "
              f"{shares}; shadow {shadow}; re-pinned {moved['repinned_runs']} runs; "
              f"load errors {load.errors}")  # fmt: skip
        cluster.assert_alive()
    finally:
        client.close()
        cluster.down()


def both_at_once(client: httpx.Client, body: dict[str, Any]) -> list[httpx.Response]:
    """Two operators' rollbacks from the same step, sent at the same moment."""
    gate = threading.Barrier(2)
    out: list[httpx.Response] = []

    def one(who: str) -> None:
        gate.wait()
        out.append(client.post("/v1/migration/rollback", json={**body, "why": "drill", "who": who}))

    threads = [threading.Thread(target=one, args=(who,)) for who in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def durations(db_url: str, run_ids: list[str]) -> dict[str, tuple[str, float]]:
    """run id -> (its pin, seconds from creation to end)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT r.run_id, p.bus, r.ended_at - r.created_at FROM runs r "
            "JOIN run_pins p ON p.run_id = r.run_id WHERE r.run_id = ANY(%s)",
            (run_ids,),
        ).fetchall()
    return {run_id: (bus, ms / 1000) for run_id, bus, ms in found}


@pytest.mark.timeout(300)
def test_a_frozen_broker_never_stalls_redis_pinned_runs(
    tmp_path: Path, services: tuple[Tansu, str, str, str]
) -> None:
    """SIGSTOP the broker at 50 % under load: runs pinned to Redis keep their latency
    (within 2x), the monitor rolls back (once per fault: to dual-write, then to phase-1
    only if the broker is still frozen there), and after SIGCONT every run completes."""
    broker, db = services[0], services[1]
    roles = {**PROCESSES, "monitor": "monitor"}
    cluster = migrating_cluster(tmp_path, services, roles, **MIGRATING_ENV)
    client = httpx.Client(base_url=cluster.url, timeout=30)
    try:
        cluster.up()
        for spec in (STEADY, QUICK):
            assert client.post("/v1/workflows", content=spec).status_code == 201
        with Load(cluster.url, every_s=0.1) as load:
            time.sleep(3)
            for step in ("dual-write", "kafka-10", "kafka-50"):
                advance(client, step)
                time.sleep(3)
            with Load(cluster.url, every_s=0.1, workflow="quick") as normal:
                time.sleep(8)
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            rolled_back_s = None
            try:
                with Load(cluster.url, every_s=0.1, workflow="quick") as frozen:
                    while time.monotonic() - frozen_at < 20:
                        kafka_on = client.get("/v1/flags/ENABLE_KAFKA").json()["value"]
                        if rolled_back_s is None and kafka_on is False:
                            rolled_back_s = time.monotonic() - frozen_at
                        time.sleep(0.2)
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            time.sleep(3)
        expected = {**load.runs, **normal.runs, **frozen.runs}
        wait_ended(db, cluster)
        asyncio.run(check_all(db, expected))
        before = durations(db, list(normal.runs))
        during = durations(db, list(frozen.runs))
        usual = statistics.median(s for bus, s in before.values() if bus == "redis")
        stalled = statistics.median(s for bus, s in during.values() if bus == "redis")
        changes = monitor_changes(client)
        rollbacks = [c for c in changes if c["name"] == "ENABLE_KAFKA"]
        print(f"\nfrozen broker: {len(expected)} runs accepted, 0 lost, 0 duplicated; "
              f"Redis-pinned runs {usual * 1000:.0f} ms -> {stalled * 1000:.0f} ms (median of "
              f"{len(before)} / {len(during)} runs); rolled back {rolled_back_s} s after the "
              f"freeze; monitor: {[(c['name'], c['new'], c['why']) for c in changes]}")  # fmt: skip
        assert stalled <= 2 * usual, (usual, stalled)
        assert (load.errors, normal.errors, frozen.errors) == (0, 0, 0)
        assert len(rollbacks) == 1 and rollbacks[0]["new"] is False, changes
        cluster.assert_alive()
    finally:
        client.close()
        cluster.down()
