"""A run's bus pin (the Redis → Kafka migration) is chosen by the driver when the run starts,
from the flags the process applies, committed with the run, and stamped on every message of
the run (`hr-pin`), which is all the migrating bus reads. A SQLite store and the in-memory
bus: the pin is the driver's and the store's affair, not a bus's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headrace.bus import MemoryBus
from headrace.bus.headers import KAFKA, PIN, REDIS
from headrace.bus.redis import RedisBus
from headrace.bus.topics import CANCELS, JOB_LANES
from headrace.engine import Cancel
from headrace.runtime.driver import Driver
from headrace.runtime.hub import Hub
from headrace.runtime.metrics import Metrics
from headrace.runtime.pins import RunPins, in_kafka_share
from headrace.runtime.relay import Relay, this_process
from headrace.spec import parse_workflow, plan_of
from headrace.store.sqlite import SqliteStore

SPEC = "name: w\nnodes:\n  a: {task: m.f}\n"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "pins.db"))
    await s.open()
    yield s
    await s.close()


def driver(store: SqliteStore, bus: MemoryBus, flags: dict[str, bool | int]) -> Driver:
    """A process's driver, its pins following the live `flags`."""
    return Driver(store, bus, Hub(), Metrics(), pins=RunPins(store, flags))


async def pins_on_the_bus(bus: MemoryBus, topics: list[str]) -> dict[str, set[str]]:
    """The `hr-pin` headers of the messages waiting on `topics`, by run."""
    out: dict[str, set[str]] = {}
    for d in await bus.consume(topics, "look", "c", 1_000, 0):
        out.setdefault(d.message.key, set()).add(d.message.headers.get(PIN, "none"))
    return out


async def test_a_run_is_pinned_at_start_and_keeps_its_pin(store: SqliteStore) -> None:
    ir = parse_workflow(SPEC)
    await store.put_workflow(ir, SPEC, 1)
    plan = plan_of(ir)
    bus = MemoryBus()
    await bus.consume([*JOB_LANES, CANCELS], "look", "c", 1, 0)  # the group sees all from now
    flags: dict[str, bool | int] = {"ENABLE_KAFKA": True, "KAFKA_TRAFFIC_PERCENT": 50}
    api = driver(store, bus, flags)
    ids = [(await api.start_run(plan, {}, {}))[0].run_id for _ in range(40)]
    await api.drain()
    expected = {r: KAFKA if in_kafka_share(r, 50) else REDIS for r in ids}
    assert {KAFKA, REDIS} == set(expected.values())
    assert await store.pins(ids) == expected  # committed with the run
    assert await pins_on_the_bus(bus, list(JOB_LANES)) == {r: {p} for r, p in expected.items()}

    # a change of the share moves new runs only; another process reads the pins it lacks
    flags["KAFKA_TRAFFIC_PERCENT"] = 0
    coordinator = driver(store, bus, dict(flags))
    await coordinator.apply([(r, Cancel(at_ms=5)) for r in ids])
    assert await pins_on_the_bus(bus, [CANCELS]) == {r: {p} for r, p in expected.items()}


async def test_a_rollback_re_pins_and_the_jobs_republished_carry_the_new_pin(
    store: SqliteStore,
) -> None:
    ir = parse_workflow(SPEC)
    await store.put_workflow(ir, SPEC, 1)
    bus = MemoryBus()
    await bus.consume(list(JOB_LANES), "look", "c", 1, 0)
    flags: dict[str, bool | int] = {"ENABLE_KAFKA": True, "KAFKA_TRAFFIC_PERCENT": 100}
    d = driver(store, bus, flags)
    ids = [(await d.start_run(plan_of(ir), {}, {}))[0].run_id for _ in range(3)]
    await d.drain()
    assert await pins_on_the_bus(bus, list(JOB_LANES)) == {r: {KAFKA} for r in ids}
    flags["ENABLE_KAFKA"] = False  # the rollback: Kafka off, then its runs re-pinned
    assert sorted(await store.repin(KAFKA, REDIS, 10)) == sorted(ids)
    assert await d.republish_in_flight(ids) == 3
    assert await pins_on_the_bus(bus, list(JOB_LANES)) == {r: {REDIS} for r in ids}


async def test_without_the_migrating_bus_nothing_is_pinned(store: SqliteStore) -> None:
    ir = parse_workflow(SPEC)
    await store.put_workflow(ir, SPEC, 1)
    bus = MemoryBus()
    await bus.consume(list(JOB_LANES), "look", "c", 1, 0)
    plain = Driver(store, bus, Hub(), Metrics())
    run_id = (await plain.start_run(plan_of(ir), {}, {}))[0].run_id
    await plain.drain()
    assert await store.pins([run_id]) == {}
    assert await pins_on_the_bus(bus, list(JOB_LANES)) == {run_id: {"none"}}


async def test_the_relay_sends_an_unpublished_start_with_its_pin(store: SqliteStore) -> None:
    """The worst moment: the run is committed, its jobs never reached the bus (here the bus
    refuses the connection; a process SIGKILLed after its commit leaves the same rows). The
    pin went into the outbox rows with the jobs, so the relay of another process routes
    them as the first publish would have."""
    ir = parse_workflow(SPEC)
    await store.put_workflow(ir, SPEC, 1)
    down = RedisBus("redis://127.0.0.1:1/0")  # nothing listens there
    holder = this_process("api")
    await store.beat(holder, 0)  # its lease has lapsed: its rows are any relay's
    flags: dict[str, bool | int] = {"ENABLE_KAFKA": True, "KAFKA_TRAFFIC_PERCENT": 100}
    api = Driver(store, down, Hub(), Metrics(), holder=holder.id, pins=RunPins(store, flags))
    run_id = (await api.start_run(plan_of(ir), {}, {}))[0].run_id
    await api.drain()
    await down.close()
    bus = MemoryBus()
    await bus.consume(list(JOB_LANES), "look", "c", 1, 0)
    relay = Relay(store, bus, api.republish_in_flight, this_process("relay"))
    assert await relay.sweep() == 1
    assert await pins_on_the_bus(bus, list(JOB_LANES)) == {run_id: {KAFKA}}
