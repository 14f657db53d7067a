"""The cluster on Postgres and the Kafka bus (`HEADRACE_BUS=kafka://`): separate processes,
a worker SIGKILLed while it runs jobs; its jobs run again elsewhere and every run completes.
The broker SIGKILLed while runs flow and started again on its storage: every run completes.
And `headrace cluster up` with the migrating bus."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from headrace.testing.cluster import HEADRACE, ProcessCluster, check_runs, run_status, wait_all
from headrace.testing.kafka import MotoS3, Tansu, external_broker
from headrace.testing.servers import free_port
from headrace.testing.services import postgres_database, redis_prefix

pytestmark = pytest.mark.integration

SPEC = """
name: steady
inputs: {i: {type: integer}, marks: {type: string}}
defaults: {retry: {max_attempts: 5, initial_interval: 10ms, max_interval: 100ms}}
nodes:
  a:
    task: headrace.testing.tasks.marked_sleep
    with: {marks: "${{ inputs.marks }}", name: "a-${{ inputs.i }}", seconds: 0.5}
  fan:
    needs: [a]
    map: "${{ [1, 2, 3, 4] }}"
    task: headrace.testing.tasks.sleep
    with: {seconds: 0.1, n: "${{ item + inputs.i }}"}
  total: {needs: [fan], task: headrace.testing.tasks.echo, with: {xs: "${{ nodes.fan.output }}"}}
outputs:
  count: "${{ len(nodes.total.output.xs) }}"
"""


@pytest.fixture
def cluster(tmp_path: Path, bootstrap: str) -> Iterator[ProcessCluster]:
    prefix = f"test-{time.monotonic_ns()}."
    with postgres_database() as db_url:
        c = ProcessCluster(
            tmp_path, db_url, f"kafka://{bootstrap}", prefix, HEADRACE_KAFKA_PARTITIONS="4"
        )
        try:
            yield c
        finally:
            c.down()


def start_runs(client: httpx.Client, marks: Path, first: int, n: int) -> list[str]:
    ids = []
    for i in range(first, first + n):
        body = {"workflow_tag": "steady", "inputs": {"i": i, "marks": str(marks)}}
        ids.append(client.post("/v1/runs", json=body).json()["run_id"])
    return ids


def test_sigkill_a_worker_on_the_kafka_bus(cluster: ProcessCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.up()
    victim = cluster.procs["worker-1"].pid
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        run_ids = start_runs(client, marks, 0, 20)
        deadline = time.monotonic() + 60
        while not list(marks.glob(f"*.{victim}")):  # kill it while it runs a job
            assert time.monotonic() < deadline, f"worker-1 never ran a job\n{cluster.logs()}"
            time.sleep(0.02)
        cluster.kill("worker-1")
        run_ids += start_runs(client, marks, 20, 10)
        wait_all(client, run_ids, cluster, timeout_s=120)
    lost = [m.name.split(".")[0] for m in marks.glob(f"*.{victim}")]
    for name in lost:  # what the victim held ran again in the other worker
        assert [m for m in marks.glob(f"{name}.*") if m.suffix != f".{victim}"], name
    asyncio.run(check_runs(cluster.env["HEADRACE_DATABASE_URL"], run_ids, {"count": 4}))


class SteadyLoad(threading.Thread):
    """Starts a run every `every_s` through the API until stopped; `run_ids` in order."""

    def __init__(self, url: str, marks: Path, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.url, self.marks, self.every_s = url, marks, every_s
        self.run_ids: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.halt.wait(self.every_s):
                self.run_ids += start_runs(client, self.marks, len(self.run_ids), 1)

    def stop(self) -> list[str]:
        self.halt.set()
        self.join(90)
        return self.run_ids


@pytest.mark.timeout(300)
def test_a_broker_restart_while_runs_flow(tmp_path: Path) -> None:
    if external_broker():
        pytest.skip("restarts the test's own tansu; HEADRACE_TEST_KAFKA names another broker")
    marks = tmp_path / "marks"
    marks.mkdir()
    prefix = f"test-{time.monotonic_ns()}."
    with MotoS3(tmp_path) as s3, Tansu(tmp_path, s3=s3) as broker, postgres_database() as db:
        # tansu reads S3 within a fetch's wait or answers nothing: 100 ms gives it time. Its
        # storage can come back without the last writes it acknowledged (docs/kafka.md): a
        # job lost so is sent again by the relay after HEADRACE_REDISPATCH_S.
        env = {
            "HEADRACE_KAFKA_PARTITIONS": "4",
            "HEADRACE_KAFKA_FETCH_WAIT_MS": "100",
            "HEADRACE_REDISPATCH_S": "5",
        }
        cluster = ProcessCluster(tmp_path, db, f"kafka://{broker.bootstrap}", prefix, **env)
        try:
            cluster.up()
            with httpx.Client(base_url=cluster.url, timeout=10) as client:
                assert client.post("/v1/workflows", content=SPEC).status_code == 201
                load = SteadyLoad(cluster.url, marks)
                load.start()
                while len(list(marks.iterdir())) < 5:  # runs in flight
                    assert load.is_alive(), cluster.logs()
                    time.sleep(0.05)
                broker.kill()
                started = list(load.run_ids)
                unfinished = [r for r in started if run_status(client, r) != "completed"]
                time.sleep(2)  # the API goes on accepting runs; nothing can move them
                broker.start()
                time.sleep(5)
                run_ids = load.stop()
                wait_all(client, run_ids, cluster, timeout_s=180)
            cluster.assert_alive()
        finally:
            cluster.down()
        assert unfinished, "runs were in flight when the broker died"
        assert len(run_ids) >= len(started) + 5, "runs were started while it was down and after"
        asyncio.run(check_runs(db, run_ids, {"count": 4}))


def test_cluster_up_with_the_migrating_bus_shows_every_process(
    tmp_path: Path, bootstrap: str
) -> None:
    port = free_port()
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        env = {
            **os.environ,
            "HEADRACE_DATABASE_URL": db_url,
            "HEADRACE_BUS": redis_url,
            "HEADRACE_BUS_PREFIX": prefix,
            "HEADRACE_KAFKA_URL": f"kafka://{bootstrap}",
            "HEADRACE_KAFKA_PARTITIONS": "4",
        }
        log = tmp_path / "cluster.log"
        argv = [HEADRACE, "cluster", "up", "--port", str(port), "--tasks", "headrace.testing.tasks"]
        with log.open("wb") as out, subprocess.Popen(argv, env=env, stdout=out) as proc:
            try:
                names = ["api", "coordinator-1", "coordinator-2", "worker-1", "worker-2"]
                names += ["relay", "monitor", "shadow"]
                deadline = time.monotonic() + 60
                while not all(f"{n:<14}| headrace serve" in log.read_text() for n in names):
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                    while True:  # the API announces itself just before it listens
                        try:
                            status = client.get("/v1/migration").json()
                            break
                        except httpx.ConnectError:
                            assert time.monotonic() < deadline, log.read_text()
                            time.sleep(0.1)
                    assert status["step"] == "phase-1"
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0, log.read_text()
