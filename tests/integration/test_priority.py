"""Priority lanes end to end: a `priority: high` node's job is taken before low ones that
waited longer (one worker slot, so the order of the queue is the order of the runs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import make_settings

from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")


def one_node(name: str, priority: str, seconds: float) -> str:
    return f"""
name: {name}
nodes:
  a: {{task: headrace.testing.tasks.sleep, with: {{seconds: {seconds}}}, priority: {priority}}}
"""


async def test_a_high_priority_job_overtakes_waiting_low_ones(tmp_path: Path) -> None:
    async with Embedded(make_settings(tmp_path, worker_concurrency=1)) as rt:
        plans = {}
        for name, priority, seconds in (("blocker", "normal", 0.3), ("low", "low", 0.05)):
            record, _ = await rt.register(parse_workflow(one_node(name, priority, seconds)), "")
            plans[name] = plan_of(record.ir)
        record, _ = await rt.register(parse_workflow(one_node("high", "high", 0.05)), "")
        plans["high"] = plan_of(record.ir)
        blocker = await rt.start_run(plans["blocker"], {})
        await asyncio.sleep(0.1)  # the only slot is taken: what follows waits in the lanes
        lows = [await rt.start_run(plans["low"], {}) for _ in range(3)]
        high = await rt.start_run(plans["high"], {})
        for run_id in [blocker, *lows, high]:
            assert (await rt.wait(run_id, timeout_s=60)).status == "completed"

        async def started_at(run_id: str) -> int:
            _, nodes = await rt.store.get_run(run_id)
            assert nodes[0].started_at_ms is not None
            return nodes[0].started_at_ms

        low_starts = [await started_at(r) for r in lows]
        assert await started_at(high) < min(low_starts), "the high job waited behind low ones"
        assert await started_at(blocker) < min(low_starts)
