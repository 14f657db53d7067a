"""Nothing is lost: `headrace dev` SIGKILLed at the worst moments, then restarted on the same
SQLite file, finishes every run exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from headrace.store.sqlite import SqliteStore
from headrace.testing.replay import replay_diff
from headrace.testing.servers import free_port

HEADRACE = str(Path(sys.executable).parent / "headrace")
SPEC = """
name: steady
inputs: {i: {type: integer}}
defaults: {retry: {max_attempts: 5, initial_interval: 10ms, max_interval: 100ms}}
nodes:
  a: {task: headrace.testing.tasks.sleep, with: {seconds: 0.05}}
  fan:
    needs: [a]
    map: "${{ [1, 2, 3, 4] }}"
    task: headrace.testing.tasks.add
    with: {a: "${{ item }}", b: "${{ inputs.i }}"}
  total: {task: headrace.testing.tasks.echo, with: {xs: "${{ nodes.fan.output }}"}}
outputs:
  sums: "${{ nodes.total.output.xs }}"
"""


class Dev:
    """A `headrace dev` process on a fixed port and database."""

    def __init__(self, db: Path, port: int) -> None:
        self.db, self.port = db, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, crash_at: str | None = None) -> None:
        env = {
            **os.environ,
            "HEADRACE_DATABASE_URL": f"sqlite:///{self.db}",
            "HEADRACE_TASKS": "headrace.testing.tasks",
        }
        env.pop("HEADRACE_CRASH_AT", None)
        if crash_at:
            env["HEADRACE_CRASH_AT"] = crash_at
        self.log = self.db.with_suffix(f".{time.monotonic_ns()}.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [HEADRACE, "dev", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"headrace dev did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    d = Dev(tmp_path / "h.db", free_port())
    try:
        yield d
    finally:
        d.stop()


def start_runs(client: httpx.Client, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post(
            "/v1/runs",
            json={"workflow_tag": "steady", "inputs": {"i": i}},
            headers={"Idempotency-Key": f"steady-{i}"},
        )
        assert r.status_code in (200, 201), r.text
        ids.append(r.json()["run_id"])
    return ids


async def check_store(db: Path, run_ids: list[str]) -> None:
    store = SqliteStore(db)
    await store.open()
    try:
        for i, run_id in enumerate(run_ids):
            record, _ = await store.get_run(run_id)
            assert record.status == "completed", (run_id, record.status, record.error)
            assert record.outputs == {"sums": [{"sum": k + i} for k in (1, 2, 3, 4)]}
            assert await replay_diff(store, run_id) == {}
    finally:
        await store.close()


def wait_all(dev: Dev, run_ids: list[str], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=dev.url, timeout=10) as client:
        for run_id in run_ids:
            while client.get(f"/v1/runs/{run_id}").json()["status"] not in (
                "completed",
                "failed",
                "cancelled",
            ):
                assert time.monotonic() < deadline, f"run {run_id} did not end"
                time.sleep(0.05)


@pytest.mark.parametrize("crash_at", ["after_commit:40", "after_execute:25"])
def test_crash_point_then_restart_finishes_every_run_once(dev: Dev, crash_at: str) -> None:
    dev.start(crash_at=crash_at)
    with httpx.Client(base_url=dev.url, timeout=10) as client:
        assert client.post("/v1/workflows", content=SPEC).status_code == 201
        run_ids: list[str] = []
        with contextlib.suppress(httpx.HTTPError):  # the crash can hit while accepting runs
            run_ids = start_runs(client, 30)
    assert dev.proc is not None and dev.proc.wait(30) == -signal.SIGKILL
    dev.start()  # recovery: the relay sends the jobs its dead predecessor held
    with httpx.Client(base_url=dev.url, timeout=10) as client:
        run_ids = start_runs(client, 30)  # same keys: accepted runs are found, none doubled
        assert len(client.get("/v1/runs", params={"limit": 100}).json()["items"]) == 30
    wait_all(dev, run_ids)
    dev.stop()
    asyncio.run(check_store(dev.db, run_ids))


def test_sigkill_from_outside_at_a_random_moment(dev: Dev) -> None:
    dev.start()
    with httpx.Client(base_url=dev.url, timeout=10) as client:
        slow = SPEC.replace("seconds: 0.05", "seconds: 0.8")
        assert client.post("/v1/workflows", content=slow).status_code == 201
        run_ids = start_runs(client, 30)
        time.sleep(random.uniform(0.1, 0.5))  # mid-flight: the first node sleeps 0.8 s
        in_flight = [
            r for r in run_ids if client.get(f"/v1/runs/{r}").json()["status"] == "running"
        ]
    dev.stop()  # SIGKILL
    assert in_flight, "the kill came too late to test anything"
    dev.start()
    wait_all(dev, run_ids)
    dev.stop()
    asyncio.run(check_store(dev.db, run_ids))
