"""A process that reloads a run (another started it, or its cache lost it) reads what its
decisions touch: the run's top-level nodes and the map children its commands are about, not
every open child of a wide map; a command that may end the run reads them all first, so its
decision is the whole run's. SQLite store, in-memory bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headrace.bus import MemoryBus
from headrace.bus.topics import CANCELS
from headrace.engine import Cancel, Complete, child_id
from headrace.events import decode_cancel
from headrace.runtime.driver import Driver
from headrace.runtime.hub import Hub
from headrace.runtime.metrics import Metrics
from headrace.spec import parse_workflow, plan_of
from headrace.store.sqlite import SqliteStore

WIDTH = 500
WIDE = """
name: wide
inputs: {xs: {type: array}}
nodes:
  each: {map: "${{ inputs.xs }}", task: m.f}
  after: {task: m.g, needs: [each]}
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "reload.db"))
    await s.open()
    yield s
    await s.close()


def done(i: int) -> tuple[str, Complete]:
    return (child_id("each", i), Complete(child_id("each", i), 1, 5, 6, output=i))


async def test_a_reload_reads_the_children_its_commands_touch_then_all_to_end_the_run(
    store: SqliteStore,
) -> None:
    ir = parse_workflow(WIDE)
    await store.put_workflow(ir, WIDE, 1)
    api = Driver(store, MemoryBus(), Hub(), Metrics())
    run_id = (await api.start_run(plan_of(ir), {"xs": list(range(WIDTH))}, {}))[0].run_id
    await api.drain()
    bus = MemoryBus()
    await bus.consume([CANCELS], "look", "c", 1, 0)
    coordinator = Driver(store, bus, Hub(), Metrics())  # another process: nothing cached
    applied = await coordinator.apply([(run_id, done(i)[1]) for i in (3, 7)])
    assert [len(a.decision.events) for _, a in applied] == [2, 2]  # started, completed
    state = coordinator.cache[run_id]
    assert state.partial and set(state.nodes) == {"each", "after", "each[3]", "each[7]"}
    await coordinator.apply([(run_id, done(11)[1])])  # a child not yet read: read alone
    assert len(coordinator.cache[run_id].nodes) == 5
    # a cancel ends the run: every open child is read first, and cancelled
    ((_, cancelled),) = await coordinator.apply([(run_id, Cancel(at_ms=9))])
    assert len(cancelled.decision.cancels) == WIDTH - 3
    sent = await bus.consume([CANCELS], "look", "c", 1_000, 0)
    assert len({decode_cancel(d.message.payload).node_id for d in sent}) == WIDTH - 3
    assert (await store.get_run_record(run_id)).status == "cancelled"
