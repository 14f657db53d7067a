"""The migrating bus on the test Redis and the test Kafka broker, steered by flags as the
migration steps do: where each message goes, which copy is acted on, pins and re-routing."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from msgspec.structs import replace

from headrace.bus import Delivery
from headrace.bus.base import CONTENT_TYPE_HEADER, PartlyPublished
from headrace.bus.kafka import KafkaBus
from headrace.bus.migrating import (
    COPIES,
    KAFKA_STALL_S,
    MID,
    PIN,
    VIA,
    MigratingBus,
    in_kafka_share,
    message_id,
)
from headrace.bus.redis import RedisBus
from headrace.bus.topics import JOBS_NORMAL
from headrace.errors import InfraError
from headrace.events import Finished, Job, Message, encode
from headrace.migration.shadow import Shadow
from headrace.runtime.driver import json_message
from headrace.runtime.worker import reply
from headrace.store.sqlite import SqliteStore
from headrace.testing.kafka import Tansu
from headrace.testing.services import redis_prefix

pytestmark = pytest.mark.integration

CEILING_S = 30.0
T = "node.results"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "pins.db"))
    await s.open()
    yield s
    await s.close()


class Rig:
    def __init__(self, bus: MigratingBus, flags: dict[str, bool | int], redis_url: str) -> None:
        self.bus = bus
        self.flags = flags
        self.raw = aioredis.Redis.from_url(redis_url)

    async def redis_length(self) -> int:
        return int(await self.raw.xlen(self.bus.redis.prefix + T))

    async def take(self, n: int, group: str = "g") -> list[Delivery]:
        got: list[Delivery] = []
        deadline = time.monotonic() + CEILING_S
        while len(got) < n:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} arrived"
            batch = await self.bus.consume([T], group, "c", n - len(got), 100)
            await self.bus.ack(group, batch)
            got += batch
        return got

    async def nothing_more(self, seconds: float, group: str = "g") -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert await self.bus.consume([T], group, "c", 10, 100) == []


@pytest.fixture
async def rig(bootstrap: str, store: SqliteStore) -> AsyncIterator[Rig]:
    with redis_prefix() as (url, prefix):
        flags: dict[str, bool | int] = {"ENABLE_REDIS_WRITE": True}
        redis = RedisBus(url, prefix=prefix, visibility_ms=5_000)
        kafka = KafkaBus(bootstrap, prefix=prefix.replace(":", "."), partitions=4)
        r = Rig(MigratingBus(redis, kafka, flags, store), flags, url)
        await r.bus.consume([T], "g", "c", 1, 0)  # join both buses before anything is sent
        yield r
        await r.raw.aclose()
        await r.bus.close()


def runs(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def msgs(run_ids: list[str]) -> list[Message]:
    return [Message(T, r, f"result of {r}".encode()) for r in run_ids]


async def test_phase_1_writes_redis_only(rig: Rig) -> None:
    await rig.bus.publish(msgs(runs(5)))
    assert await rig.redis_length() == 5
    got = await rig.take(5)
    assert {d.message.headers[VIA] for d in got} == {"redis"}
    assert {d.message.headers[COPIES] for d in got} == {"redis"}
    assert rig.bus.figures()["buses"]["kafka"]["sent"] == 0


async def test_dual_write_acts_on_the_redis_copy_once(rig: Rig) -> None:
    rig.flags["ENABLE_KAFKA_WRITE"] = True
    sent = msgs(runs(20))
    await rig.bus.publish(sent)
    got = await rig.take(20)
    assert sorted(d.message.payload for d in got) == sorted(m.payload for m in sent)
    assert all(d.message.headers[COPIES] == "kafka,redis" for d in got)
    assert all(d.message.headers[VIA] == "redis" for d in got)
    await rig.nothing_more(2.0)  # the Kafka copies were read and dropped, not acted on
    figures = rig.bus.figures()["buses"]
    assert figures["kafka"]["sent"] == figures["redis"]["sent"] == 20
    assert figures["kafka"]["failed"] == 0
    assert (figures["redis"]["acted"], figures["kafka"]["acted"]) == (20, 0)


async def test_runs_are_pinned_by_percentage_and_keep_their_pin(
    rig: Rig, store: SqliteStore
) -> None:
    rig.flags |= {"ENABLE_KAFKA_WRITE": True, "ENABLE_KAFKA": True, "KAFKA_TRAFFIC_PERCENT": 50}
    ids = runs(200)
    await rig.bus.publish(msgs(ids))
    pins = await store.pins(ids)
    assert pins == {r: "kafka" if in_kafka_share(r, 50) else "redis" for r in ids}
    assert 70 <= list(pins.values()).count("kafka") <= 130
    got = await rig.take(200)
    for d in got:  # each acted on through the bus of its pin
        assert d.message.headers[VIA] == d.message.headers[PIN] == pins[d.message.key]
        assert d.id.startswith("k|" if pins[d.message.key] == "kafka" else "r|")
    await rig.nothing_more(1.0)
    rig.flags["KAFKA_TRAFFIC_PERCENT"] = 0  # moves new runs only
    await rig.bus.publish(msgs(ids[:50]))
    again = await rig.take(50)
    assert all(d.message.headers[PIN] == pins[d.message.key] for d in again)


async def test_redis_off_moves_every_run_to_kafka_and_rollback_moves_them_back(
    rig: Rig, store: SqliteStore
) -> None:
    ids = runs(10)
    await store.pin_runs(dict.fromkeys(ids, "redis"), 1)
    rig.flags |= {"ENABLE_KAFKA_WRITE": True, "ENABLE_KAFKA": True, "ENABLE_REDIS_WRITE": False}
    before = await rig.redis_length()
    await rig.bus.publish(msgs(ids))
    assert await rig.redis_length() == before  # Redis off: nothing written there
    got = await rig.take(10)
    assert {d.message.headers[VIA] for d in got} == {"kafka"}
    assert {d.message.headers[PIN] for d in got} == {"redis"}  # the pin itself is kept
    rig.flags |= {"ENABLE_KAFKA": False, "ENABLE_REDIS_WRITE": True}  # roll back
    await store.pin_runs(dict.fromkeys(runs(1), "kafka"), 2)
    await rig.bus.publish(msgs(ids))
    back = await rig.take(10)
    assert {d.message.headers[VIA] for d in back} == {"redis"}


async def test_a_failing_kafka_copy_never_fails_a_redis_publish(store: SqliteStore) -> None:
    with redis_prefix() as (url, prefix):
        flags: dict[str, bool | int] = {"ENABLE_KAFKA_WRITE": True}
        dead = KafkaBus("127.0.0.1:1", prefix="x.", timeout_s=1.0)
        bus = MigratingBus(RedisBus(url, prefix=prefix), dead, flags, store)
        try:
            await bus.publish(msgs(runs(3)))
            deadline = time.monotonic() + CEILING_S
            while bus.figures()["buses"]["kafka"]["failed"] < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            got = await bus.redis.consume([T], "g", "c", 10, 1000)
            assert len(got) == 3 and all(MID in d.message.headers for d in got)
        finally:
            await bus.close()


async def test_the_shadow_reports_a_corrupted_and_a_dropped_kafka_copy(rig: Rig) -> None:
    rig.flags["ENABLE_KAFKA_WRITE"] = True
    shadow = Shadow({"redis": rig.bus.redis, "kafka": rig.bus.kafka}, grace_s=2, topics=[T])
    await rig.bus.publish(msgs(runs(1)))
    deadline = time.monotonic() + CEILING_S
    while shadow.matched < 1:  # its groups joined both buses
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    await rig.bus.publish(msgs(runs(4)))
    both = {COPIES: "kafka,redis", VIA: "redis", PIN: "redis"}
    original = Message(T, str(uuid.uuid4()), b"the real payload")
    corrupt_id, dropped_id = message_id(original), "0123456789abcdef01234567"
    await rig.bus.redis.publish([replace(original, headers={**both, MID: corrupt_id})])
    await rig.bus.kafka.publish(
        [replace(original, payload=b"tampered", headers={**both, MID: corrupt_id})]
    )
    await rig.bus.redis.publish([Message(T, "run-x", b"lost", {**both, MID: dropped_id})])
    while shadow.compared < 7:
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    figures = shadow.figures()["shadow"]
    assert sum(slot[0] for slot in figures.pop("slots").values()) == 7  # by the second
    assert figures == {
        "compared": 7,
        "matched": 5,
        "missing": 1,
        "mismatched": 1,
        "lost_with_writer": 0,
        "waiting": 0,
    }
    assert sorted(shadow.problems) == sorted(
        [
            (
                corrupt_id,
                "mismatch: payload b'the real payload' on redis, b'tampered' on kafka; "
                "the kafka copy does not match its content id",
            ),
            (dropped_id, "missing: no kafka copy of node.results for run run-x"),
        ]
    )


async def test_a_republish_after_a_rollback_is_a_pair_of_its_own(
    rig: Rig, store: SqliteStore
) -> None:
    """A rollback republishes a Kafka run's jobs through Redis, with the content of the
    first publish but other routing: the shadow pairs each publish's two copies, so that is
    neither a mismatch nor a missing copy (it reported both before copy ids)."""
    rig.flags.update(ENABLE_KAFKA_WRITE=True)
    shadow = Shadow({"redis": rig.bus.redis, "kafka": rig.bus.kafka}, grace_s=5, topics=[T])
    deadline = time.monotonic() + CEILING_S
    await rig.bus.publish(msgs(runs(1)))
    while shadow.matched < 1:  # its groups joined both buses
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    rig.flags.update(ENABLE_KAFKA=True, KAFKA_TRAFFIC_PERCENT=100)
    sent = msgs(runs(3))
    await rig.bus.publish(sent)
    rig.flags["ENABLE_KAFKA"] = False  # rolled back: the same content again, via Redis
    await rig.bus.publish(sent)
    while shadow.compared < 7:
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    until = time.monotonic() + 6  # past the grace: nothing left waiting, nothing missing
    while time.monotonic() < until:
        await shadow.step(block_ms=100)
    figures = shadow.figures()["shadow"]
    assert (figures["matched"], figures["mismatched"], figures["missing"]) == (7, 0, 0), (
        shadow.problems
    )


async def test_the_format_header_crosses_both_buses_and_the_copies_match(rig: Rig) -> None:
    """Results as a worker sends them say their format (`content-type`): both copies carry
    it, read back as written from Redis (a JSON field) and from Kafka (a record header), so
    the shadow finds them equal; a result of an older version, without it, too."""
    rig.flags["ENABLE_KAFKA_WRITE"] = True
    shadow = Shadow({"redis": rig.bus.redis, "kafka": rig.bus.kafka}, grace_s=5, topics=[T])
    deadline = time.monotonic() + CEILING_S
    await rig.bus.publish(msgs(runs(1)))
    while shadow.matched < 1:  # its groups joined both buses
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    sent = []
    for run_id in runs(3):
        job = Job(run_id=run_id, node_id="a", attempt=1, kind="task", priority="normal",
                  timeout_ms=1000, scheduled_at_ms=0, idempotency_key=f"{run_id}/a")  # fmt: skip
        delivered = Delivery(JOBS_NORMAL, "1-0", json_message(JOBS_NORMAL, run_id, job))
        done = Finished(run_id=run_id, node_id="a", attempt=1, started_at_ms=1, at_ms=2)
        sent.append(reply(delivered, encode(done)))
    await rig.bus.publish(sent)
    got = await rig.take(4)
    assert sorted(d.message.headers.get(CONTENT_TYPE_HEADER, "none") for d in got) == [
        "application/json", "application/json", "application/json", "none"
    ]  # fmt: skip
    while shadow.compared < 4:
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    figures = shadow.figures()["shadow"]
    assert (figures["matched"], figures["mismatched"], figures["missing"]) == (4, 0, 0), (
        shadow.problems
    )


async def test_a_frozen_broker_fails_its_own_runs_fast_and_never_redis_pinned_ones(
    tmp_path: Path, store: SqliteStore
) -> None:
    """SIGSTOP the broker at 50 %: a publish of Redis- and Kafka-pinned runs' messages puts
    the Redis ones out at once and names the Kafka ones left (PartlyPublished) once Kafka has
    not answered for KAFKA_STALL_S, and later ones fail fast instead of waiting out the
    producer's timeout (they waited 15 s, for every run, before); after SIGCONT Kafka takes
    messages again."""
    with Tansu(tmp_path) as broker, redis_prefix() as (url, prefix):
        flags: dict[str, bool | int] = {
            "ENABLE_KAFKA_WRITE": True, "ENABLE_KAFKA": True, "KAFKA_TRAFFIC_PERCENT": 50,
        }  # fmt: skip
        kafka = KafkaBus(broker.bootstrap, prefix=prefix.replace(":", "."), partitions=4)
        bus = MigratingBus(RedisBus(url, prefix=prefix), kafka, flags, store)
        on_redis = [r for r in runs(40) if not in_kafka_share(r, 50)][:5]
        on_kafka = [r for r in runs(40) if in_kafka_share(r, 50)][:5]
        try:
            await bus.publish(msgs(on_redis + on_kafka))  # both buses answer
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            began = time.monotonic()
            with pytest.raises(PartlyPublished) as caught:
                await bus.publish(msgs(on_redis + on_kafka))
            assert time.monotonic() - began < KAFKA_STALL_S + 5  # not the producer's 15 s
            assert sorted(m.key for m in caught.value.messages) == sorted(on_kafka)
            got = await bus.redis.consume([T], "g", "c", 100, 1000)
            acting = {d.message.key for d in got if d.message.headers[VIA] == "redis"}
            assert sorted(acting) == sorted(on_redis)
            began = time.monotonic()
            with pytest.raises(PartlyPublished):
                await bus.publish(msgs(on_redis + on_kafka))
            assert time.monotonic() - began < 1.0  # fails fast now
            began = time.monotonic()
            await bus.publish(msgs(on_redis))  # their Kafka copies are dropped, not awaited
            assert time.monotonic() - began < 1.0
            assert bus.figures()["buses"]["kafka"]["failed"] >= len(on_redis)
        finally:
            if broker.proc is not None:
                broker.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:  # Kafka answers again (a fenced producer is replaced)
            try:
                await bus.publish(msgs(on_kafka))
                break
            except InfraError:
                assert time.monotonic() < deadline, "Kafka never took messages again"
                await asyncio.sleep(0.5)
        await bus.close()
