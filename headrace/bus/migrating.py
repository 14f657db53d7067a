"""The migrating bus (ARCHITECTURE §4, phases 2–3): Redis Streams and Kafka side by side,
steered live by the flags; built when both `HEADRACE_BUS=redis://...` and
`HEADRACE_KAFKA_URL=kafka://...` are set. It is given the two buses by name and uses
nothing of them but the Bus protocol; it keeps no state of its own beyond figures.

Every run is pinned to one bus when it starts (headrace/runtime/pins.py: Kafka when
`ENABLE_KAFKA` is on and `crc32(run_id) % 100 < KAFKA_TRAFFIC_PERCENT`, else Redis), and
the pin is committed with the run; the runtime stamps it on each of the run's messages as
the `hr-pin` header. A message without one (written before the migration began) is
Redis's. This bus adds the other headers (headrace/bus/headers.py): `hr-via` (the copy
consumers act on), `hr-copies`, `hr-mid`, `hr-cid` and `hr-ts`.

`via` is Kafka for a Kafka-pinned run while `ENABLE_KAFKA` is on, and for every run once
`ENABLE_REDIS_WRITE` is off (with `ENABLE_KAFKA` on); otherwise Redis. So turning
`ENABLE_KAFKA` off (a rollback) moves every run back to Redis at once, in every process.
A message goes to its `via` bus (awaited: a failure there fails the publish), plus a copy
to Kafka while `ENABLE_KAFKA_WRITE` is on and to Redis while `ENABLE_REDIS_WRITE` is on
(best effort: a failed copy is counted, never raised; a copy to Kafka is never awaited).
The buses fail apart: when one cannot take its part, the other's is out and
PartlyPublished names what is left; a Kafka that has left a publish unanswered for
KAFKA_STALL_S fails the publishes routed to it at once.

Consumers read both buses and act only on the copy that arrived `via` its bus; the other
copy is acknowledged and dropped. A message without routing headers (published before the
migration began) is acted on wherever it arrives.

`figures()` gives what the monitor needs, per bus: messages sent and failed (bus errors,
never the users' task failures), routed and acted on, and the publish-to-consume latency
of the messages acted on, as a histogram; by the second of publication
(headrace/migration/slots.py), so a reader that misses a report loses nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from headrace.bus.base import Bus, Delivery, PartlyPublished, dead_letter_message
from headrace.bus.headers import CID, COPIES, KAFKA, MID, PIN, REDIS, TS, VIA
from headrace.errors import InfraError
from headrace.events import Message
from headrace.flags.definitions import FlagValue, FlagValues
from headrace.migration.slots import FAILED, ROUTED, SENT, BusSlots

log = logging.getLogger(__name__)

KAFKA_STALL_S = 3.0  # a publish unanswered this long: Kafka is not answering, fail fast
KAFKA_COPY_BACKLOG = 50_000  # copies beyond this many awaiting the broker are dropped


def message_id(m: Message) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in (m.topic.encode(), m.key.encode(), m.payload):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.hexdigest()


class BusFigures:
    """One bus's counters in this process: totals since it started, and by the second of
    publication (headrace/migration/slots.py), which is what the checks judge."""

    def __init__(self) -> None:
        self.totals = {"sent": 0, "failed": 0, "routed": 0, "acted": 0, "handed_over": 0}
        self.slots = BusSlots()

    def count(self, what: str, counter: int, second: int, n: int = 1) -> None:
        self.totals[what] += n
        self.slots.add(second, counter, n)

    def acted(self, second: int, age_ms: int, handed_over: bool) -> None:
        self.totals["acted"] += 1
        self.totals["handed_over"] += handed_over
        self.slots.acted(second, age_ms, handed_over=handed_over)

    def as_dict(self, now_s: int) -> dict[str, Any]:
        return {**self.totals, "slots": self.slots.report(now_s)}


class MigratingBus:
    durable = True

    def __init__(self, buses: Mapping[str, Bus], flags: Mapping[str, FlagValue]) -> None:
        self.buses: dict[str, Bus] = {REDIS: buses[REDIS], KAFKA: buses[KAFKA]}
        self.flags = FlagValues(flags)  # a live view: the process's flag watcher updates it
        self._figures = {REDIS: BusFigures(), KAFKA: BusFigures()}
        self._recent: dict[str, float] = {REDIS: 0.0, KAFKA: 0.0}  # last delivery, monotonic
        self._cids = itertools.count()
        # publishes to Kafka awaiting the broker: since when (monotonic), how many messages
        self._to_kafka: dict[asyncio.Task[None], tuple[float, int]] = {}
        self._cid_prefix = uuid.uuid4().hex[:12]  # this bus's publishes (the shadow's "writer")

    @property
    def description(self) -> str:
        return f"migrating: {self.buses[REDIS].description} + {self.buses[KAFKA].description}"

    # routing

    def via(self, pin: str) -> str:
        if not self.flags.on("ENABLE_KAFKA"):
            return REDIS
        if pin == KAFKA or not self.flags.on("ENABLE_REDIS_WRITE"):
            return KAFKA
        return REDIS

    def _copies(self, via: str) -> set[str]:
        out = {via}
        if self.flags.on("ENABLE_KAFKA_WRITE"):
            out.add(KAFKA)
        if self.flags.on("ENABLE_REDIS_WRITE"):
            out.add(REDIS)
        return out

    def _route(self, m: Message, now: str, second: int) -> tuple[str, set[str], Message]:
        """The bus a message is acted on through, the buses that get a copy, and the
        message with its routing headers."""
        pin = m.headers.get(PIN, REDIS)
        via = self.via(pin)
        self._figures[via].count("routed", ROUTED, second)
        written = self._copies(via)
        headers = {
            **m.headers,
            PIN: pin,
            VIA: via,
            COPIES: ",".join(sorted(written)),
            MID: m.headers.get(MID) or message_id(m),
            CID: f"{self._cid_prefix}-{next(self._cids)}",
            TS: now,
        }
        return via, written, Message(m.topic, m.key, m.payload, headers)

    # the Bus protocol

    async def publish(self, messages: Sequence[Message]) -> None:
        """Each message to its `via` bus (awaited), its copies best effort. The buses fail
        apart: when one cannot take its messages, the other's still go, and PartlyPublished
        names those that did not."""
        if not messages:
            return
        now_ms = int(time.time() * 1000)
        now, second = str(now_ms), now_ms // 1000
        acting: dict[str, list[Message]] = {REDIS: [], KAFKA: []}
        copies: dict[str, list[Message]] = {REDIS: [], KAFKA: []}
        for m in messages:
            via, written, routed = self._route(m, now, second)
            acting[via].append(routed)
            for backend in written - {via}:
                copies[backend].append(routed)
        kafka_done = self._send_kafka(acting[KAFKA], second)
        failed = await self._publish_redis(acting[REDIS], second)
        self._copy_kafka(copies[KAFKA], second)
        await self._copy_redis(copies[REDIS], second)
        if kafka_done is not None:
            try:
                await self._kafka_answer(kafka_done)
            except InfraError as e:
                failed.append((e, acting[KAFKA]))
        if failed:
            left = [m for _, ms in failed for m in ms]
            raise PartlyPublished("; ".join(str(e) for e, _ in failed), left)

    def _stalled_s(self) -> float:
        """How long the oldest publish to Kafka still in flight has waited (0: none):
        seconds mean a broker that does not answer (frozen, cut off)."""
        oldest = min((since for since, _ in self._to_kafka.values()), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _send_kafka(self, messages: list[Message], second: int) -> asyncio.Task[None] | None:
        """Publish to Kafka in a task of its own, so a publish its caller stopped waiting for
        still ends (and counts); None when there is nothing to send. A task that fails at
        once while Kafka is not answering (fail fast: no publish waits behind a frozen
        broker)."""
        if not messages:
            return None
        self._figures[KAFKA].count("sent", SENT, second, len(messages))
        stalled = self._stalled_s()
        if stalled > KAFKA_STALL_S:
            publish = _fail(_no_answer(stalled))
        else:
            publish = self.buses[KAFKA].publish(messages)
        task = asyncio.create_task(publish)
        self._to_kafka[task] = (time.monotonic(), len(messages))
        task.add_done_callback(functools.partial(self._kafka_ended, second))
        return task

    def _kafka_ended(self, second: int, task: asyncio.Task[None]) -> None:
        _, n = self._to_kafka.pop(task)
        if task.cancelled() or task.exception() is not None:
            self._figures[KAFKA].count("failed", FAILED, second, n)

    async def _kafka_answer(self, task: asyncio.Task[None]) -> None:
        """The broker's answer to a publish; InfraError once Kafka has left a publish
        unanswered for KAFKA_STALL_S (sooner than the producer's own timeout)."""
        while not task.done():
            await asyncio.wait([task], timeout=0.25)
            stalled = self._stalled_s()
            if not task.done() and stalled > KAFKA_STALL_S:
                raise _no_answer(stalled)
        task.result()

    def _copy_kafka(self, messages: list[Message], second: int) -> None:
        """Copies to Kafka, never awaited: dropped (and counted failed) while Kafka does not
        answer or more than KAFKA_COPY_BACKLOG messages await its answer."""
        if not messages:
            return
        backlog = sum(n for _, n in self._to_kafka.values())
        if self._stalled_s() > KAFKA_STALL_S or backlog + len(messages) > KAFKA_COPY_BACKLOG:
            self._figures[KAFKA].count("sent", SENT, second, len(messages))
            self._figures[KAFKA].count("failed", FAILED, second, len(messages))
            return
        self._send_kafka(messages, second)

    async def _publish_redis(
        self, messages: list[Message], second: int
    ) -> list[tuple[InfraError, list[Message]]]:
        """The messages routed through Redis; the failure, if any, to report."""
        if not messages:
            return []
        figures = self._figures[REDIS]
        figures.count("sent", SENT, second, len(messages))
        try:
            await self.buses[REDIS].publish(messages)
        except InfraError as e:
            figures.count("failed", FAILED, second, len(messages))
            return [(e, messages)]
        return []

    async def _copy_redis(self, messages: list[Message], second: int) -> None:
        if messages:
            for failure, _ in await self._publish_redis(messages, second):
                log.warning("a Redis copy was not written: %s", failure)

    async def consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        """Both buses' messages, topic by topic while a topic's messages may be acted on
        through either (Kafka takes runs, Redis is still written): a high lane's job on one
        bus never waits behind a low lane's on the other. Otherwise one read of each bus."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        both_act = self.flags.on("ENABLE_KAFKA") and self.flags.on("ENABLE_REDIS_WRITE")
        parts = [[t] for t in topics] if both_act else [list(topics)]
        while True:
            out: list[Delivery] = []
            for part in parts:
                for backend in (KAFKA, REDIS):
                    room = max_count - len(out)
                    if room <= 0:
                        return out
                    last = backend == REDIS and part is parts[-1]
                    wait = self._slice_ms(deadline - loop.time()) if last and not out else 0
                    got = await self.buses[backend].consume(part, group, consumer, room, wait)
                    out += await self._accept(backend, group, got)
            if out or loop.time() >= deadline:
                return out

    def _slice_ms(self, remaining_s: float) -> int:
        """How long the Redis read may block: briefly while Kafka delivers (its records
        arrive in the background), up to 100 ms while it is idle."""
        busy = time.monotonic() - self._recent[KAFKA] < 1.0
        return max(0, int(min(remaining_s * 1000, 2 if busy else 100)))

    async def _accept(self, backend: str, group: str, got: list[Delivery]) -> list[Delivery]:
        if not got:
            return []
        now_ms = int(time.time() * 1000)
        self._recent[backend] = time.monotonic()
        figures = self._figures[backend]
        acting: list[Delivery] = []
        copies: list[Delivery] = []
        for d in got:
            headers = d.message.headers
            via = headers.get(VIA)
            if via is not None and via != backend:
                copies.append(d)
                continue
            acting.append(
                Delivery(d.topic, f"{backend[0]}|{d.id}", d.message, handed_over=d.handed_over)
            )
            if TS in headers:
                sent_ms = int(headers[TS])
                figures.acted(sent_ms // 1000, max(now_ms - sent_ms, 0), d.handed_over)
        if copies:
            await self.buses[backend].ack(group, copies)
        return acting

    def _split(self, deliveries: Sequence[Delivery]) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {REDIS: [], KAFKA: []}
        for d in deliveries:
            tag, _, id = d.id.partition("|")
            out[KAFKA if tag == "k" else REDIS].append(Delivery(d.topic, id, d.message))
        return out

    async def publish_and_ack(
        self, messages: Sequence[Message], group: str, deliveries: Sequence[Delivery]
    ) -> None:
        """Acknowledge the deliveries once their replies are out: all of them, or, when one
        bus failed, those of runs none of whose messages are left."""
        try:
            await self.publish(messages)
        except PartlyPublished as e:
            runs = {m.key for m in e.messages}
            await self.ack(group, [d for d in deliveries if d.message.key not in runs])
            held = [d for d in deliveries if d.message.key in runs]
            raise PartlyPublished(str(e), e.messages, held) from e
        await self.ack(group, deliveries)

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        for backend, mine in self._split(deliveries).items():
            if mine:
                await self.buses[backend].ack(group, mine)

    async def touch(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        for backend, mine in self._split(deliveries).items():
            if mine:
                await self.buses[backend].touch(group, consumer, mine)

    async def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        """To the dead-letter topic of the bus it came from, under the id its consumer saw
        (which names that bus)."""
        for backend, mine in self._split([delivery]).items():
            if mine:
                await self.buses[backend].publish([dead_letter_message(group, delivery, reason)])
                await self.buses[backend].ack(group, mine)

    async def depth(self, topic: str) -> int:
        """The depth of the bus messages are acted on through now: Redis while Kafka takes
        no runs, Kafka once Redis is off. While both take runs, the sum: an upper bound
        (a message copied to both counts twice). Messages routed before a flag moved wait
        on the other bus uncounted until they are read."""
        if not self.flags.on("ENABLE_KAFKA"):
            return await self.buses[REDIS].depth(topic)
        if not self.flags.on("ENABLE_REDIS_WRITE"):
            return await self.buses[KAFKA].depth(topic)
        return sum([await bus.depth(topic) for bus in self.buses.values()])

    async def close(self) -> None:
        for task in list(self._to_kafka):
            task.cancel()
        for bus in self.buses.values():
            await bus.close()

    def figures(self) -> dict[str, Any]:
        """`{"buses": {bus: {sent, failed, routed, acted, handed_over, slots}}}`: totals
        since this bus was made, and by the second of publication (migration/slots.py)."""
        now_s = int(time.time())
        buses = {name: f.as_dict(now_s) for name, f in self._figures.items()}
        return {"buses": buses, "writer": self._cid_prefix}


async def _fail(error: InfraError) -> None:
    raise error


def _no_answer(stalled_s: float) -> InfraError:
    return InfraError(f"kafka publish: no answer from the broker for {stalled_s:.1f} s")
