"""Leases on jobs: a worker that heartbeats keeps its long job; one that stops renewing
(as a dead worker does) has the job redelivered once the lease expires. A job taken from the
bus is the bus's lease; a local job (handed over in the process) is the process's own while
it beats (its lapse, when the process dies, is test_cluster.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest
from conftest import make_settings

from headrace.services.runtime import Embedded, Runtime
from headrace.spec import parse_workflow, plan_of
from headrace.testing import tasks


async def run_long_job(
    tmp_path: Path, heartbeat_s: float, local_jobs: bool, second_worker: bool = False
) -> int:
    """How many times the job ran. With `second_worker`, another worker (on the same bus)
    joins once the job runs in the first: a redelivered job goes to it (the first worker
    never runs a second copy of an attempt it runs)."""
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
    settings = make_settings(
        tmp_path,
        lease_s=0.4,
        heartbeat_s=heartbeat_s,
        local_jobs=local_jobs,
        worker_concurrency=1 if second_worker else 256,  # busy: only the other one reads
    )
    async with Embedded(settings) as rt:
        ir = parse_workflow(spec)
        await rt.register(ir, "")
        run_id = await rt.start_run(plan_of(ir), {})
        async with contextlib.AsyncExitStack() as stack:
            if second_worker:
                while not tasks.calls(key):
                    await asyncio.sleep(0.01)
                more = make_settings(tmp_path, lease_s=0.4, heartbeat_s=0.1)
                await stack.enter_async_context(Runtime(more, ("worker",), bus=rt.bus))
            record = await rt.wait(run_id, timeout_s=60)
        assert record.status == "completed", record
    return tasks.calls(key)


LOCAL = pytest.mark.parametrize("local_jobs", [True, False], ids=["local", "bus"])


@LOCAL
async def test_heartbeats_keep_a_long_job_on_its_worker(tmp_path: Path, local_jobs: bool) -> None:
    assert await run_long_job(tmp_path, heartbeat_s=0.1, local_jobs=local_jobs) == 1


async def test_a_job_whose_lease_lapses_is_redelivered(tmp_path: Path) -> None:
    runs = await run_long_job(tmp_path, heartbeat_s=100, local_jobs=False, second_worker=True)
    assert runs >= 2
