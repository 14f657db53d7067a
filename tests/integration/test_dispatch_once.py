"""A job whose attempt has ended is never dispatched again: not by a relay (it sends only rows
of dead processes, and of those only jobs whose attempt is still open), not because a process
left rows behind on a graceful exit (it flushes what it owes before it stops), and not when a
bus delivers it late (the worker asks the store before it runs a job)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from conftest import make_settings

from headrace.bus.topics import jobs_topic
from headrace.events import Job, Message, encode
from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of
from headrace.testing import tasks
from headrace.testing.cluster import ProcessCluster
from headrace.testing.servers import free_port
from headrace.testing.services import postgres_database, redis_prefix

pytestmark = pytest.mark.integration

HEADRACE = str(Path(sys.executable).parent / "headrace")
TIMEOUT_S = 60


def marked(name: str, marks: Path, seconds: float = 0, **nodes: str) -> str:
    """A workflow of two chained nodes, each leaving a mark per execution."""
    body = "".join(
        f"  {node}: {{task: headrace.testing.tasks.marked_sleep{needs}, "
        f'with: {{marks: "{marks}", name: "{label}", seconds: {seconds}}}}}\n'
        for node, label, needs in (
            ("a", nodes.get("a", f"{name}-a"), ""),
            ("b", nodes.get("b", f"{name}-b"), ", needs: [a]"),
        )
    )
    return f"name: {name}\nversion: 1\nnodes:\n{body}"


def executions(marks: Path, label: str) -> int:
    return len(list(marks.glob(f"{label}.*")))


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [HEADRACE, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def outbox_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def test_a_finished_runs_jobs_never_run_again_in_the_next_headrace_run(
    tmp_path: Path, marks: Path
) -> None:
    # Two `headrace run` on the default database, one after the other: the second must not
    # find the first one's jobs to send again.
    (tmp_path / "side.yaml").write_text(marked("side", marks))
    (tmp_path / "other.yaml").write_text(marked("other", marks))
    tasks_ = ("--tasks", "headrace.testing.tasks")
    cli(tmp_path, "run", "side.yaml", *tasks_)
    assert outbox_rows(tmp_path / ".headrace" / "headrace.db") == 0
    said = cli(tmp_path, "run", "other.yaml", *tasks_)
    assert "republished" not in said, said
    for label in ("side-a", "side-b", "other-a", "other-b"):
        assert executions(marks, label) == 1, sorted(p.name for p in marks.iterdir())


class Dev:
    def __init__(self, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"dev-{self.port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [HEADRACE, "dev", "--port", str(self.port), "--tasks", "headrace.testing.tasks"],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def start_run(self, spec: str) -> str:
        r = httpx.post(f"{self.url}/v1/workflows", content=spec, timeout=10)
        assert r.status_code in (200, 201), r.text
        tag = r.json()["tag"]
        r = httpx.post(f"{self.url}/v1/runs", json={"workflow_tag": tag, "inputs": {}}, timeout=10)
        assert r.status_code == 201, r.text
        return str(r.json()["run_id"])

    def wait(self, run_id: str) -> str:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            status = httpx.get(f"{self.url}/v1/runs/{run_id}", timeout=10).json()["status"]
            if status in ("completed", "failed", "cancelled"):
                return str(status)
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.02)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TIMEOUT_S)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_headrace_run_beside_headrace_dev_runs_only_its_own_jobs(
    tmp_path: Path, marks: Path, dev: Dev
) -> None:
    # dev has a run in flight (5 s jobs) when `headrace run` starts on the same database:
    # neither process runs the other's jobs, finished or not.
    long_run = dev.start_run(marked("long", marks, seconds=5))
    deadline = time.monotonic() + TIMEOUT_S
    while not executions(marks, "long-a"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (tmp_path / "other.yaml").write_text(marked("other", marks, seconds=1))
    said = cli(tmp_path, "run", "other.yaml", "--tasks", "headrace.testing.tasks")
    assert "republished" not in said, said
    assert dev.wait(long_run) == "completed"
    time.sleep(2.5)  # dev's relay sweeps each second: it finds nothing of `headrace run`'s
    for label in ("long-a", "long-b", "other-a", "other-b"):
        assert executions(marks, label) == 1, sorted(p.name for p in marks.iterdir())
    assert "republished" not in dev.log.read_text()


def test_serve_all_stopped_in_the_batch_window_leaves_no_outbox_row(
    tmp_path: Path, marks: Path
) -> None:
    # Postgres + Redis, jobs through the bus: the rows of published jobs are deleted in
    # batches, half a second after the first; a SIGTERM within that window deletes them.
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        cluster = ProcessCluster(tmp_path, db_url, redis_url, prefix)
        try:
            cluster.start("all-1", "all", "--port", str(cluster.port), HEADRACE_LOCAL_JOBS="false")
            cluster.wait_healthy()
            with httpx.Client(base_url=cluster.url, timeout=10) as client:
                spec = marked("quick", marks)
                assert client.post("/v1/workflows", content=spec).status_code == 201
                run = client.post("/v1/runs", json={"workflow_tag": "quick", "inputs": {}})
                url = f"/v1/runs/{run.json()['run_id']}"
                deadline = time.monotonic() + TIMEOUT_S
                while client.get(url).json()["status"] != "completed":
                    assert time.monotonic() < deadline, cluster.logs()
                    time.sleep(0.01)
            cluster.procs["all-1"].send_signal(signal.SIGTERM)
            assert cluster.procs["all-1"].wait(TIMEOUT_S) == 0, cluster.logs()
        finally:
            cluster.down()
        assert asyncio.run(_count(db_url, "SELECT count(*) FROM outbox")) == 0
        assert asyncio.run(_count(db_url, "SELECT count(*) FROM processes")) == 0


async def _count(db_url: str, sql: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_a_job_delivered_after_its_attempt_ended_is_not_run(tmp_path: Path) -> None:
    key = uuid.uuid4().hex
    spec = {
        "name": "counted",
        "nodes": {
            "a": {
                "task": "headrace.testing.tasks.counted_sleep",
                "with": {"key": key, "seconds": 0},
            }
        },
    }
    async with Embedded(make_settings(tmp_path, local_jobs=False)) as rt:
        ir = parse_workflow(spec)
        await rt.register(ir, "")
        plan = plan_of(ir)
        done = await rt.start_run(plan, {})
        assert (await rt.wait(done, timeout_s=TIMEOUT_S)).status == "completed"
        assert tasks.calls(key) == 1
        late = Job(
            run_id=done,
            node_id="a",
            attempt=1,
            kind="task",
            priority="normal",
            timeout_ms=10_000,
            scheduled_at_ms=0,
            idempotency_key=f"{done}/a",
            args={"key": key, "seconds": 0},
            task="headrace.testing.tasks.counted_sleep",
        )
        await rt.bus.publish([Message(jobs_topic("normal"), done, encode(late))])
        after = await rt.start_run(plan, {})  # its job comes after the late one on the lane
        assert (await rt.wait(after, timeout_s=TIMEOUT_S)).status == "completed"
        assert tasks.calls(key) == 2  # the new run's, not the late copy


def test_rows_of_a_live_process_are_never_republished_however_old(
    tmp_path: Path, marks: Path
) -> None:
    # The process that commits and publishes is frozen (SIGSTOP) right after accepting runs,
    # with published rows not yet deleted, for longer than the 5 s the relay used to wait
    # but within its lease: it is slow, not dead. The relay of another process must leave
    # its rows alone, however old they get (a huge fan-out's commit took 5.2 s once).
    spec = marked("frozen", marks, 0.2, a="${{ inputs.n }}-a", b="${{ inputs.n }}-b")
    spec = spec.replace("nodes:", "inputs: {n: {type: string}}\nnodes:")
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        cluster = ProcessCluster(tmp_path, db_url, redis_url, prefix)
        try:
            front = cluster.start(
                "front", "api", "coordinator", "--port", str(cluster.port), HEADRACE_LEASE_S="30"
            )
            cluster.start("worker-1", "worker")
            cluster.start("relay", "relay")
            cluster.wait_healthy()
            with httpx.Client(base_url=cluster.url, timeout=30) as client:
                assert client.post("/v1/workflows", content=spec).status_code == 201
                run_ids = [
                    client.post(
                        "/v1/runs", json={"workflow_tag": "frozen", "inputs": {"n": f"r{i}"}}
                    ).json()["run_id"]
                    for i in range(20)
                ]
                os.kill(front.pid, signal.SIGSTOP)
                time.sleep(7)
                os.kill(front.pid, signal.SIGCONT)
                deadline = time.monotonic() + TIMEOUT_S
                for run_id in run_ids:
                    while client.get(f"/v1/runs/{run_id}").json()["status"] != "completed":
                        assert time.monotonic() < deadline, cluster.logs()
                        time.sleep(0.05)
        finally:
            cluster.down()
    assert "republished" not in cluster.log("relay"), cluster.log("relay")
    for i in range(20):
        for node in "ab":
            assert executions(marks, f"r{i}-{node}") == 1, sorted(p.name for p in marks.iterdir())
