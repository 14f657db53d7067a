"""The migrating bus (ARCHITECTURE §4, phases 2–3): Redis Streams and Kafka side by side,
steered live by the flags; built when both `HEADRACE_BUS=redis://...` and
`HEADRACE_KAFKA_URL=kafka://...` are set.

Every run is pinned to one bus the first time one of its messages is published: Kafka when
`ENABLE_KAFKA` is on and `crc32(run_id) % 100 < KAFKA_TRAFFIC_PERCENT`, else Redis. The pin
is recorded in the store (`run_pins`), so a change of the percentage moves new runs only.
Each message then carries these headers (added here, kept by the consumers' replies):

    hr-pin     the bus its run is pinned to
    hr-via     the copy consumers act on: the pin, unless the flags moved it (below)
    hr-copies  the buses that got a copy
    hr-mid     a content id (topic, key, payload): the same in both copies and on a re-publish
    hr-cid     a copy id: the same in the copies of one publish, new on each publish (a
               re-publish after a rollback is a message of its own for the shadow)
    hr-ts      publish time, ms since the epoch

`via` is Kafka for a Kafka-pinned run while `ENABLE_KAFKA` is on, and for every run once
`ENABLE_REDIS_WRITE` is off (with `ENABLE_KAFKA` on); otherwise Redis. So turning
`ENABLE_KAFKA` off (a rollback) moves every run back to Redis at once, in every process.
A message goes to its `via` bus (awaited: a failure there fails the publish), plus a copy
to Kafka while `ENABLE_KAFKA_WRITE` is on and to Redis while `ENABLE_REDIS_WRITE` is on
(best effort: a failed copy is counted, never raised; a copy to Kafka is never awaited).
The buses fail apart: when one cannot take its part, the other's is out and
PartlyPublished names what is left; a Kafka silent for KAFKA_STALL_S fails fast.

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
import contextlib
import functools
import hashlib
import itertools
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from headrace.bus.base import Bus, Delivery, PartlyPublished, dead_letter_message
from headrace.errors import InfraError
from headrace.events import Message
from headrace.flags.definitions import FlagValues
from headrace.migration.slots import FAILED, ROUTED, SENT, BusSlots

log = logging.getLogger(__name__)

PIN = "hr-pin"
VIA = "hr-via"
COPIES = "hr-copies"
MID = "hr-mid"
CID = "hr-cid"
TS = "hr-ts"
REDIS, KAFKA = "redis", "kafka"
Backend = Literal["redis", "kafka"]
_CACHE_SIZE = 100_000
KAFKA_STALL_S = 3.0  # a publish unanswered this long: Kafka is not answering, fail fast
KAFKA_COPY_BACKLOG = 50_000  # copies beyond this many held by the producer are dropped


class PinBook(Protocol):
    """Where pins are recorded: the store."""

    async def pin_runs(self, choices: Mapping[str, str], now_ms: int) -> dict[str, str]: ...


def message_id(m: Message) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in (m.topic.encode(), m.key.encode(), m.payload):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.hexdigest()


def in_kafka_share(run_id: str, percent: int) -> bool:
    """Whether a run falls in the first `percent` of 100 buckets (crc32 of its id)."""
    try:
        raw = uuid.UUID(run_id).bytes
    except ValueError:
        raw = run_id.encode()
    return zlib.crc32(raw) % 100 < percent


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


class KafkaPart(Bus, Protocol):
    """What the migrating bus asks of its Kafka bus beyond the Bus protocol: to hand over
    messages without waiting for the broker, and how the broker is doing."""

    async def send(self, messages: Sequence[Message]) -> asyncio.Future[None]: ...

    def stalled_s(self) -> float: ...

    def backlog(self) -> int: ...

    def handed_over(self, group: str, delivery: Delivery, published_ms: int) -> bool: ...


class MigratingBus:
    durable = True

    def __init__(
        self,
        redis: Bus,
        kafka: KafkaPart,
        flags: Mapping[str, bool | int],
        pins: PinBook,
    ) -> None:
        self.redis = redis
        self.kafka = kafka
        self.buses: dict[str, Bus] = {REDIS: redis, KAFKA: kafka}
        self.flags = FlagValues(flags)  # a live view: the process's flag watcher updates it
        self.pins = pins
        self._pin_cache: OrderedDict[str, str] = OrderedDict()
        self._kafka_was_on = False
        self._figures = {REDIS: BusFigures(), KAFKA: BusFigures()}
        self._recent: dict[str, float] = {REDIS: 0.0, KAFKA: 0.0}  # last delivery, monotonic
        self._cids = itertools.count()
        self._copying: set[asyncio.Task[None]] = set()  # copies to Kafka on their way
        self._cid_prefix = uuid.uuid4().hex[:12]  # this bus's publishes (the shadow's "writer")

    @property
    def description(self) -> str:
        return f"migrating: {self.redis.description} + {self.kafka.description}"

    # routing

    def choose(self, run_id: str) -> str:
        share = self.flags.percent("KAFKA_TRAFFIC_PERCENT")
        on = self.flags.on("ENABLE_KAFKA")
        return KAFKA if on and in_kafka_share(run_id, share) else REDIS

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

    async def _pins_of(self, messages: Sequence[Message]) -> dict[str, str]:
        kafka_on = self.flags.on("ENABLE_KAFKA")
        if self._kafka_was_on and not kafka_on:
            self._pin_cache.clear()  # a rollback re-pins runs in the store: read them again
        self._kafka_was_on = kafka_on
        known: dict[str, str] = {}
        missing: dict[str, str] = {}
        for m in messages:
            pin = m.headers.get(PIN) or self._pin_cache.get(m.key)
            if pin is not None:
                known[m.key] = pin
            elif m.key not in missing:
                missing[m.key] = self.choose(m.key)
        if missing:
            found = await self.pins.pin_runs(missing, int(time.time() * 1000))
            for run_id, pin in found.items():
                self._remember(run_id, pin)
            known |= found
        return known

    def _remember(self, run_id: str, pin: str) -> None:
        self._pin_cache[run_id] = pin
        if len(self._pin_cache) > _CACHE_SIZE:
            self._pin_cache.popitem(last=False)

    # the Bus protocol

    async def publish(self, messages: Sequence[Message]) -> None:
        """Each message to its `via` bus (awaited), its copies best effort. The buses fail
        apart: when one cannot take its messages, the other's still go, and PartlyPublished
        names those that did not."""
        if not messages:
            return
        pins = await self._pins_of(messages)
        now_ms = int(time.time() * 1000)
        now, second = str(now_ms), now_ms // 1000
        acting: dict[str, list[Message]] = {REDIS: [], KAFKA: []}
        copies: dict[str, list[Message]] = {REDIS: [], KAFKA: []}
        for m in messages:
            pin = pins[m.key]
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
            routed = Message(m.topic, m.key, m.payload, headers)
            acting[via].append(routed)
            for backend in written - {via}:
                copies[backend].append(routed)
        kafka_done = await self._send_kafka(acting[KAFKA], second)
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

    async def _send_kafka(
        self, messages: list[Message], second: int
    ) -> asyncio.Future[None] | None:
        """Hand the messages routed through Kafka to its producer; a future of the broker's
        answer. A future that fails at once when Kafka is not answering (fail fast: no
        publish waits behind a frozen broker)."""
        if not messages:
            return None
        figures = self._figures[KAFKA]
        figures.count("sent", SENT, second, len(messages))
        stalled = self.kafka.stalled_s()
        try:
            if stalled > KAFKA_STALL_S:
                raise InfraError(f"kafka publish: no answer from the broker for {stalled:.1f} s")
            done = await self.kafka.send(messages)
        except InfraError as e:
            figures.count("failed", FAILED, second, len(messages))
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(e)
            return failed
        done.add_done_callback(functools.partial(self._count_kafka, second, len(messages)))
        return done

    def _count_kafka(self, second: int, n: int, done: asyncio.Future[None]) -> None:
        if done.cancelled() or done.exception() is not None:
            self._figures[KAFKA].count("failed", FAILED, second, n)

    async def _kafka_answer(self, done: asyncio.Future[None]) -> None:
        """The broker's answer to a publish; InfraError once Kafka has left a publish
        unanswered for KAFKA_STALL_S (sooner than the producer's own timeout)."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), 0.25)
            except TimeoutError:
                stalled = self.kafka.stalled_s()
                if stalled > KAFKA_STALL_S:
                    msg = f"kafka publish: no answer from the broker for {stalled:.1f} s"
                    raise InfraError(msg) from None

    def _copy_kafka(self, messages: list[Message], second: int) -> None:
        """Copies to Kafka, never awaited: dropped (and counted failed) while Kafka does not
        answer or its producer holds more than KAFKA_COPY_BACKLOG messages."""
        if not messages:
            return
        figures = self._figures[KAFKA]
        figures.count("sent", SENT, second, len(messages))
        sick = self.kafka.stalled_s() > KAFKA_STALL_S
        if sick or self.kafka.backlog() + len(messages) > KAFKA_COPY_BACKLOG:
            figures.count("failed", FAILED, second, len(messages))
            return
        task = asyncio.create_task(self._send_copies(messages, second))
        self._copying.add(task)
        task.add_done_callback(self._copying.discard)

    async def _send_copies(self, messages: list[Message], second: int) -> None:
        try:
            done = await self.kafka.send(messages)
        except InfraError:
            self._figures[KAFKA].count("failed", FAILED, second, len(messages))
            return
        done.add_done_callback(functools.partial(self._count_kafka, second, len(messages)))
        with contextlib.suppress(InfraError):
            await done

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            out: list[Delivery] = []
            for backend in (KAFKA, REDIS):
                room = max_count - len(out)
                if room <= 0:
                    break
                wait = 0 if out or backend == KAFKA else self._slice_ms(deadline - loop.time())
                got = await self.buses[backend].consume(topics, group, consumer, room, wait)
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
            pin = headers.get(PIN)
            if pin is not None:
                self._remember(d.message.key, pin)
            via = headers.get(VIA)
            if via is not None and via != backend:
                copies.append(d)
                continue
            acting.append(Delivery(d.topic, f"{backend[0]}|{d.id}", d.message))
            if TS in headers:
                sent_ms = int(headers[TS])
                handed = backend == KAFKA and self.kafka.handed_over(group, d, sent_ms)
                figures.acted(sent_ms // 1000, max(now_ms - sent_ms, 0), handed)
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
        return sum([await bus.depth(topic) for bus in self.buses.values()])

    async def close(self) -> None:
        for task in list(self._copying):
            task.cancel()
        for bus in self.buses.values():
            await bus.close()

    def figures(self) -> dict[str, Any]:
        """`{"buses": {bus: {sent, failed, routed, acted, handed_over, slots}}}`: totals
        since this bus was made, and by the second of publication (migration/slots.py)."""
        now_s = int(time.time())
        buses = {name: f.as_dict(now_s) for name, f in self._figures.items()}
        return {"buses": buses, "writer": self._cid_prefix}
