"""Every message names its format (`content-type`): the worker, on the in-memory bus, refuses
a job or a cancel in a format it does not know to the dead-letter topic, goes on with the
next, and reads a message without the header (an older version's) as JSON."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from headrace.bus import DEAD_LETTER_TOPIC, Delivery, MemoryBus
from headrace.bus.base import content_type
from headrace.bus.headers import CONTENT_TYPE_HEADER, DL_GROUP, DL_ID, DL_REASON, DL_TOPIC
from headrace.bus.topics import CANCELS, JOB_LANES, JOBS_NORMAL, RESULTS
from headrace.events import (
    CONTENT_TYPE,
    CancelJob,
    Finished,
    Job,
    Message,
    decode_result,
    encode,
    unreadable,
)
from headrace.nodes import Outcome
from headrace.runtime.supervise import cancel_all
from headrace.runtime.worker import Worker

PROTOBUF = "application/x-protobuf"
VISIBILITY_MS = 300
CEILING_S = 10.0


def job(node_id: str) -> Job:
    return Job(
        run_id="run-1",
        node_id=node_id,
        attempt=1,
        kind="task",
        priority="normal",
        timeout_ms=30_000,
        scheduled_at_ms=0,
        idempotency_key=f"run-1/{node_id}",
    )


def message(topic: str, value: Job | CancelJob, fmt: str | None) -> Message:
    """`value` as JSON, saying `fmt` (None: no header, as a version before it wrote)."""
    headers = {} if fmt is None else {CONTENT_TYPE_HEADER: fmt}
    return Message(topic, "run-1", encode(value), headers)


class Rig:
    def __init__(self) -> None:
        self.bus = MemoryBus(visibility_ms=VISIBILITY_MS)
        self.ran: list[str] = []
        self.held = asyncio.Event()  # jobs of node "held" wait for it (or a cancel)
        self.worker = Worker(self.bus, {"task": self.execute}, concurrency=4, heartbeat_s=0.05)

    async def execute(self, job: Job) -> Outcome:
        self.ran.append(job.node_id)
        if job.node_id == "held":
            await self.held.wait()
        return Outcome({"node": job.node_id})

    async def take(self, topic: str, group: str, n: int) -> list[Delivery]:
        got: list[Delivery] = []
        deadline = time.monotonic() + CEILING_S
        while len(got) < n:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} on {topic}"
            batch = await self.bus.consume([topic], group, "test", n - len(got), 50)
            await self.bus.ack(group, batch)
            got += batch
        return got

    async def until(self, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + CEILING_S
        while not check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    async def nothing_left(self, topics: list[str], group: str) -> None:
        """Past the visibility timeout, the group gets nothing again: all was acknowledged.
        (A message left unacknowledged may come back to the worker instead: it would then
        run again, or be dead-lettered again, which the callers check too.)"""
        await asyncio.sleep(VISIBILITY_MS / 1000 * 1.5)
        assert await self.bus.consume(topics, group, "late", 10, 0) == []
        assert await self.bus.consume([DEAD_LETTER_TOPIC], "test", "test", 10, 0) == []


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    for topic in (RESULTS, DEAD_LETTER_TOPIC):  # join before anything is published
        await r.bus.consume([topic], "test", "test", 1, 0)
    loop = asyncio.create_task(r.worker.run())
    await asyncio.sleep(0.05)  # the worker joined its groups
    yield r
    r.held.set()
    await cancel_all([loop])
    assert not loop.done() or loop.cancelled(), loop.exception()


def test_json_is_the_only_format_read_and_no_header_means_json() -> None:
    assert unreadable(CONTENT_TYPE) is None
    assert unreadable(PROTOBUF) == (
        "unknown content-type 'application/x-protobuf' (this version reads application/json)"
    )
    assert unreadable("") is not None  # an empty header is a format too, and not JSON
    assert content_type(Message("t", "k", b"{}")) == CONTENT_TYPE  # an older version's
    assert content_type(Message("t", "k", b"", {CONTENT_TYPE_HEADER: PROTOBUF})) == PROTOBUF


async def test_a_job_in_an_unknown_format_is_dead_lettered_and_the_others_run(rig: Rig) -> None:
    refused = message(JOBS_NORMAL, job("refused"), PROTOBUF)  # JSON inside: never looked at
    await rig.bus.publish(
        [
            refused,
            message(JOBS_NORMAL, job("typed"), CONTENT_TYPE),
            message(JOBS_NORMAL, job("untyped"), None),  # published before the header
        ]
    )
    results = await rig.take(RESULTS, "test", 2)
    (dead,) = await rig.take(DEAD_LETTER_TOPIC, "test", 1)

    assert sorted(rig.ran) == ["typed", "untyped"]
    finished = [decode_result(d.message.payload) for d in results]
    assert sorted(r.node_id for r in finished if isinstance(r, Finished)) == ["typed", "untyped"]
    assert all(d.message.headers[CONTENT_TYPE_HEADER] == CONTENT_TYPE for d in results)
    assert dead.message.payload == refused.payload
    assert dead.message.headers == {  # the original's headers, and where and why
        CONTENT_TYPE_HEADER: PROTOBUF,
        DL_TOPIC: JOBS_NORMAL,
        DL_ID: "1",
        DL_GROUP: "workers",
        DL_REASON: unreadable(PROTOBUF),
    }
    await rig.nothing_left(list(JOB_LANES), "workers")
    assert sorted(rig.ran) == ["typed", "untyped"]  # once each
    assert rig.worker.free == rig.worker.concurrency  # the refused job's slot came back


async def test_a_cancel_in_an_unknown_format_is_dead_lettered_and_the_next_cancels(
    rig: Rig,
) -> None:
    await rig.bus.publish([message(JOBS_NORMAL, job("held"), CONTENT_TYPE)])
    await rig.until(lambda: rig.ran == ["held"])
    cancel = CancelJob(run_id="run-1", node_id="held", attempt=1)

    await rig.bus.publish([message(CANCELS, cancel, PROTOBUF)])
    (dead,) = await rig.take(DEAD_LETTER_TOPIC, "test", 1)
    assert dead.message.headers[DL_REASON] == unreadable(PROTOBUF)
    assert dead.message.headers[DL_GROUP] == f"cancels-{rig.worker.name}"
    await asyncio.sleep(0.1)
    assert list(rig.worker.running) == [("run-1", "held", 1)]  # not cancelled by it

    await rig.bus.publish(
        [Message(CANCELS, "run-1", b"{not json", {CONTENT_TYPE_HEADER: CONTENT_TYPE})]
    )
    (garbled,) = await rig.take(DEAD_LETTER_TOPIC, "test", 1)
    assert garbled.message.headers[DL_REASON].startswith("undecodable cancel: ")
    assert list(rig.worker.running) == [("run-1", "held", 1)]

    await rig.bus.publish([message(CANCELS, cancel, None)])  # an older version's: JSON
    await rig.until(lambda: not rig.worker.running)
    await rig.nothing_left([CANCELS], f"cancels-{rig.worker.name}")
    await rig.nothing_left(list(JOB_LANES), "workers")  # the cancelled job acknowledged
    assert rig.ran == ["held"]
    assert await rig.bus.consume([RESULTS], "test", "test", 10, 0) == []  # and not reported
