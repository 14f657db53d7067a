"""Local jobs: a process that is both coordinator and worker runs the jobs it schedules on its
own worker, without the bus, within the same bounded slots as the jobs it reads from the bus;
their outbox rows go once their results are in. (Crash tests: test_cluster.py, test_leases.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings

from headrace.engine import Cancel
from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of
from headrace.testing import tasks

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")

CHAIN = {
    "name": "chain",
    "nodes": {
        "a": {"task": "headrace.testing.tasks.noop"},
        "b": {"task": "headrace.testing.tasks.noop", "needs": ["a"]},
        "c": {"task": "headrace.testing.tasks.noop", "needs": ["b"]},
    },
}


async def run(rt: Embedded, spec: dict[str, Any]) -> None:
    ir = parse_workflow(spec)
    await rt.register(ir, "")
    run_id = await rt.start_run(plan_of(ir), {})
    assert (await rt.wait(run_id, timeout_s=60)).status == "completed"


def dispatched(rt: Embedded) -> dict[str, int]:
    return {via: n for (via,), n in rt.metrics.jobs_dispatched.counts.items()}


async def outbox_empties(rt: Embedded) -> None:
    deadline = time.monotonic() + 30  # rows are deleted in batches, 0.5 s after the first
    while rt.store.db.execute("SELECT count(*) FROM outbox").fetchone()[0]:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "outbox rows left behind"
        await asyncio.sleep(0.05)


async def test_a_process_runs_the_jobs_it_schedules_itself(tmp_path: Path) -> None:
    async with Embedded(make_settings(tmp_path)) as rt:
        await run(rt, CHAIN)
        assert dispatched(rt) == {"local": 3}
        await outbox_empties(rt)


async def test_local_jobs_off_sends_every_job_through_the_bus(tmp_path: Path) -> None:
    async with Embedded(make_settings(tmp_path, local_jobs=False)) as rt:
        await run(rt, CHAIN)
        assert dispatched(rt) == {"bus": 3}
        await outbox_empties(rt)


async def test_local_and_bus_jobs_share_the_worker_slots(tmp_path: Path) -> None:
    key = uuid.uuid4().hex
    fan = {
        "name": "fan",
        "nodes": {
            "m": {
                "map": "${{ [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] }}",
                "task": "headrace.testing.tasks.crowded_sleep",
                "with": {"key": key, "seconds": 0.05, "i": "${{ item }}"},
            }
        },
    }
    async with Embedded(make_settings(tmp_path, worker_concurrency=3)) as rt:
        await run(rt, fan)
        assert tasks.peak(key) <= 3  # never more at once than the worker's slots
        ways = dispatched(rt)
        assert ways.get("local", 0) > 0 and ways.get("bus", 0) > 0, ways
        assert sum(ways.values()) == 12
        await outbox_empties(rt)


async def test_local_jobs_with_their_results_through_the_bus(tmp_path: Path) -> None:
    async with Embedded(make_settings(tmp_path, local_results=False)) as rt:
        await run(rt, CHAIN)
        assert dispatched(rt) == {"local": 3}
        await outbox_empties(rt)  # each row went once its result was on the bus


async def test_a_cancelled_local_job_leaves_no_outbox_row(tmp_path: Path) -> None:
    long = {
        "name": "long",
        "nodes": {"a": {"task": "headrace.testing.tasks.sleep", "with": {"seconds": 30}}},
    }
    async with Embedded(make_settings(tmp_path, lease_s=60)) as rt:  # no lapsed hold
        ir = parse_workflow(long)
        await rt.register(ir, "")
        run_id = await rt.start_run(plan_of(ir), {})
        deadline = time.monotonic() + 30
        while not rt.worker.running:  # the job runs here
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await rt.driver.apply([(run_id, Cancel(at_ms=rt.clock.now_ms()))])
        assert (await rt.wait(run_id, timeout_s=30)).status == "cancelled"
        while rt.worker.running:  # told to stop through the bus's cancels
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert dispatched(rt) == {"local": 1}
        await outbox_empties(rt)


@pytest.mark.parametrize("local_jobs", [True, False], ids=["local", "bus"])
async def test_a_long_job_is_seen_running_before_it_ends(tmp_path: Path, local_jobs: bool) -> None:
    # A job past the worker's started-notice delay (0.5 s) says so: its node shows running
    # (with its start time) while it runs; a quick job never sends the notice.
    spec = {
        "name": "long",
        "nodes": {"a": {"task": "headrace.testing.tasks.sleep", "with": {"seconds": 2}}},
    }
    async with Embedded(make_settings(tmp_path, local_jobs=local_jobs)) as rt:
        ir = parse_workflow(spec)
        await rt.register(ir, "")
        run_id = await rt.start_run(plan_of(ir), {})
        deadline = time.monotonic() + 30
        while True:
            record, nodes = await rt.store.get_run(run_id)
            assert record.status == "running", "the job ended before it was seen running"
            if nodes[0].status == "running":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert nodes[0].started_at_ms is not None
        assert (await rt.wait(run_id, timeout_s=30)).status == "completed"
