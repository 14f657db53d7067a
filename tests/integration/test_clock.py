"""One clock for a process's runtime and store, injected: with a fake one, a run's times are
the clock's, and a timer an hour away fires once the clock is moved past it (no test waits
an hour, and none depends on how fast the machine is)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_settings

from headrace.clock import FakeClock
from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")

WAITS = """
name: waits
nodes:
  approve: {wait: {signal: approval, timeout: 1h}}
"""
HOUR_MS = 3_600_000
CEILING_S = 30.0


async def test_a_fake_clock_stamps_the_run_and_fires_its_timer_when_moved(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    began = clock.now_ms()
    async with Embedded(make_settings(tmp_path), clock=clock) as rt:
        ir = parse_workflow(WAITS)
        await rt.register(ir, WAITS)
        run_id = await rt.start_run(plan_of(ir), {})
        record = await rt.store.get_run_record(run_id)
        assert (record.status, record.created_at_ms) == ("running", began)
        clock.advance(HOUR_MS - 1)  # not yet due
        with pytest.raises(TimeoutError, match="still running"):  # the loop looked again
            await rt.wait(run_id, timeout_s=1.5)
        clock.advance(1)
        ended = await rt.wait(run_id, timeout_s=CEILING_S)  # the timers loop looks each second
    assert ended.status == "failed"
    assert ended.error is not None and ended.error.type == "timeout"
    assert ended.ended_at_ms == began + HOUR_MS
