"""The migration's steps, checklist, moves and monitor, on a SQLite store (the buses are
not involved: the figures are written as the processes would write them)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headrace.bus import Delivery
from headrace.bus.headers import CID, COPIES, MID
from headrace.clock import SYSTEM
from headrace.engine import Start, decide, new_run
from headrace.errors import Conflict, InputError
from headrace.events import Message
from headrace.flags import FlagWatcher, initial
from headrace.migration.monitor import Monitor
from headrace.migration.shadow import Shadow
from headrace.migration.slots import (
    ACTED,
    BUS_WIDTH,
    FAILED,
    HANDED,
    LATENCY_BUCKETS_MS,
    MAX_AGE_MS,
    ROUTED,
    SENT,
    window,
)
from headrace.migration.steps import STEPS, Migration, Thresholds, checks, current_step
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
            await self.store.set_flag(name, value, "test", "setup", SYSTEM.now_ms())
        await self.flags.refresh()

    async def running_runs(self, n: int, pin: str | None = None) -> list[str]:
        """`n` runs started (pinned to `pin`, if given) and not ended."""
        ir = parse_workflow(SPEC)
        await self.store.put_workflow(ir, SPEC, 1)
        plan = plan_of(ir)
        ids = []
        for _ in range(n):
            state = new_run(str(uuid.uuid4()), plan, created_at_ms=1)
            d = decide(state, Start(at_ms=1, inputs={}))
            t = Transition(state, d.events, [], d.timers, new=True, pin=pin)
            await self.store.commit([t])
            ids.append(state.run_id)
        return ids

    async def report(self, process: str, **buses: dict[int, list[int]]) -> None:
        """What `process` reports: for each bus, its slots by second."""
        figures = {"buses": {bus: {"slots": slots} for bus, slots in buses.items()}}
        await self.store.put_figures(process, figures, SYSTEM.now_ms())

    async def report_shadow(self, process: str, slots: dict[int, list[int]]) -> None:
        await self.store.put_figures(process, {"shadow": {"slots": slots}}, SYSTEM.now_ms())


def slot(
    sent: int = 0,
    failed: int = 0,
    routed: int = 0,
    acted: int = 0,
    latency_ms: int = 0,
    handed: int = 0,
    age_ms: int = 0,
) -> list[int]:
    """A bus's slot: its counters, and `acted - handed` messages at `latency_ms`."""
    out = [0] * BUS_WIDTH
    out[SENT], out[FAILED], out[ROUTED], out[ACTED], out[HANDED] = (
        sent,
        failed,
        routed,
        acted,
        handed,
    )
    out[MAX_AGE_MS] = age_ms or latency_ms
    if acted - handed:
        out[6 + LATENCY_BUCKETS_MS.index(latency_ms)] = acted - handed
    return out  # fmt: skip


def ago(seconds: int) -> int:
    return int(time.time()) - seconds


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


async def test_each_advance_records_the_redis_baseline_with_when_and_where(rig: Rig) -> None:
    await rig.go_to("dual-write")
    await rig.report("w1", redis={ago(5): slot(acted=150, latency_ms=5)})
    await rig.migration.advance("ann", "canary")  # 150 messages: too few for a p95
    assert await rig.migration.baseline() is None
    await rig.report("w1", redis={ago(5): slot(acted=300, latency_ms=5)})
    await rig.migration.advance("ann", "half", force=True)
    baseline = await rig.migration.baseline()
    assert baseline is not None
    assert (baseline["p95_ms"], baseline["samples"], baseline["step"]) == (5.0, 300, "kafka-50")
    assert abs(baseline["at_ms"] - SYSTEM.now_ms()) < 60_000
    status = await rig.migration.status()
    assert (status["step"], status["flags"]["KAFKA_TRAFFIC_PERCENT"]) == ("kafka-50", 50)
    assert (status["baseline"], status["window_s"], status["read_grace_s"]) == (
        baseline,
        120.0,
        15.0,
    )


async def test_a_failing_check_refuses_the_advance_unless_forced(rig: Rig) -> None:
    await rig.go_to("dual-write")
    await rig.report_shadow("shadow", {ago(3): [10, 9, 0, 1]})
    with pytest.raises(Conflict, match="shadow_mismatched"):
        await rig.migration.advance("ann", "go")
    assert current_step(rig.flags.values) == 1  # nothing changed
    await rig.migration.advance("ann", "go anyway", force=True)
    assert current_step(rig.flags.values) == 2


async def test_a_bad_minute_long_past_no_longer_fails_a_check(rig: Rig) -> None:
    """The checklist judges its window (120 s), not the counters since each process
    started: a mismatch and Kafka errors 5 minutes ago block nothing now."""
    await rig.go_to("dual-write")
    await rig.report_shadow("shadow", {ago(300): [10, 9, 0, 1], ago(3): [50, 50, 0, 0]})
    await rig.report("api", kafka={ago(300): slot(sent=100, failed=100), ago(3): slot(sent=100)})
    status = {c["name"]: c for c in (await rig.migration.status())["checks"]}
    assert status["shadow_mismatched"]["ok"] is True
    assert status["kafka_error_rate"]["value"] == 0.0
    assert status["kafka_error_rate"]["detail"].startswith("0 of 100 writes to Kafka failed")
    await rig.migration.advance("ann", "go")  # no force needed


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
    on_kafka, on_redis = await rig.running_runs(3, "kafka"), await rig.running_runs(2, "redis")
    moved = await rig.migration.rollback("ann", "slow", to="dual-write")
    assert (moved["from"], moved["to"], moved["repinned_runs"]) == ("kafka-50", "dual-write", 3)
    assert sorted(rig.republished) == sorted(on_kafka)
    assert set((await rig.store.pins(on_kafka)).values()) == {"redis"}
    assert set((await rig.store.pins(on_redis)).values()) == {"redis"}
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
    on_kafka = await rig.running_runs(3, "kafka")
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
    assert await monitor.tick() is None  # the step's figures are judged from now on
    monitor.since_s -= 2
    await rig.report("api", kafka={ago(0): slot(sent=100)}, redis={ago(0): slot(sent=100)})
    assert await monitor.tick() is None
    await rig.report("api", kafka={ago(0): slot(sent=150, failed=90)})
    report = await monitor.tick()
    assert report is not None and report["to"] == "dual-write"
    assert [c["name"] for c in report["fired"]] == ["kafka_error_rate"]
    assert rig.flags.values["ENABLE_KAFKA"] is False
    change = (await rig.store.flag_history("ENABLE_KAFKA", 1))[0]
    assert change.who == "monitor" and "kafka_error_rate=0.6" in change.why
    assert (await rig.store.note("last_rollback"))["to"] == "dual-write"
    assert await monitor.tick() is None  # the new step is judged on its own figures


async def test_one_rollback_per_fault_and_a_cascade_only_if_it_persists(rig: Rig) -> None:
    await rig.go_to("kafka-50")
    monitor = Monitor(rig.migration, window_s=60)
    await monitor.tick()
    monitor.since_s -= 2  # the step has been judged for a while
    await rig.report("w", kafka={ago(1): slot(sent=100, failed=50)})
    assert (await monitor.tick() or {}).get("to") == "dual-write"
    for _ in range(3):  # the figures that fired it are behind the new step's start
        assert await monitor.tick() is None
    monitor.since_s -= 5
    await rig.report(
        "w", kafka={ago(1): slot(sent=100, failed=50), ago(0): slot(sent=80, failed=80)}
    )
    report = await monitor.tick()  # the copies still fail after the step back: phase-1
    assert report is not None and (report["from"], report["to"]) == ("dual-write", "phase-1")


async def test_the_monitor_judges_latency_against_redis_and_the_floor(rig: Rig) -> None:
    await rig.go_to("kafka-10")
    baseline = {"p95_ms": 20.0, "samples": 500, "at_ms": 1, "step": "kafka-10"}
    await rig.store.put_note("baseline", baseline, 1)
    monitor = Monitor(rig.migration, window_s=60)
    await monitor.tick()
    monitor.since_s -= 10
    # 100 ms: over 2 × the 20 ms baseline but under the 200 ms floor of a loaded host
    await rig.report("w", kafka={ago(2): slot(acted=300, latency_ms=100)})
    assert await monitor.tick() is None
    # 500 ms while Redis, under the same load, takes 500 ms too: not Kafka's fault
    await rig.report("w", kafka={ago(2): slot(acted=300, latency_ms=500)},
                     redis={ago(2): slot(acted=300, latency_ms=500)})  # fmt: skip
    assert await monitor.tick() is None
    await rig.report("w", kafka={ago(2): slot(acted=300, latency_ms=500)},
                     redis={ago(2): slot(acted=300, latency_ms=20)})  # fmt: skip
    report = await monitor.tick()
    assert report is not None
    assert [c["name"] for c in report["fired"]] == ["kafka_p95_latency_ms"]


def test_a_p95_of_a_handful_of_messages_is_not_judged() -> None:
    now = int(time.time())
    slots = {str(now - 1): slot(acted=50, latency_ms=5000)}
    w = window([{"buses": {"kafka": {"slots": slots}}}], now - 60, now + 1, 15)
    (p95,) = [c for c in checks(w, None, Thresholds()) if c.name == "kafka_p95_latency_ms"]
    assert (p95.value, p95.ok) == (None, None)
    assert "50 messages" in p95.detail


def test_messages_in_flight_are_not_unread_until_past_the_grace() -> None:
    now = int(time.time())
    t = Thresholds(read_grace_s=15)
    # 40 s ago: 100 routed, all acted; 5 s ago: 100 routed, 60 acted so far (in flight)
    slots = {str(now - 40): slot(routed=100, acted=100, latency_ms=5),
             str(now - 5): slot(routed=100, acted=60, latency_ms=5)}  # fmt: skip
    w = window([{"buses": {"kafka": {"slots": slots}}}], now - 120, now + 1, 15)
    (read,) = [c for c in checks(w, None, t) if c.name == "kafka_read_success_rate"]
    assert (read.value, read.ok) == (1.0, True)
    slots[str(now - 40)] = slot(routed=100, acted=99, latency_ms=5)  # one never acted on
    w = window([{"buses": {"kafka": {"slots": slots}}}], now - 120, now + 1, 15)
    (read,) = [c for c in checks(w, None, t) if c.name == "kafka_read_success_rate"]
    assert (read.value, read.ok) == (0.99, False)
    assert read.detail.startswith("99 of 100 messages routed through Kafka")


def test_an_error_rate_is_a_share_of_the_writes_of_its_seconds() -> None:
    """Failures are counted in the second their writes were sent, however late the broker
    said so: a rate is never above 1 (it reached 1.056 when counted on arrival)."""
    now = int(time.time())
    reports = [
        {"buses": {"kafka": {"slots": {str(now - 11): slot(sent=40, failed=40)}}}},
        {"buses": {"kafka": {"slots": {str(now - 1): slot(sent=10, failed=10)}}}},
    ]
    w = window(reports, now - 10, now + 1, 0)
    (errors,) = [c for c in checks(w, None, Thresholds()) if c.name == "kafka_error_rate"]
    assert errors.value == 1.0 and errors.detail.startswith("10 of 10 writes")


def test_messages_handed_over_by_a_rebalance_are_not_lag() -> None:
    """A SIGKILLed group member's messages wait for the rebalance (seconds): they are acted
    on, but their age is the rebalance's, not Kafka's."""
    now = int(time.time())
    slots = {str(now - 12): slot(acted=300, latency_ms=5, handed=40, age_ms=5),
             str(now - 2): slot(acted=300, latency_ms=10)}  # fmt: skip
    w = window([{"buses": {"kafka": {"slots": slots}}}], now - 60, now + 1, 0)
    found = {c.name: c for c in checks(w, None, Thresholds())}
    assert found["kafka_consumer_lag_s"].ok is True
    assert found["kafka_p95_latency_ms"].ok is True
    assert "40 handed over" in found["kafka_p95_latency_ms"].detail


def test_lag_of_messages_none_taken_is_the_age_of_the_oldest() -> None:
    """A message routed a second ago and not yet taken is not 30 s of lag because the
    window is 30 s long (a step just begun failed its checklist so); one routed 20 s ago
    and still not taken is 20 s of lag."""
    now = int(time.time())
    slots = {str(now - 1): slot(routed=1)}
    w = window([{"buses": {"kafka": {"slots": slots}}}], now - 30, now + 1, 15)
    lag = {c.name: c for c in checks(w, None, Thresholds())}["kafka_consumer_lag_s"]
    assert (lag.value, lag.ok) == (2.0, True)
    slots[str(now - 20)] = slot(routed=3)
    w = window([{"buses": {"kafka": {"slots": slots}}}], now - 30, now + 1, 15)
    lag = {c.name: c for c in checks(w, None, Thresholds())}["kafka_consumer_lag_s"]
    assert (lag.value, lag.ok) == (21.0, False)
    assert lag.detail == "4 messages routed in the last 31 s, none taken; the oldest 21 s ago"


def test_a_killed_process_counts_in_its_window_and_the_read_rate_starts_after_it() -> None:
    """A killed life's report stays (its figures count); the read rate is judged only on
    messages published after its death, since what it did in its last second is lost."""
    now = int(time.time())
    publisher = {
        "at_ms": now * 1000,
        "buses": {
            "kafka": {
                "slots": {str(now - 60): slot(routed=100, sent=100), str(now - 30): slot(routed=50)}
            }
        },
    }
    dead = {
        "at_ms": (now - 50) * 1000,
        "buses": {"kafka": {"slots": {str(now - 60): slot(acted=99, latency_ms=5)}}},
    }  # one acted on, then killed: lost
    alive = {"at_ms": now * 1000, "buses": {"kafka": {"slots": {
        str(now - 30): slot(acted=50, latency_ms=5)}}}}  # fmt: skip
    w = window([publisher, dead, alive], now - 120, now + 1, 15)
    found = {c.name: c for c in checks(w, None, Thresholds())}
    assert found["kafka_read_success_rate"].value == 1.0  # 50 of 50 since the death
    assert found["kafka_write_success_rate"].detail.startswith("100 of 100")
    assert found["kafka_p95_latency_ms"].detail.startswith("149 messages")


def test_a_copy_whose_writer_died_first_is_lost_with_it_not_missing() -> None:
    """A process SIGKILLed with a Kafka copy still in its producer's queue: that copy never
    comes, and the shadow says so (lost with its writer) instead of blaming the bus."""
    shadow = Shadow({}, grace_s=1)
    shadow.live = {"redis", "kafka"}
    for writer in ("dead0001", "live0001"):
        headers = {COPIES: "kafka,redis", MID: f"mid-{writer}", CID: f"{writer}-7"}
        shadow.see("redis", Delivery("t", "1-0", Message("t", "run", b"x", headers)))
    shadow.gone_now = {"dead0001"}
    shadow.expire(time.monotonic() + 5)
    figures = shadow.figures()["shadow"]
    assert (figures["lost_with_writer"], figures["missing"]) == (1, 1)
    assert shadow.problems == [("mid-live0001", "missing: no kafka copy of t for run run")]
