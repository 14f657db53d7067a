"""What only the Kafka bus does, on the test broker (or `HEADRACE_TEST_KAFKA`): a group
shared by processes, committed positions, a SIGKILLed member, depth, a broker that is not
there or lost writes. The Bus contract's cases run on it in tests/contract/.

One broker serves the module; each test has a prefix (its topics and groups) of its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from headrace.bus import Delivery
from headrace.bus.kafka import KafkaBus
from headrace.errors import InfraError
from headrace.events import Message
from headrace.testing.kafka import MotoS3, Tansu, external_broker

pytestmark = pytest.mark.integration

VISIBILITY_MS = 300
VISIBILITY_S = VISIBILITY_MS / 1000
CEILING_S = 30.0  # generous: a group join and a rebalance take seconds on tansu
T = "t.a"


def msg(topic: str, i: int, **headers: str) -> Message:
    return Message(topic, f"run-{i}", f"payload-{i}".encode(), headers)


def payloads(deliveries: Sequence[Delivery]) -> list[bytes]:
    return [d.message.payload for d in deliveries]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}."


def new_bus(bootstrap: str, prefix: str, **options: int) -> KafkaBus:
    options = {"visibility_ms": VISIBILITY_MS, "partitions": 4} | options
    return KafkaBus(bootstrap, prefix=prefix, **options)


async def take(
    bus: KafkaBus, topics: Sequence[str], group: str, consumer: str, n: int, *, ack: bool = True
) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + CEILING_S
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} messages arrived"
        batch = await bus.consume(topics, group, consumer, n - len(got), 100)
        if ack and batch:
            await bus.ack(group, batch)
        got += batch
    return got


async def nothing_for(bus: KafkaBus, topic: str, group: str, consumer: str, s: float) -> None:
    until = time.monotonic() + s
    while time.monotonic() < until:
        got = await bus.consume([topic], group, consumer, 10, 50)
        assert got == [], [d.message for d in got]


async def test_two_processes_of_a_group_share_without_duplicates(
    bootstrap: str, prefix: str
) -> None:
    first, second = new_bus(bootstrap, prefix), new_bus(bootstrap, prefix)
    try:
        for b in (first, second):
            await b.consume([T], "g", "c", 1, 0)  # both join before anything is there
        await asyncio.sleep(1)
        await first.publish([msg(T, i) for i in range(200)])
        got: dict[int, list[Delivery]] = {0: [], 1: []}
        deadline = time.monotonic() + CEILING_S
        while len(got[0]) + len(got[1]) < 200:
            assert time.monotonic() < deadline
            for i, b in enumerate((first, second)):
                batch = await b.consume([T], "g", "c", 50, 50)
                await b.ack("g", batch)
                got[i] += batch
        both = payloads(got[0] + got[1])
        assert len(both) == len(set(both)) == 200
        await nothing_for(first, T, "g", "c", 0.5)
        await nothing_for(second, T, "g", "c", 0.5)
    finally:
        await first.close()
        await second.close()


async def test_acknowledged_offsets_are_committed_and_the_rest_comes_back(
    bootstrap: str, prefix: str
) -> None:
    """Out-of-order acks: a group's next member gets everything not acknowledged, and
    nothing acknowledged before the first gap (Kafka commits a position)."""
    first = new_bus(bootstrap, prefix, partitions=1)
    await first.publish([msg(T, i) for i in range(10)])
    got = await take(first, [T], "g", "c", 10, ack=False)
    await first.ack("g", got[:4] + got[6:8])  # 0-3 and 6-7 done: the position is 4
    await first.close()  # commits on the way out
    second = new_bus(bootstrap, prefix, partitions=1)
    try:
        again = await take(second, [T], "g", "c", 6)
        assert payloads(again) == [f"payload-{i}".encode() for i in (4, 5, 6, 7, 8, 9)]
        await nothing_for(second, T, "g", "c", 1.0)
    finally:
        await second.close()


# A group member in its own process, SIGKILLed while it holds messages: takes 30, acks the
# first 10, says so, then waits to be killed.
MEMBER = """
import asyncio, json, sys
from headrace.bus.kafka import KafkaBus
async def main():
    bus = KafkaBus(sys.argv[1], prefix=sys.argv[2], partitions=4, visibility_ms=60000)
    got = []
    while len(got) < 30:
        got += await bus.consume(["t.a"], "g", "member", 30 - len(got), 500)
    await bus.ack("g", got[:10])
    await asyncio.sleep(1)  # the fetch thread commits
    print(json.dumps([d.message.payload.decode() for d in got[:10]]), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_a_sigkilled_member_s_unacknowledged_messages_reach_the_group(
    bootstrap: str, prefix: str
) -> None:
    bus = new_bus(bootstrap, prefix)
    await bus.publish([msg(T, i) for i in range(100)])
    argv = [sys.executable, "-c", MEMBER, bootstrap, prefix]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as member:
        try:
            assert member.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(member.stdout.readline), CEILING_S)
            acked = {p.encode() for p in json.loads(line)}
            member.kill()  # holds 20 unacknowledged messages
            member.wait()
            rest = await take(bus, [T], "g", "c", 90)
            assert not acked & set(payloads(rest))  # committed ones stay done...
            assert len(set(payloads(rest))) == 90  # ...and nothing else is lost
        finally:
            member.kill()
            await bus.close()


async def test_depth_on_a_one_partition_topic(bootstrap: str, prefix: str) -> None:
    bus = new_bus(bootstrap, prefix, partitions=1)
    try:
        for i in range(5):  # a record per batch: tansu's watermarks are wrong after a batch
            await bus.publish([msg(T, i)])
        assert await bus.depth(T) == 5
        await bus.ack("g", await take(bus, [T], "g", "c", 2, ack=False))
        deadline = time.monotonic() + CEILING_S
        while await bus.depth(T) != 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await bus.close()


async def test_unreachable_broker_fails_publish_with_infra_error(tmp_path: Path) -> None:
    bus = KafkaBus("127.0.0.1:1", prefix="x.", timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(InfraError):
        await bus.publish([msg(T, 1)])
    assert time.monotonic() - t0 < CEILING_S
    await bus.close()


async def test_a_broker_that_lost_acknowledged_writes_gets_a_new_producer(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker's storage rolled back under a live producer, as when a broker loses
    writes it had acknowledged: librdkafka's idempotent producer is out of sequence and
    fails for good. The publish in flight raises; the bus takes a new producer and the
    next publishes are delivered."""
    if external_broker():
        pytest.skip("rolls back the test's own tansu; HEADRACE_TEST_KAFKA names another broker")
    with MotoS3(tmp_path) as s3, Tansu(tmp_path, s3=s3) as broker:
        bus = new_bus(broker.bootstrap, prefix, partitions=1)
        try:
            await bus.publish([msg(T, 0)])
            before = s3.snapshot()
            for i in (1, 2, 3):
                await bus.publish([msg(T, i)])
            broker.kill()
            s3.restore(before)
            broker.start()
            with pytest.raises(InfraError):
                await bus.publish([msg(T, 4)])
            assert "a new producer takes over" in caplog.text
            await bus.publish([msg(T, 5)])
            await bus.publish([msg(T, 6)])
            got = payloads(await take(bus, [T], "g", "c", 3))
            assert got == [b"payload-0", b"payload-5", b"payload-6"]
        finally:
            await bus.close()
