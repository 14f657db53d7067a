"""`headrace cluster up` as a user runs it, on real Postgres and Redis (and the test Kafka
broker): a SIGKILLed worker is named and restarted, and runs go on; a process that dies at
every start is given up on and the cluster stops; SIGHUP gives every process a new
environment one at a time (the migration's "give every process both buses") while runs flow.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.testing.cluster import HEADRACE, check_runs
from headrace.testing.servers import free_port
from headrace.testing.services import postgres_database, redis_prefix

pytestmark = pytest.mark.integration

DEADLINE_S = 120.0  # a ceiling that catches hangs: starts are slow on a busy 2-core machine

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
    map: "${{ [1, 2, 3] }}"
    task: headrace.testing.tasks.sleep
    with: {seconds: 0.1, n: "${{ item + inputs.i }}"}
outputs:
  count: "${{ len(nodes.fan.output) }}"
"""


class ClusterUp:
    """`headrace cluster up ARGS` with its output in a file."""

    def __init__(self, tmp: Path, env: dict[str, str], *args: str, port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "cluster.log"
        argv = [HEADRACE, "cluster", "up", "--port", str(self.port), *args]
        argv += ["--tasks", "headrace.testing.tasks"]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cluster_lines(self) -> list[str]:
        return [line[16:] for line in self.log().splitlines() if line.startswith("cluster ")]

    def wait_for(self, pattern: str, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in cluster up's own lines from line `after` on."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            for line in self.cluster_lines()[after:]:
                if found := re.search(pattern, line):
                    return found
            assert time.monotonic() < deadline, f"{pattern!r} never logged:\n{self.log()}"
            assert self.proc.poll() is None or "giving up" in pattern, self.log()
            time.sleep(0.1)

    def pid(self, name: str) -> int:
        """The pid of the last start of process `name`."""
        pids = re.findall(rf"^started {name} \(pid (\d+)\)$", "\n".join(self.cluster_lines()), re.M)
        assert pids, self.log()
        return int(pids[-1])

    def restarted(self, name: str, old_pid: int) -> int:
        """The pid of `name` once it was started again after `old_pid`."""
        deadline = time.monotonic() + DEADLINE_S
        while (pid := self.pid(name)) == old_pid:
            assert time.monotonic() < deadline, f"{name} was not restarted:\n{self.log()}"
            time.sleep(0.1)
        return pid

    def wait_api(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"cluster up did not stop on SIGTERM:\n{self.log()}") from None


@contextmanager
def shared_env() -> Iterator[dict[str, str]]:
    """A database and a Redis key prefix of the test's own, as cluster up's environment."""
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        yield {
            **os.environ,
            "HEADRACE_DATABASE_URL": db_url,
            "HEADRACE_BUS": redis_url,
            "HEADRACE_BUS_PREFIX": prefix,
            "HEADRACE_LEASE_S": "2",
            "HEADRACE_HEARTBEAT_S": "0.5",
        }


def start_runs(client: httpx.Client, marks: Path, first: int, n: int) -> list[str]:
    ids = []
    for i in range(first, first + n):
        body = {"workflow_tag": "steady", "inputs": {"i": i, "marks": str(marks)}}
        response = client.post("/v1/runs", json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["run_id"])
    return ids


def wait_runs(client: httpx.Client, run_ids: list[str], cluster: ClusterUp) -> None:
    deadline = time.monotonic() + DEADLINE_S
    for run_id in run_ids:
        while client.get(f"/v1/runs/{run_id}").json()["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, f"run {run_id} never ended:\n{cluster.log()}"
            time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_sigkilled_worker_is_named_and_restarted(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with shared_env() as env:
        # one worker: the runs started after its death complete only if it came back
        cluster = ClusterUp(tmp_path, env, "--coordinators", "1", "--workers", "1")
        try:
            cluster.wait_api()
            victim = cluster.pid("worker-1")
            with httpx.Client(base_url=cluster.url, timeout=30) as client:
                assert client.post("/v1/workflows", content=SPEC).status_code == 201
                before = start_runs(client, marks, 0, 5)
                deadline = time.monotonic() + DEADLINE_S
                while not list(marks.glob(f"*.{victim}")):  # kill it while it runs a job
                    assert time.monotonic() < deadline, cluster.log()
                    time.sleep(0.02)
                os.kill(victim, signal.SIGKILL)

                died = cluster.wait_for(r"^worker-1 \(pid (\d+)\) (.+?) [\d.]+ s after its start")
                assert int(died.group(1)) == victim
                assert died.group(2) == "was killed by SIGKILL", died.string
                assert died.string.endswith("(restart 1)"), died.string
                restarted = cluster.restarted("worker-1", victim)
                assert alive(restarted)

                after = start_runs(client, marks, 5, 5)
                wait_runs(client, before + after, cluster)
            for i in range(5, 10):  # the restarted worker ran the runs started afterwards
                assert (marks / f"a-{i}.{restarted}").exists(), list(marks.iterdir())
            asyncio.run(check_runs(env["HEADRACE_DATABASE_URL"], before + after, {"count": 3}))
        finally:
            code = cluster.stop()
        assert code == 0, cluster.log()
        assert "stopping the cluster" not in cluster.log()


@pytest.mark.timeout(300)
def test_a_process_that_dies_at_every_start_is_given_up_on(tmp_path: Path) -> None:
    with shared_env() as env, socket.socket() as taken:
        # the api's port is taken: `serve api` exits 2 at every start, the rest run fine
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = ClusterUp(tmp_path, env, "--coordinators", "1", "--workers", "1", port=port)
        try:
            gave_up = cluster.wait_for(r"giving up on it: stopping the cluster \(exit 1\)$")
            code = cluster.proc.wait(DEADLINE_S)
        finally:
            cluster.stop()
    lines = cluster.cluster_lines()
    deaths = [line for line in lines if line.startswith("api (pid")]
    assert len(deaths) == 5, lines
    for n, line in enumerate(deaths[:4], 1):
        assert "exited with code 2" in line and "(before it was up)" in line, line
        assert f"quick death {n} of 5; restarting it in {0.5 * 2**n:g} s" in line, line
    assert gave_up.string == deaths[4]
    assert "api died 5 times in a row" in gave_up.string
    assert "(last: exited with code 2)" in gave_up.string
    assert f"cannot listen on 127.0.0.1:{cluster.port}" in cluster.log()  # the api's own words
    assert code == 1, cluster.log()
    for name in ("coordinator-1", "worker-1", "relay"):  # the rest were stopped with it
        assert not alive(cluster.pid(name)), name


class Load(threading.Thread):
    """Starts a run every `every_s` until stopped; a refused start (the API restarting) is
    counted and tried again."""

    def __init__(self, url: str, marks: Path, every_s: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.url, self.marks, self.every_s = url, marks, every_s
        self.run_ids: list[str] = []
        self.refused = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.halt.wait(self.every_s):
                try:
                    self.run_ids += start_runs(client, self.marks, len(self.run_ids), 1)
                except httpx.HTTPError:
                    self.refused += 1

    def stop(self) -> list[str]:
        self.halt.set()
        self.join(60)
        return self.run_ids


def migration(client: httpx.Client) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/v1/migration").json()
    return status


@pytest.mark.timeout(900)
def test_sighup_gives_every_process_kafka_one_at_a_time(tmp_path: Path, bootstrap: str) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env_file = tmp_path / "cluster.env"
    env_file.write_text("# HEADRACE_KAFKA_URL comes later\n")
    with shared_env() as env:
        cluster = ClusterUp(tmp_path, env, "--env-file", str(env_file))
        names = [
            "api",
            "coordinator-1",
            "coordinator-2",
            "worker-1",
            "worker-2",
            "relay",
            "projector",
        ]
        try:
            cluster.wait_api()
            with httpx.Client(base_url=cluster.url, timeout=30) as client:
                assert client.post("/v1/workflows", content=SPEC).status_code == 201
                move = {"from": "phase-1", "why": "dual-write", "who": "test"}
                refused = client.post("/v1/migration/advance", json=move)
                assert refused.status_code == 409 and "no Kafka" in refused.text, refused.text
                load = Load(cluster.url, marks)
                load.start()

                # a bad file changes nothing
                env_file.write_text("HEADRACE_KAFKA_PARTITIONS=zero\n")
                cluster.proc.send_signal(signal.SIGHUP)
                bad = cluster.wait_for(r"^SIGHUP: .*; nothing restarted$")
                assert "HEADRACE_KAFKA_PARTITIONS" in bad.string, bad.string
                assert not [line for line in cluster.cluster_lines() if "restarting" in line]

                env_file.write_text(
                    f"HEADRACE_KAFKA_URL=kafka://{bootstrap}\nHEADRACE_KAFKA_PARTITIONS=4\n"
                )
                old = {name: cluster.pid(name) for name in names}
                mark = len(cluster.cluster_lines())
                cluster.proc.send_signal(signal.SIGHUP)
                cluster.wait_for(r"^rolling restart done$", after=mark)
                lines = cluster.cluster_lines()[mark:]
                assert "HEADRACE_KAFKA_PARTITIONS, HEADRACE_KAFKA_URL" in lines[0], lines
                steps = [
                    line for line in lines if re.match(r"(restarting|started) |\S+ is ready", line)
                ]
                expected = []
                for name in names:  # one at a time, each ready before the next is stopped
                    new = cluster.pid(name)
                    assert new != old[name], name
                    expected += [
                        f"restarting {name} (pid {old[name]})",
                        f"started {name} (pid {new})",
                        f"{name} is ready (pid {new})",
                    ]
                assert steps[: len(expected)] == expected, lines
                added = {(n, cluster.pid(n)) for n in ("monitor", "shadow")}  # then these two
                assert set(steps[len(expected) :]) == {
                    *(f"started {name} (pid {pid})" for name, pid in added),
                    *(f"{name} is ready (pid {pid})" for name, pid in added),
                }, lines

                moved = client.post("/v1/migration/advance", json=move)  # the API has Kafka now
                assert moved.status_code == 200, moved.text
                assert moved.json()["to"] == "dual-write"
                began = len(load.run_ids)
                deadline = time.monotonic() + DEADLINE_S
                while len(load.run_ids) < began + 10:  # runs copied to Kafka by every process
                    assert load.is_alive() and time.monotonic() < deadline, cluster.log()
                    time.sleep(0.1)
                run_ids = load.stop()
                wait_runs(client, run_ids, cluster)
                checks: dict[str, Any] = {}
                while checks.get("shadow_missing") is None:  # the shadow compared copies
                    checks = {c["name"]: c["ok"] for c in migration(client)["checks"]}
                    assert time.monotonic() < deadline + DEADLINE_S, checks
                    time.sleep(0.5)
                time.sleep(12)  # past the shadow's grace (10 s): a missing copy is counted
                checks = {c["name"]: c["ok"] for c in migration(client)["checks"]}
            print(f"run starts refused while the API restarted: {load.refused}")
            asyncio.run(check_runs(env["HEADRACE_DATABASE_URL"], run_ids, {"count": 3}))
        finally:
            code = cluster.stop()
        assert code == 0, cluster.log()
        assert checks["kafka_write_success_rate"] is True, checks
        assert checks["shadow_missing"] is True and checks["shadow_mismatched"] is True, checks
