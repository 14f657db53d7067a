"""Every message names its format (`content-type`), end to end on the embedded runtime with
jobs and results through the in-memory bus: what the runtime publishes says JSON; a result
in a format the coordinator does not know is dead-lettered and the next one applies; and a
run whose messages carry no header (an older version's, during a rolling upgrade) runs as
before. (The worker's side: tests/unit/runtime/test_content_type.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import make_settings

from headrace.bus import DEAD_LETTER_TOPIC, Delivery, MemoryBus
from headrace.bus.headers import CONTENT_TYPE_HEADER, DL_GROUP, DL_REASON
from headrace.bus.topics import CANCELS, JOB_LANES, JOBS_HIGH, JOBS_LOW, JOBS_NORMAL, RESULTS
from headrace.clock import SYSTEM
from headrace.events import (
    CONTENT_TYPE,
    Finished,
    Message,
    Started,
    decode_result,
    encode,
    unreadable,
)
from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of
from headrace.testing import tasks

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")

T = "headrace.testing.tasks"
TOPICS = [*JOB_LANES, RESULTS, CANCELS]
PROTOBUF = "application/x-protobuf"
CEILING_S = 30.0

# every kind of message: jobs on the three lanes, results (started notices too), a cancel
EVERY_KIND = {
    "name": "every-kind",
    "nodes": {
        "slow": {"task": f"{T}.sleep", "with": {"seconds": 30}},  # cancelled when `fails` fails
        "pause": {"task": f"{T}.sleep", "with": {"seconds": 0.8}, "priority": "high"},
        "fails": {"task": f"{T}.permanent", "needs": ["pause"], "priority": "low"},
    },
}


async def start(rt: Embedded, spec: dict[str, Any]) -> str:
    ir = parse_workflow(spec)
    await rt.register(ir, "")
    return await rt.start_run(plan_of(ir), {})


async def until_running(rt: Embedded, node_id: str) -> None:
    deadline = time.monotonic() + CEILING_S
    while not any(key[1] == node_id for key in rt.worker.running):
        assert time.monotonic() < deadline, f"{node_id} never ran"
        await asyncio.sleep(0.01)


async def read_all(bus: MemoryBus, topics: Sequence[str], group: str) -> list[Delivery]:
    got: list[Delivery] = []
    while batch := await bus.consume(topics, group, "test", 1000, 0):
        await bus.ack(group, batch)
        got += batch
    return got


def no_loop_failed(rt: Embedded) -> None:
    rt.check_failed()
    assert {loop.name: loop.failures for loop in rt.loops if loop.failures} == {}


async def test_every_message_the_runtime_publishes_says_it_is_json(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, local_jobs=False, local_results=False)
    async with Embedded(settings) as rt:
        assert isinstance(rt.bus, MemoryBus)
        await rt.bus.consume(TOPICS, "observer", "test", 1, 0)  # sees all published from now
        run_id = await start(rt, EVERY_KIND)
        await until_running(rt, "slow")
        # the outbox keeps the same messages (the relay publishes them as they are)
        db = rt.store.db  # type: ignore[attr-defined]
        headers = [msgspec.json.decode(h) for (h,) in db.execute("SELECT headers FROM outbox")]
        assert headers and all(h == {CONTENT_TYPE_HEADER: CONTENT_TYPE} for h in headers)
        assert await rt.driver.republish_in_flight([run_id]) >= 1  # a relay's, a rollback's
        assert (await rt.wait(run_id, timeout_s=CEILING_S)).status == "failed"

        seen: list[Delivery] = []
        deadline = time.monotonic() + CEILING_S
        while not any(d.topic == CANCELS for d in seen):  # published just after the commit
            assert time.monotonic() < deadline, [d.topic for d in seen]
            seen += await read_all(rt.bus, TOPICS, "observer")
            await asyncio.sleep(0.01)
        no_loop_failed(rt)

    assert {d.topic for d in seen} == {JOBS_HIGH, JOBS_NORMAL, JOBS_LOW, RESULTS, CANCELS}
    results = [decode_result(d.message.payload) for d in seen if d.topic == RESULTS]
    assert {type(r) for r in results} == {Started, Finished}
    wrong = [(d.topic, d.message.headers) for d in seen]
    assert [x for x in wrong if x[1].get(CONTENT_TYPE_HEADER) != CONTENT_TYPE] == []


async def test_a_result_in_an_unknown_format_is_dead_lettered_and_the_next_applies(
    tmp_path: Path,
) -> None:
    key = f"content-type-{time.monotonic_ns()}"
    spec = {"name": "held", "nodes": {"a": {"task": f"{T}.hold", "with": {"key": key}}}}
    settings = make_settings(tmp_path, local_jobs=False, local_results=False)
    async with Embedded(settings) as rt:
        assert isinstance(rt.bus, MemoryBus)
        run_id = await start(rt, spec)
        await until_running(rt, "a")

        def result(by: str) -> bytes:
            at = SYSTEM.now_ms()
            done = Finished(
                run_id=run_id, node_id="a", attempt=1, started_at_ms=at, at_ms=at, output={"by": by}
            )
            return encode(done)

        # one batch: a result the coordinator cannot read (it would complete the node if
        # it were read as JSON), then one without the header, as an older worker sent it
        await rt.bus.publish(
            [
                Message(RESULTS, run_id, result("protobuf"), {CONTENT_TYPE_HEADER: PROTOBUF}),
                Message(RESULTS, run_id, result("an older worker")),
            ]
        )
        assert (await rt.wait(run_id, timeout_s=CEILING_S)).status == "completed"
        _, nodes = await rt.store.get_run(run_id)
        assert nodes[0].output == {"by": "an older worker"}
        (dead,) = await read_all(rt.bus, [DEAD_LETTER_TOPIC], "ops")
        assert dead.message.headers[DL_GROUP] == "coordinators"
        assert dead.message.headers[DL_REASON] == unreadable(PROTOBUF)
        assert PROTOBUF in dead.message.headers[DL_REASON]

        tasks.release(key)  # the real job ends; its result comes late and changes nothing
        deadline = time.monotonic() + CEILING_S
        while rt.worker.running:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        no_loop_failed(rt)


class BeforeTheHeader(MemoryBus):
    """The bus as a version before the header left it: no message says its format."""

    async def publish(self, messages: Sequence[Message]) -> None:
        await super().publish([untyped(m) for m in messages])


def untyped(m: Message) -> Message:
    headers = {k: v for k, v in m.headers.items() if k != CONTENT_TYPE_HEADER}
    return Message(m.topic, m.key, m.payload, headers)


async def test_messages_without_the_header_run_as_before(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, local_jobs=False, local_results=False)
    bus = BeforeTheHeader(visibility_ms=int(settings.lease_s * 1000))
    async with Embedded(settings, bus=bus) as rt:
        await bus.consume([*TOPICS, DEAD_LETTER_TOPIC], "observer", "test", 1, 0)
        run_id = await start(rt, EVERY_KIND)
        assert (await rt.wait(run_id, timeout_s=CEILING_S)).status == "failed"
        _, nodes = await rt.store.get_run(run_id)
        assert {n.node_id: n.status for n in nodes} == {
            "slow": "cancelled",
            "pause": "completed",
            "fails": "failed",
        }
        deadline = time.monotonic() + CEILING_S
        while rt.worker.running:  # the cancel, read as JSON, stopped it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        seen = await read_all(bus, [*TOPICS, DEAD_LETTER_TOPIC], "observer")
        no_loop_failed(rt)
    assert {d.topic for d in seen} == {JOBS_HIGH, JOBS_NORMAL, JOBS_LOW, RESULTS, CANCELS}
    assert all(CONTENT_TYPE_HEADER not in d.message.headers for d in seen)
