"""The migrating bus on the test Redis and the test Kafka broker, steered by flags as the
migration steps do: where each message goes (by its run's pin, a header the runtime
stamps), which copy is acted on, and re-routing."""

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

from headrace.bus import Bus, Delivery
from headrace.bus.base import PartlyPublished
from headrace.bus.headers import CONTENT_TYPE_HEADER, COPIES, KAFKA, MID, PIN, REDIS, VIA
from headrace.bus.kafka import KafkaBus
from headrace.bus.migrating import KAFKA_STALL_S, MigratingBus, message_id
from headrace.bus.redis import RedisBus
from headrace.bus.topics import JOBS_NORMAL
from headrace.errors import InfraError
from headrace.events import Finished, Job, Message, encode
from headrace.migration.shadow import Shadow
from headrace.runtime.driver import json_message
from headrace.runtime.worker import reply
from headrace.testing.kafka import Tansu
from headrace.testing.services import redis_prefix

pytestmark = pytest.mark.integration

CEILING_S = 30.0
T = "node.results"


class Rig:
    def __init__(self, redis: RedisBus, kafka: KafkaBus, flags: dict[str, bool | int]) -> None:
        self.redis, self.kafka = redis, kafka
        self.bus = MigratingBus({REDIS: redis, KAFKA: kafka}, flags)
        self.flags = flags
        self.raw = aioredis.Redis.from_url(redis.url)

    def parts(self) -> dict[str, Bus]:
        return {REDIS: self.redis, KAFKA: self.kafka}

    async def redis_length(self) -> int:
        return int(await self.raw.xlen(self.redis.prefix + T))

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
async def rig(bootstrap: str) -> AsyncIterator[Rig]:
    with redis_prefix() as (url, prefix):
        flags: dict[str, bool | int] = {"ENABLE_REDIS_WRITE": True}
        redis = RedisBus(url, prefix=prefix, visibility_ms=5_000)
        kafka = KafkaBus(bootstrap, prefix=prefix.replace(":", "."), partitions=4)
        r = Rig(redis, kafka, flags)
        await r.bus.consume([T], "g", "c", 1, 0)  # join both buses before anything is sent
        yield r
        await r.raw.aclose()
        await r.bus.close()


def runs(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def msgs(run_ids: list[str], pin: str | None = None) -> list[Message]:
    """A message of each run; with its run's pin, as the runtime stamps it."""
    headers = {PIN: pin} if pin else {}
    return [Message(T, r, f"result of {r}".encode(), headers) for r in run_ids]


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


async def test_each_message_goes_via_its_run_s_pin_and_one_without_via_redis(rig: Rig) -> None:
    rig.flags |= {"ENABLE_KAFKA_WRITE": True, "ENABLE_KAFKA": True, "KAFKA_TRAFFIC_PERCENT": 50}
    on_kafka, on_redis, unpinned = runs(30), runs(30), runs(10)
    await rig.bus.publish(msgs(on_kafka, KAFKA) + msgs(on_redis, REDIS) + msgs(unpinned))
    got = await rig.take(70)
    pins = dict.fromkeys(on_kafka, KAFKA) | dict.fromkeys(on_redis + unpinned, REDIS)
    for d in got:  # each acted on through the bus of its pin
        assert d.message.headers[VIA] == d.message.headers[PIN] == pins[d.message.key]
        assert d.id.startswith("k|" if pins[d.message.key] == KAFKA else "r|")
    await rig.nothing_more(1.0)
    rig.flags["KAFKA_TRAFFIC_PERCENT"] = 0  # moves new runs only: the bus never re-pins
    await rig.bus.publish(msgs(on_kafka[:10], KAFKA))
    again = await rig.take(10)
    assert {(d.message.headers[VIA], d.id[0]) for d in again} == {(KAFKA, "k")}


async def test_redis_off_moves_every_run_to_kafka_and_rollback_moves_them_back(
    rig: Rig,
) -> None:
    ids = runs(10)
    rig.flags |= {"ENABLE_KAFKA_WRITE": True, "ENABLE_KAFKA": True, "ENABLE_REDIS_WRITE": False}
    before = await rig.redis_length()
    await rig.bus.publish(msgs(ids, REDIS))
    assert await rig.redis_length() == before  # Redis off: nothing written there
    got = await rig.take(10)
    assert {d.message.headers[VIA] for d in got} == {"kafka"}
    assert {d.message.headers[PIN] for d in got} == {"redis"}  # the pin itself is kept
    rig.flags |= {"ENABLE_KAFKA": False, "ENABLE_REDIS_WRITE": True}  # roll back
    await rig.bus.publish(msgs(ids, KAFKA))  # a Kafka pin too: Kafka is off
    back = await rig.take(10)
    assert {d.message.headers[VIA] for d in back} == {"redis"}


async def test_a_failing_kafka_copy_never_fails_a_redis_publish() -> None:
    with redis_prefix() as (url, prefix):
        flags: dict[str, bool | int] = {"ENABLE_KAFKA_WRITE": True}
        dead = KafkaBus("127.0.0.1:1", prefix="x.", timeout_s=1.0)
        redis = RedisBus(url, prefix=prefix)
        bus = MigratingBus({REDIS: redis, KAFKA: dead}, flags)
        try:
            await bus.publish(msgs(runs(3)))
            deadline = time.monotonic() + CEILING_S
            while bus.figures()["buses"]["kafka"]["failed"] < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            got = await redis.consume([T], "g", "c", 10, 1000)
            assert len(got) == 3 and all(MID in d.message.headers for d in got)
        finally:
            await bus.close()


async def test_the_shadow_reports_a_corrupted_and_a_dropped_kafka_copy(rig: Rig) -> None:
    rig.flags["ENABLE_KAFKA_WRITE"] = True
    shadow = Shadow(rig.parts(), grace_s=2, topics=[T])
    await rig.bus.publish(msgs(runs(1)))
    deadline = time.monotonic() + CEILING_S
    while shadow.matched < 1:  # its groups joined both buses
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    await rig.bus.publish(msgs(runs(4)))
    both = {COPIES: "kafka,redis", VIA: "redis", PIN: "redis"}
    original = Message(T, str(uuid.uuid4()), b"the real payload")
    corrupt_id, dropped_id = message_id(original), "0123456789abcdef01234567"
    await rig.redis.publish([replace(original, headers={**both, MID: corrupt_id})])
    await rig.kafka.publish(
        [replace(original, payload=b"tampered", headers={**both, MID: corrupt_id})]
    )
    await rig.redis.publish([Message(T, "run-x", b"lost", {**both, MID: dropped_id})])
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


async def test_a_republish_after_a_rollback_is_a_pair_of_its_own(rig: Rig) -> None:
    """A rollback republishes a Kafka run's jobs through Redis, with the content of the
    first publish but other routing: the shadow pairs each publish's two copies, so that is
    neither a mismatch nor a missing copy (it reported both before copy ids)."""
    rig.flags.update(ENABLE_KAFKA_WRITE=True)
    shadow = Shadow(rig.parts(), grace_s=5, topics=[T])
    deadline = time.monotonic() + CEILING_S
    await rig.bus.publish(msgs(runs(1)))
    while shadow.matched < 1:  # its groups joined both buses
        assert time.monotonic() < deadline, shadow.figures()
        await shadow.step(block_ms=100)
    rig.flags.update(ENABLE_KAFKA=True, KAFKA_TRAFFIC_PERCENT=100)
    sent = msgs(runs(3), KAFKA)
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
    shadow = Shadow(rig.parts(), grace_s=5, topics=[T])
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
    tmp_path: Path,
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
        redis = RedisBus(url, prefix=prefix)
        bus = MigratingBus({REDIS: redis, KAFKA: kafka}, flags)
        on_redis, on_kafka = runs(5), runs(5)
        both = msgs(on_redis, REDIS) + msgs(on_kafka, KAFKA)
        try:
            await bus.publish(both)  # both buses answer
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            began = time.monotonic()
            with pytest.raises(PartlyPublished) as caught:
                await bus.publish(both)
            assert time.monotonic() - began < KAFKA_STALL_S + 5  # not the producer's 15 s
            assert sorted(m.key for m in caught.value.messages) == sorted(on_kafka)
            got = await redis.consume([T], "g", "c", 100, 1000)
            acting = {d.message.key for d in got if d.message.headers[VIA] == "redis"}
            assert sorted(acting) == sorted(on_redis)
            began = time.monotonic()
            with pytest.raises(PartlyPublished):
                await bus.publish(both)
            assert time.monotonic() - began < 1.0  # fails fast now
            began = time.monotonic()
            await bus.publish(msgs(on_redis, REDIS))  # their Kafka copies are dropped, not awaited
            assert time.monotonic() - began < 1.0
            assert bus.figures()["buses"]["kafka"]["failed"] >= len(on_redis)
        finally:
            if broker.proc is not None:
                broker.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:  # Kafka answers again (a fenced producer is replaced)
            try:
                await bus.publish(msgs(on_kafka, KAFKA))
                break
            except InfraError:
                assert time.monotonic() < deadline, "Kafka never took messages again"
                await asyncio.sleep(0.5)
        await bus.close()
