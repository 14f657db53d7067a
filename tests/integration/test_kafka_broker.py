"""What the Kafka bus will rely on, checked on the test broker (docs/kafka.md): a group
member's uncommitted messages reach the rest of its group when it is SIGKILLed, committed
ones do not come back, and with S3 storage messages and offsets survive a broker SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from headrace.testing.kafka import MotoS3, Tansu, external_broker

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0
GROUP_SETTINGS = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,  # tansu: a group join takes about half of it
    "partition.assignment.strategy": "range",  # tansu: cooperative-sticky is broken
}

# Member A of the rebalance test, in its own process so that it can be SIGKILLed: takes
# 300 messages, commits the first half of them, says what it did, then waits to be killed.
MEMBER = """
import json, sys, time
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, group, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **settings})
c.subscribe([topic])
got, end = [], time.monotonic() + 60
while len(got) < 300 and time.monotonic() < end:
    got += [m for m in c.consume(100, 0.5) if not m.error()]
half = got[: len(got) // 2]
last = {}
for m in half:
    last[m.partition()] = m.offset()
if last:
    c.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()], asynchronous=False)
print(json.dumps({"took": len(got), "committed": [m.value().decode() for m in half]}), flush=True)
time.sleep(3600)
"""


def new_topic(bootstrap: str, partitions: int) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(TIMEOUT_S)
    return name


def produce(bootstrap: str, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=f"run-{i % 37}", value=f"m{i}".encode(), headers=[("id", b"m%d" % i)])
    assert p.flush(TIMEOUT_S) == 0


def consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, **GROUP_SETTINGS})


def take(c: Consumer, want: set[bytes], timeout_s: float = TIMEOUT_S) -> list[Message]:
    """Consume until every value in `want` was seen (or the timeout)."""
    got: list[Message] = []
    end = time.monotonic() + timeout_s
    while not want <= {m.value() for m in got} and time.monotonic() < end:
        got += [m for m in c.consume(500, 0.5) if m.error() is None]
    return got


def test_a_killed_members_uncommitted_messages_reach_its_group(bootstrap: str) -> None:
    topic, group = new_topic(bootstrap, 4), f"g-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, 1000)
    everything = {f"m{i}".encode() for i in range(1000)}
    args = [bootstrap, topic, group, json.dumps(GROUP_SETTINGS)]
    member_a = subprocess.Popen(
        [sys.executable, "-c", MEMBER, *args], stdout=subprocess.PIPE, text=True
    )
    b = consumer(bootstrap, group)
    try:
        assert member_a.stdout is not None
        said = json.loads(member_a.stdout.readline())
        assert said["took"] == 300, "member A held messages when it died"
        committed = {v.encode() for v in said["committed"]}
        b.subscribe([topic])
        member_a.kill()  # SIGKILL: no leave-group, no commit
        member_a.wait(10)
        got = take(b, everything - committed)
    finally:
        member_a.kill()
        member_a.wait(10)
        member_a.stdout.close()
        b.close()
    seen = {m.value() for m in got}
    assert seen == everything - committed  # every uncommitted one arrived; no committed one
    headers = {m.value(): dict(m.headers() or []) for m in got}
    assert all(h["id"] == v for v, h in headers.items())
    created_ms = [m.timestamp()[1] for m in got]  # what consumer lag in time is read from
    assert all(0 < time.time() * 1000 - ms < 600_000 for ms in created_ms)


def test_s3_storage_keeps_messages_and_offsets_across_a_broker_sigkill(tmp_path: Path) -> None:
    if external_broker():
        pytest.skip("restarts the test's own tansu; HEADRACE_TEST_KAFKA names another broker")
    with MotoS3(tmp_path) as s3, Tansu(tmp_path, s3=s3) as broker:
        topic, group = new_topic(broker.bootstrap, 4), "keeps"
        produce(broker.bootstrap, topic, 200)
        everything = {f"m{i}".encode() for i in range(200)}
        first = consumer(broker.bootstrap, group)
        first.subscribe([topic])
        got = take(first, everything)
        first.commit(message=got[49], asynchronous=False)  # up to and including the 50th
        first.close()
        done = {m.value() for m in got[:50] if m.partition() == got[49].partition()}

        broker.restart()  # SIGKILL, then the same port and bucket

        again = consumer(broker.bootstrap, group)
        again.subscribe([topic])
        rest = {m.value() for m in take(again, everything - done)}
        again.close()
        assert rest == everything - done  # kept, and the committed offset too
        fresh = consumer(broker.bootstrap, "fresh")
        fresh.subscribe([topic])
        assert {m.value() for m in take(fresh, everything)} == everything
        fresh.close()
