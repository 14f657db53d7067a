"""Leases on jobs: a worker that heartbeats keeps its long job; one that stops renewing
(as a dead worker does) has the job redelivered once the lease expires. Both for a job
taken from the bus, and for a local job (handed over in the process: its outbox row's hold
is the lease, and the relay sends the job to the bus once it lapses)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import make_settings

from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of
from headrace.testing import tasks


async def run_long_job(tmp_path: Path, heartbeat_s: float, local_jobs: bool) -> int:
    key = uuid.uuid4().hex
    spec = {
        "name": "long",
        "nodes": {
            "a": {
                "task": "headrace.testing.tasks.counted_sleep",
                "with": {"key": key, "seconds": 1.5},
                "timeout": "30s",
            }
        },
    }
    settings = make_settings(tmp_path, lease_s=0.4, heartbeat_s=heartbeat_s, local_jobs=local_jobs)
    async with Embedded(settings) as rt:
        ir = parse_workflow(spec)
        await rt.register(ir, "")
        run_id = await rt.start(plan_of(ir), {})
        record = await rt.wait(run_id, timeout_s=60)
        assert record.status == "completed", record
    return tasks.calls(key)


LOCAL = pytest.mark.parametrize("local_jobs", [True, False], ids=["local", "bus"])


@LOCAL
async def test_heartbeats_keep_a_long_job_on_its_worker(tmp_path: Path, local_jobs: bool) -> None:
    assert await run_long_job(tmp_path, heartbeat_s=0.1, local_jobs=local_jobs) == 1


@LOCAL
async def test_a_job_whose_lease_lapses_is_redelivered(tmp_path: Path, local_jobs: bool) -> None:
    assert await run_long_job(tmp_path, heartbeat_s=100, local_jobs=local_jobs) >= 2
