"""The migration's steps, checklist, moves and monitor, on a SQLite store (the buses are
not involved: the figures are written as the processes would write them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from headrace.bus.migrating import LATENCY_BUCKETS_MS
from headrace.engine import Start, decide, new_run
from headrace.errors import Conflict, InputError
from headrace.flags import FlagWatcher, initial
from headrace.migration.figures import now_ms
from headrace.migration.monitor import Monitor
from headrace.migration.steps import STEPS, Migration, current_step
from headrace.spec import parse_workflow, plan_of
from headrace.store import Transition
from headrace.store.sqlite import SqliteStore

SPEC = "name: w\nnodes:\n  a: {task: m.f}\n"


class Rig:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.flags = FlagWatcher(store, initial({}))
        self.republished: list[str] = []
        self.migration = Migration(store, self.flags, self.republish, enabled=True)

    async def republish(self, run_ids: list[str]) -> int:
        self.republished += run_ids
        return len(run_ids)

    async def go_to(self, step: str) -> None:
        for name, value in STEPS[[s.name for s in STEPS].index(step)].flags.items():
            await self.store.set_flag(name, value, "test", "setup", now_ms())
        await self.flags.refresh()

    async def running_runs(self, n: int) -> list[str]:
        ir = parse_workflow(SPEC)
        await self.store.put_workflow(ir, SPEC, 1)
        plan = plan_of(ir)
        ids = []
        for _ in range(n):
            state = new_run(str(uuid.uuid4()), plan, created_at_ms=1)
            d = decide(state, Start(at_ms=1, inputs={}))
            await self.store.commit([Transition(state, d.events, [], d.timers, new=True)])
            ids.append(state.run_id)
        return ids

    async def report(self, process: str, started: int = 1, **buses: dict[str, Any]) -> None:
        figures = {"started_ms": started, "at_ms": now_ms(), "buses": buses}
        await self.store.put_figures(process, figures, now_ms())


def latency(ms: int, n: int) -> list[int]:
    out = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    out[LATENCY_BUCKETS_MS.index(ms)] = n
    return out


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SqliteStore(str(tmp_path / "h.db"))
    await store.open()
    yield Rig(store)
    await store.close()


def test_each_step_is_recognised_from_its_flags() -> None:
    for i, step in enumerate(STEPS):
        assert current_step(step.flags) == i
    assert current_step({**STEPS[3].flags, "KAFKA_TRAFFIC_PERCENT": 37}) is None


async def test_advance_moves_one_step_with_an_audit(rig: Rig) -> None:
    assert (await rig.migration.status())["step"] == "phase-1"
    moved = await rig.migration.advance("ann", "start dual-write")
    assert (moved["from"], moved["to"]) == ("phase-1", "dual-write")
    (change,) = await rig.store.flag_history(None, 10)
    assert (change.name, change.new, change.who, change.why) == (
        "ENABLE_KAFKA_WRITE",
        True,
        "ann",
        "start dual-write",
    )
    assert rig.flags.values["ENABLE_KAFKA_WRITE"] is True


async def test_advance_into_kafka_records_the_redis_baseline(rig: Rig) -> None:
    await rig.go_to("dual-write")
    await rig.report("w1", redis={"acted": 100, "latency": latency(5, 100)})
    await rig.migration.advance("ann", "canary")
    assert await rig.store.note("baseline") == {"p95_ms": 5.0, "bus": "redis"}
    status = await rig.migration.status()
    assert (status["step"], status["flags"]["KAFKA_TRAFFIC_PERCENT"]) == ("kafka-10", 10)


async def test_a_failing_check_refuses_the_advance_unless_forced(rig: Rig) -> None:
    await rig.go_to("dual-write")
    await rig.store.put_figures(
        "shadow", {"shadow": {"compared": 10, "matched": 9, "mismatched": 1}}, now_ms()
    )
    with pytest.raises(Conflict, match="shadow_mismatched"):
        await rig.migration.advance("ann", "go")
    assert current_step(rig.flags.values) == 1  # nothing changed
    await rig.migration.advance("ann", "go anyway", force=True)
    assert current_step(rig.flags.values) == 2


async def test_advance_needs_the_migrating_bus_and_a_known_step(rig: Rig) -> None:
    rig.migration.enabled = False
    with pytest.raises(Conflict, match="HEADRACE_KAFKA_URL"):
        await rig.migration.advance("ann", "go")
    rig.migration.enabled = True
    await rig.store.set_flag("KAFKA_TRAFFIC_PERCENT", 37, "ann", "by hand", 1)
    await rig.flags.refresh()
    with pytest.raises(Conflict, match="match no step"):
        await rig.migration.advance("ann", "go")
    with pytest.raises(InputError, match="say which step"):
        await rig.migration.rollback("ann", "back")
    with pytest.raises(InputError, match="unknown step 'nope'"):
        await rig.migration.rollback("ann", "back", to="nope")


async def test_rollback_re_pins_kafka_runs_and_republishes_their_jobs(rig: Rig) -> None:
    await rig.go_to("kafka-50")
    on_kafka, on_redis = await rig.running_runs(3), await rig.running_runs(2)
    await rig.store.pin_runs(dict.fromkeys(on_kafka, "kafka"), 1)
    await rig.store.pin_runs(dict.fromkeys(on_redis, "redis"), 1)
    moved = await rig.migration.rollback("ann", "slow", to="dual-write")
    assert (moved["from"], moved["to"], moved["repinned_runs"]) == ("kafka-50", "dual-write", 3)
    assert sorted(rig.republished) == sorted(on_kafka)
    assert set((await rig.store.pins(on_kafka)).values()) == {"redis"}
    history = await rig.store.flag_history(None, 2)  # newest first: Kafka off, then 0 %
    assert [(c.name, c.new) for c in history] == [
        ("KAFKA_TRAFFIC_PERCENT", 0),
        ("ENABLE_KAFKA", False),
    ]
    with pytest.raises(Conflict, match="not behind"):
        await rig.migration.rollback("ann", "again", to="kafka-10")


async def test_a_step_change_names_the_step_it_leaves_and_is_refused_elsewhere(
    rig: Rig,
) -> None:
    await rig.go_to("kafka-100")
    with pytest.raises(Conflict, match="at kafka-100, not dual-write"):
        await rig.migration.advance("ann", "canary", expect="dual-write", force=True)
    with pytest.raises(InputError, match="unknown step 'kafka-7'"):
        await rig.migration.rollback("ann", "back", expect="kafka-7")
    assert current_step(rig.flags.values) == 4  # nothing changed
    moved = await rig.migration.advance("ann", "off", expect="kafka-100", force=True)
    assert (moved["from"], moved["to"]) == ("kafka-100", "redis-off")


async def test_two_rollbacks_at_once_move_and_re_pin_once(rig: Rig) -> None:
    """The monitor and an operator both judged kafka-50 and roll back at the same time:
    one wins; the other is refused with the step it is at, and re-pins nothing."""
    await rig.go_to("kafka-50")
    on_kafka = await rig.running_runs(3)
    await rig.store.pin_runs(dict.fromkeys(on_kafka, "kafka"), 1)
    other = Migration(rig.store, FlagWatcher(rig.store, initial({})), rig.republish, enabled=True)
    await other.flags.refresh()
    first = await rig.migration.rollback("monitor", "slow", expect="kafka-50", to="dual-write")
    assert first["repinned_runs"] == 3
    with pytest.raises(Conflict, match="at dual-write, not kafka-50"):
        await other.rollback("ann", "slow too", expect="kafka-50", to="dual-write")
    assert sorted(rig.republished) == sorted(on_kafka)  # once


async def test_the_monitor_rolls_back_when_kafka_errors_and_audits_the_figures(
    rig: Rig,
) -> None:
    await rig.go_to("kafka-50")
    monitor = Monitor(rig.migration, window_s=60)
    await rig.report("api", kafka={"sent": 100, "failed": 0}, redis={"sent": 100})
    assert await monitor.tick() is None
    await rig.report("api", kafka={"sent": 110, "failed": 0}, redis={"sent": 110})
    assert await monitor.tick() is None  # 10 sent, none failed
    await rig.report("api", kafka={"sent": 150, "failed": 30}, redis={"sent": 150})
    report = await monitor.tick()
    assert report is not None and report["to"] == "dual-write"
    assert [c["name"] for c in report["fired"]] == ["kafka_error_rate"]
    assert rig.flags.values["ENABLE_KAFKA"] is False
    change = (await rig.store.flag_history("ENABLE_KAFKA", 1))[0]
    assert change.who == "monitor" and "kafka_error_rate=0.6" in change.why
    assert (await rig.store.note("last_rollback"))["to"] == "dual-write"
    assert await monitor.tick() is None  # a new window: never twice for the same figures


async def test_the_monitor_judges_latency_against_the_baseline_and_lag(rig: Rig) -> None:
    await rig.go_to("kafka-10")
    await rig.store.put_note("baseline", {"p95_ms": 50.0}, 1)
    monitor = Monitor(rig.migration, window_s=60)
    await rig.report("w", kafka={"acted": 0})
    await monitor.tick()
    await rig.report("w", kafka={"acted": 100, "latency": latency(100, 100)})
    assert await monitor.tick() is None  # p95 100 ms: not above 2 × 50
    both = [a + b for a, b in zip(latency(100, 100), latency(500, 100), strict=True)]
    await rig.report("w", kafka={"acted": 200, "latency": both})  # the new 100 took 500 ms
    report = await monitor.tick()
    assert report is not None
    assert [c["name"] for c in report["fired"]] == ["kafka_p95_latency_ms"]


async def test_a_restarted_process_counts_from_its_restart(rig: Rig) -> None:
    await rig.go_to("kafka-10")
    monitor = Monitor(rig.migration, window_s=60)
    await rig.report("api", kafka={"sent": 1000, "failed": 100})
    await monitor.tick()
    await rig.report("api", started=2, kafka={"sent": 50, "failed": 0})  # a new life
    assert await monitor.tick() is None  # its 50 fresh sends are fine
