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
(best effort: a failed copy is counted, never raised).

Consumers read both buses and act only on the copy that arrived `via` its bus; the other
copy is acknowledged and dropped. A message without routing headers (published before the
migration began) is acted on wherever it arrives.

`figures()` gives what the monitor needs, per bus: messages sent and failed (bus errors,
never the users' task failures), and the publish-to-consume latency of the messages acted
on, as a histogram; counters since the process started, so a reader that misses a report
loses nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from headrace.bus.base import Bus, Delivery, publish_then_ack
from headrace.errors import InfraError
from headrace.events import Message
from headrace.migration.slots import FAILED, ROUTED, SENT, BusSlots

if TYPE_CHECKING:  # imported by services/adapters.py, only when configured
    from headrace.bus.kafka import KafkaBus
    from headrace.bus.redis import RedisBus

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


class MigratingBus:
    durable = True

    def __init__(
        self,
        redis: RedisBus,
        kafka: KafkaBus,
        flags: Mapping[str, bool | int],
        pins: PinBook,
    ) -> None:
        self.redis = redis
        self.kafka = kafka
        self.buses: dict[str, Bus] = {REDIS: redis, KAFKA: kafka}
        self.flags = flags  # a live view: the process's flag watcher updates it
        self.pins = pins
        self._pin_cache: OrderedDict[str, str] = OrderedDict()
        self._kafka_was_on = False
        self._figures = {REDIS: BusFigures(), KAFKA: BusFigures()}
        self._recent: dict[str, float] = {REDIS: 0.0, KAFKA: 0.0}  # last delivery, monotonic
        self._cids = itertools.count()
        self._cid_prefix = uuid.uuid4().hex[:12]  # this bus's publishes

    @property
    def description(self) -> str:
        return f"migrating: {self.redis.description} + {self.kafka.description}"

    # routing

    def choose(self, run_id: str) -> str:
        share = int(self.flags.get("KAFKA_TRAFFIC_PERCENT", 0))
        on = bool(self.flags.get("ENABLE_KAFKA"))
        return KAFKA if on and in_kafka_share(run_id, share) else REDIS

    def via(self, pin: str) -> str:
        if not self.flags.get("ENABLE_KAFKA"):
            return REDIS
        if pin == KAFKA or not self.flags.get("ENABLE_REDIS_WRITE", True):
            return KAFKA
        return REDIS

    def _copies(self, via: str) -> set[str]:
        out = {via}
        if self.flags.get("ENABLE_KAFKA_WRITE"):
            out.add(KAFKA)
        if self.flags.get("ENABLE_REDIS_WRITE", True):
            out.add(REDIS)
        return out

    async def _pins_of(self, messages: Sequence[Message]) -> dict[str, str]:
        kafka_on = bool(self.flags.get("ENABLE_KAFKA"))
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
        if not messages:
            return
        pins = await self._pins_of(messages)
        now_ms = int(time.time() * 1000)
        now, second = str(now_ms), now_ms // 1000
        out: dict[str, list[Message]] = {REDIS: [], KAFKA: []}
        acting: set[str] = set()
        for m in messages:
            pin = pins[m.key]
            via = self.via(pin)
            acting.add(via)
            self._figures[via].count("routed", ROUTED, second)
            copies = self._copies(via)
            headers = {
                **m.headers,
                PIN: pin,
                VIA: via,
                COPIES: ",".join(sorted(copies)),
                MID: m.headers.get(MID) or message_id(m),
                CID: f"{self._cid_prefix}-{next(self._cids)}",
                TS: now,
            }
            routed = Message(m.topic, m.key, m.payload, headers)
            for backend in copies:
                out[backend].append(routed)
        kafka_done = await self._send_kafka(out[KAFKA], KAFKA in acting, second)
        await self._publish_redis(out[REDIS], REDIS in acting, second)
        if kafka_done is not None and KAFKA in acting:
            try:
                await asyncio.wait_for(kafka_done, self.kafka.timeout_s + 5)
            except TimeoutError as e:
                raise InfraError("kafka publish: no delivery report in time") from e

    async def _send_kafka(
        self, messages: list[Message], acting: bool, second: int
    ) -> asyncio.Future[None] | None:
        if not messages:
            return None
        figures = self._figures[KAFKA]
        figures.count("sent", SENT, second, len(messages))
        try:
            done = await self.kafka.send(messages)
        except InfraError:
            figures.count("failed", FAILED, second, len(messages))
            if acting:
                raise
            return None

        def count(f: asyncio.Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                figures.count("failed", FAILED, second, len(messages))

        done.add_done_callback(count)
        return done

    async def _publish_redis(self, messages: list[Message], acting: bool, second: int) -> None:
        if not messages:
            return
        figures = self._figures[REDIS]
        figures.count("sent", SENT, second, len(messages))
        try:
            await self.buses[REDIS].publish(messages)
        except InfraError as e:
            figures.count("failed", FAILED, second, len(messages))
            if acting:
                raise
            log.warning("a Redis copy was not written: %s", e)

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
        await publish_then_ack(self, messages, group, deliveries)

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        for backend, mine in self._split(deliveries).items():
            if mine:
                await self.buses[backend].ack(group, mine)

    async def touch(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        for backend, mine in self._split(deliveries).items():
            if mine:
                await self.buses[backend].touch(group, consumer, mine)

    async def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        for backend, mine in self._split([delivery]).items():
            for d in mine:
                await self.buses[backend].dead_letter(group, d, reason)

    async def depth(self, topic: str) -> int:
        return sum([await bus.depth(topic) for bus in self.buses.values()])

    async def close(self) -> None:
        for bus in self.buses.values():
            await bus.close()

    def figures(self) -> dict[str, Any]:
        """`{"buses": {bus: {sent, failed, routed, acted, handed_over, slots}}}`: totals
        since this bus was made, and by the second of publication (migration/slots.py)."""
        now_s = int(time.time())
        return {"buses": {name: f.as_dict(now_s) for name, f in self._figures.items()}}
