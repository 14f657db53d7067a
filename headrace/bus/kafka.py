"""The Kafka bus (ARCHITECTURE §4, phases 2–3) on confluent-kafka (librdkafka).

Topics: `{prefix}{topic}` (characters Kafka refuses become `-`), created on first use with
`partitions` partitions and `replication` replicas. Every message is keyed by its run id, so
a run's messages keep their order on one partition; its headers travel as Kafka headers.

Publish: one idempotent `Producer` (acks=all) per bus, served by a poll thread; `publish`
returns when the broker acknowledged every message, and raises InfraError when it did not
within `timeout_s`. A producer that hit a fatal error (out of sequence after a broker lost
acknowledged writes) fails what it holds and is replaced.

Consume: one Kafka `Consumer` per group per process, subscribed to every topic the group
was asked for, fetching in its own thread into per-topic buffers (paused past
`max_buffered` records). The consumers a caller names within a group share those buffers.
A delivery's id is `partition-offset`.

Acknowledge: Kafka commits a position per partition, not a message. An ack marks its offset
done, and the partition's position moves to just past the longest run of done offsets; the
fetch thread commits positions that moved. So an out-of-order ack waits for the ones before
it, and a crash redelivers at most what was not yet committed (at-least-once).

Redelivery: within a process, a delivery neither acknowledged nor touched for
`visibility_ms` goes to the next `consume` of its group. Across processes, the group's
rebalance does it: when a member dies (no heartbeat for `session_timeout_ms`) or leaves,
its partitions move with their committed positions, so its unacknowledged records are read
again by the new owner. When this process loses a partition, it commits what is done and
forgets the rest.

Depth is the broker's high watermark minus the group's committed position, summed over the
partitions, for the groups this process knows (docs/kafka.md: tansu's watermarks are wrong
on multi-partition topics fed with batches).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewTopic

from headrace.bus.base import Delivery, dead_letter_message, publish_then_ack
from headrace.errors import InfraError
from headrace.events import Message

log = logging.getLogger(__name__)

TopicKey = tuple[str, int]  # (kafka topic, partition)


def kafka_name(prefix: str, topic: str) -> str:
    return re.sub(r"[^a-zA-Z0-9._-]", "-", prefix + topic)[:249]


@contextlib.contextmanager
def _edge(operation: str) -> Iterator[None]:
    try:
        yield
    except KafkaException as e:
        raise InfraError(f"kafka {operation}: {e.args[0] if e.args else e}") from e


class KafkaBus:
    durable = True

    def __init__(
        self,
        bootstrap: str,
        *,
        prefix: str = "headrace.",
        visibility_ms: int = 30_000,
        partitions: int = 64,
        replication: int = 1,
        session_timeout_ms: int = 6_000,
        fetch_wait_ms: int = 10,
        timeout_s: float = 10.0,
        max_buffered: int = 10_000,
        queue_max: int = 100_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.visibility_ms = visibility_ms
        self.partitions = partitions
        self.replication = replication
        self.session_timeout_ms = session_timeout_ms
        self.fetch_wait_ms = fetch_wait_ms
        self.timeout_s = timeout_s
        self.max_buffered = max_buffered
        self.queue_max = queue_max  # messages the producer holds before publish waits
        self._admin = AdminClient({"bootstrap.servers": bootstrap}, logger=log)
        self._producer = self._new_producer()
        self._renew = threading.Event()  # the producer hit a fatal error: replace it
        self._in_flight: dict[_Batch, float] = {}  # publishes awaiting reports: since when
        self._generation = 0  # of the producer: errors of a replaced one replace nothing
        self._topics: dict[str, str] = {}  # kafka name -> topic, for those known to exist
        self._groups: dict[str, _Group] = {}
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None

    def _new_producer(self) -> Producer:
        config = {
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "message.timeout.ms": int(self.timeout_s * 1000),
            "queue.buffering.max.messages": self.queue_max,
        }
        return Producer(config, logger=log)

    @property
    def description(self) -> str:
        return f"kafka {self.bootstrap} prefix {self.prefix}"

    def _name(self, topic: str) -> str:
        return kafka_name(self.prefix, topic)

    async def _ensure_topics(self, topics: Sequence[str]) -> None:
        names = {self._name(t): t for t in topics}
        missing = [n for n in names if n not in self._topics]
        if not missing:
            return
        new = [NewTopic(n, self.partitions, self.replication) for n in missing]
        futures = self._admin.create_topics(new, operation_timeout=self.timeout_s)
        for name, future in futures.items():
            try:
                await asyncio.to_thread(future.result, self.timeout_s)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise InfraError(f"kafka create topic {name}: {e.args[0]}") from e
            except TimeoutError as e:
                raise InfraError(f"kafka create topic {name}: no answer in time") from e
            self._topics[name] = names[name]

    async def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        try:
            await asyncio.wait_for(await self.send(messages), self.timeout_s + 5)
        except TimeoutError as e:
            raise InfraError("kafka publish: no delivery report in time") from e

    async def send(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        """Hand `messages` to the producer without waiting for the broker: the future ends
        when the broker acknowledged them all, or with the first InfraError."""
        await self._ensure_topics(list(dict.fromkeys(m.topic for m in messages)))
        self._start_poller()
        renew = functools.partial(self._renew_if_current, self._generation)
        batch = _Batch(asyncio.get_running_loop(), len(messages), renew)
        self._in_flight[batch] = time.monotonic()
        batch.future.add_done_callback(lambda _: self._in_flight.pop(batch, None))
        with _edge("publish"):
            for m in messages:
                await self._produce(m, batch.delivered)
        if not messages:
            batch.future.set_result(None)
        return batch.future

    def stalled_s(self) -> float:
        """How long the oldest publish still in flight has waited for the broker (0: none):
        seconds mean a broker that does not answer (frozen, cut off)."""
        oldest = min(self._in_flight.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def backlog(self) -> int:
        """Messages the producer holds, not yet acknowledged by the broker."""
        return len(self._producer)

    async def _produce(self, m: Message, on_delivery: Callable[[Any, Any], None]) -> None:
        headers: list[tuple[str, str | bytes | None]] = [(k, v) for k, v in m.headers.items()]
        while True:
            try:
                self._producer.produce(
                    self._name(m.topic), m.payload, m.key.encode(), headers=headers,
                    on_delivery=on_delivery,
                )  # fmt: skip
                return
            except BufferError:  # the local queue is full: the poll thread drains it
                await asyncio.sleep(0.01)
            except KafkaException as e:
                self._failed(e)
                raise

    def _start_poller(self) -> None:
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="kafka-producer", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.05)
            except KafkaException as e:
                self._failed(e)
            if self._renew.is_set():
                self._renew_producer()

    def _failed(self, e: KafkaException) -> None:
        err = e.args[0] if e.args else None
        if isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL):
            self._renew.set()
        else:
            log.warning("kafka producer: %s", err)

    def _renew_if_current(self, generation: int) -> None:
        """A delivery report says the producer is fenced or out of sequence: replace it,
        unless the report came from one already replaced (its purged messages)."""
        if generation == self._generation:
            self._renew.set()

    def _renew_producer(self) -> None:
        """An idempotent producer stops for good after a fatal error (a broker that lost
        writes it had acknowledged leaves it out of sequence). Fail what it still holds, so
        those publishes raise and are sent again by their callers, and take a new one."""
        old, self._producer = self._producer, self._new_producer()
        self._generation += 1
        self._renew.clear()
        log.error("kafka producer: fatal error; a new producer takes over")
        with contextlib.suppress(KafkaException):
            old.purge()
        for _ in range(10):  # serve the failed deliveries' callbacks
            with contextlib.suppress(KafkaException):
                if old.poll(0) == 0:
                    break

    async def consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        if max_count <= 0:
            return []
        await self._ensure_topics(topics)
        g = await self._group(group, topics)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            arrival = g.arrival
            out = g.take(topics, consumer, max_count, time.monotonic())
            remaining = deadline - loop.time()
            if out or remaining <= 0:
                return out
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival.wait(), min(remaining, g.next_expiry_s()))

    async def _group(self, group: str, topics: Sequence[str]) -> _Group:
        g = self._groups.get(group)
        if g is None:
            kafka_group = kafka_name(self.prefix, group)
            config = {
                "bootstrap.servers": self.bootstrap,
                "group.id": kafka_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self.session_timeout_ms,
                "partition.assignment.strategy": "range",  # tansu: cooperative-sticky breaks
                "fetch.wait.max.ms": self.fetch_wait_ms,
            }
            g = _Group(asyncio.get_running_loop(), Consumer(config, logger=log), self, group)
            self._groups[group] = g
        g.subscribe({self._name(t): t for t in topics})
        return g

    def handed_over(self, group: str, delivery: Delivery, published_ms: int) -> bool:
        """Whether `delivery` was published before its partition was (re)assigned to this
        process: it waited for a rebalance (a member died or joined) or for the group's
        first member, so its age says nothing of the broker."""
        g = self._groups.get(group)
        return g is not None and g.handed_over(delivery, published_ms)

    def assigned(self, group: str) -> int:
        """Partitions the group's member in this process was ever given (0: not joined)."""
        g = self._groups.get(group)
        return len(g.assigned_at) if g is not None else 0

    def buffered(self, group: str) -> int:
        """Records of `group` fetched by this process and not yet handed out (a gauge)."""
        g = self._groups.get(group)
        return g.buffered if g is not None else 0

    async def publish_and_ack(
        self, messages: Sequence[Message], group: str, deliveries: Sequence[Delivery]
    ) -> None:
        await publish_then_ack(self, messages, group, deliveries)

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        g = self._groups.get(group)
        if g is not None:
            g.ack(deliveries)

    async def touch(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        g = self._groups.get(group)
        if g is not None:
            g.touch(consumer, deliveries, time.monotonic())

    async def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        await self.publish([dead_letter_message(group, delivery, reason)])
        await self.ack(group, [delivery])

    async def depth(self, topic: str) -> int:
        """High watermark minus the committed position of the slowest group this process
        knows, summed over partitions (all records while it knows none). An upper bound:
        records delivered but not acknowledged are counted."""
        await self._ensure_topics([topic])
        name = self._name(topic)
        groups = [g for g in self._groups.values() if name in g.wanted]
        return await asyncio.to_thread(self._depth, name, groups)

    def _depth(self, name: str, groups: list[_Group]) -> int:
        with _edge("depth"):
            meta = self._admin.list_topics(name, timeout=self.timeout_s).topics[name]
            tps = [TopicPartition(name, p) for p in meta.partitions]
            latest, earliest = OffsetSpec.latest(), OffsetSpec.earliest()  # type: ignore[no-untyped-call]
            ends = self._admin.list_offsets(dict.fromkeys(tps, latest))
            starts = self._admin.list_offsets(dict.fromkeys(tps, earliest))
            high = [ends[tp].result(self.timeout_s).offset for tp in tps]
            low = [starts[tp].result(self.timeout_s).offset for tp in tps]
            slowest = high
            for g in groups:
                request = [ConsumerGroupTopicPartitions(g.kafka_group, tps)]
                (future,) = self._admin.list_consumer_group_offsets(request).values()
                done = future.result(self.timeout_s).topic_partitions or []
                at = {tp.partition: tp.offset for tp in done}
                slowest = [
                    min(s, max(at.get(tp.partition, lo), lo))
                    for s, tp, lo in zip(slowest, tps, low, strict=True)
                ]
            if not groups:
                slowest = low
            return sum(max(hi - pos, 0) for hi, pos in zip(high, slowest, strict=True))

    async def close(self) -> None:
        self._closed.set()
        for g in self._groups.values():
            await asyncio.to_thread(g.stop)
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
        await asyncio.to_thread(self._producer.flush, self.timeout_s)
        self._in_flight.clear()  # its batches refer back to this bus: no cycle outlives it


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode()


def _pairs(headers: Any) -> list[tuple[str, str | bytes | None]]:
    """A record's headers: a list of pairs as the consumer gives them (typed loosely)."""
    return list(headers or ())


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()


# the broker no longer takes this producer's writes (fenced after a pause, or its sequence
# lost): a new producer (a new id) must take over
_RENEW_ON = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
    }
)


class _Batch:
    """Counts the delivery reports of one publish; its future ends with the first error."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int, renew: Callable[[], None]) -> None:
        self.loop = loop
        self.left = n
        self.renew = renew
        self.future: asyncio.Future[None] = loop.create_future()

    def delivered(self, err: KafkaError | None, _msg: KafkaMessage) -> None:  # poll thread
        self.left -= 1
        if err is not None:
            if err.fatal() or err.code() in _RENEW_ON:
                self.renew()
            self.loop.call_soon_threadsafe(self._end, InfraError(f"kafka publish: {err}"))
        elif self.left == 0:
            self.loop.call_soon_threadsafe(self._end, None)

    def _end(self, error: InfraError | None) -> None:
        if self.future.done():
            return
        if error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(error)


@dataclass
class _Partition:
    """Offsets fetched and not yet committed, in order; those among them that are done."""

    outstanding: collections.deque[int] = field(default_factory=collections.deque)
    live: set[int] = field(default_factory=set)  # fetched, not yet acknowledged
    done: set[int] = field(default_factory=set)
    seen: int = -1  # the highest offset fetched


@dataclass
class _Held:
    consumer: str
    expires: float
    delivery: Delivery


class _Group:
    """One Kafka consumer (a group member) and what it fetched: ready records per topic,
    records handed out (held), and per partition what can be committed. Everything here
    runs on the event loop except `_fetch` and the rebalance callbacks (fetch thread),
    which talk to it through `call_soon_threadsafe` and `_lock`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, consumer: Consumer, bus: KafkaBus, name: str
    ) -> None:
        self.loop = loop
        self.consumer = consumer
        self.bus = bus
        self.name = name
        self.kafka_group = kafka_name(bus.prefix, name)
        self.visibility_s = bus.visibility_ms / 1000
        self.wanted: dict[str, str] = {}  # kafka topic -> topic
        self.ready: dict[str, collections.deque[Delivery]] = collections.defaultdict(
            collections.deque
        )
        self.buffered = 0
        self.held: dict[tuple[str, str], _Held] = {}
        self.expiry: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
        self.parts: dict[TopicKey, _Partition] = {}
        self.assigned_at: dict[TopicKey, int] = {}  # ms since the epoch (fetch thread)
        self.arrival = asyncio.Event()
        self._lock = threading.Lock()
        self._to_commit: dict[TopicKey, int] = {}
        self._subscribed: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fetch, name=f"kafka-{name}", daemon=True)
        self._thread.start()

    def subscribe(self, topics: dict[str, str]) -> None:
        if topics.keys() <= self.wanted.keys():
            return
        self.wanted = {**self.wanted, **topics}  # the fetch thread subscribes on its next turn

    # the fetch thread

    def _fetch(self) -> None:
        paused = False
        while not self._stop.is_set():
            try:
                paused = self._fetch_once(paused)
            except KafkaException as e:  # this thread must outlive any error: it is the group
                log.warning("kafka consume (%s): %s", self.name, e)
                time.sleep(0.1)
        self._commit(asynchronous=False)
        self.consumer.close()

    def _fetch_once(self, paused: bool) -> bool:
        """Subscribe, pause or resume as needed, fetch once, commit; whether paused."""
        wanted = frozenset(self.wanted)
        if wanted != self._subscribed:
            self.consumer.subscribe(
                sorted(wanted),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._subscribed = wanted
        if not wanted:
            time.sleep(0.05)
            return paused
        if self.buffered > self.bus.max_buffered:  # again after each rebalance
            self.consumer.pause(self.consumer.assignment())
            paused = True
        elif paused and self.buffered < self.bus.max_buffered // 2:
            self.consumer.resume(self.consumer.assignment())
            paused = False
        # consume(n, timeout) waits for n records or the timeout: poll waits for one
        first = self.consumer.poll(0.05)
        records = [first, *self.consumer.consume(499, 0)] if first is not None else []
        good = [r for r in records if r.error() is None]
        for r in records:
            if r.error() is not None:
                log.warning("kafka consume (%s): %s", self.name, r.error())
        if good:
            self.loop.call_soon_threadsafe(self._arrived, good)
        self._commit(asynchronous=True)
        return paused

    def _commit(self, *, asynchronous: bool, only: set[TopicKey] | None = None) -> None:
        with self._lock:
            due = {k: v for k, v in self._to_commit.items() if only is None or k in only}
            for k in due:
                del self._to_commit[k]
        if not due:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in due.items()]
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:  # a redelivery at worst: the positions are safe to lose
            log.info("kafka commit (%s) failed: %s", self.name, e)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        at = int(time.time() * 1000)
        for tp in partitions:
            self.assigned_at[(tp.topic, tp.partition)] = at

    def handed_over(self, d: Delivery, published_ms: int) -> bool:
        name = next((n for n, t in self.wanted.items() if t == d.topic), None)
        at = self.assigned_at.get((name or "", int(d.id.partition("-")[0])))
        return at is not None and published_ms < at

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(asynchronous=False, only={(tp.topic, tp.partition) for tp in partitions})
        self._on_lost(_consumer, partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.loop.call_soon_threadsafe(self._forget, gone)

    # the event loop

    def _arrived(self, records: list[KafkaMessage]) -> None:
        for r in records:
            name, partition, offset = r.topic(), r.partition(), r.offset()
            topic = self.wanted.get(name or "")
            if name is None or topic is None or partition is None or offset is None:
                continue
            part = self.parts.setdefault((name, partition), _Partition())
            if offset <= part.seen:
                continue  # fetched again: already here
            part.seen = offset
            part.outstanding.append(offset)
            part.live.add(offset)
            headers = {k: _text(v) for k, v in _pairs(r.headers())}
            key = r.key()
            message = Message(topic, _text(key), _bytes(r.value()), headers)
            self.ready[topic].append(Delivery(topic, f"{partition}-{offset}", message))
            self.buffered += 1
        self.arrival.set()
        self.arrival = asyncio.Event()

    def _forget(self, gone: set[TopicKey]) -> None:
        for key in gone:
            self.parts.pop(key, None)
        for name, partition in gone:
            topic = self.wanted.get(name)
            if topic is None:
                continue
            prefix = f"{partition}-"
            queue = self.ready[topic]
            kept = collections.deque(d for d in queue if not d.id.startswith(prefix))
            self.buffered -= len(queue) - len(kept)
            self.ready[topic] = kept
            for hkey in [k for k in self.held if k[0] == topic and k[1].startswith(prefix)]:
                del self.held[hkey]  # the new owner reads it again

    def take(
        self, topics: Sequence[str], consumer: str, max_count: int, now: float
    ) -> list[Delivery]:
        out = self._expired(topics, max_count, now)
        for topic in topics:
            queue = self.ready.get(topic)
            while queue and len(out) < max_count:
                out.append(queue.popleft())
                self.buffered -= 1
        for d in out:
            self._hold(consumer, d, now)
        return out

    def _expired(self, topics: Sequence[str], room: int, now: float) -> list[Delivery]:
        out: list[Delivery] = []
        for topic in topics:
            heap = self.expiry.get(topic)
            while heap and len(out) < room and heap[0][0] <= now:
                expires, id = heapq.heappop(heap)
                held = self.held.get((topic, id))
                if held is not None and held.expires == expires:
                    out.append(held.delivery)
        return out

    def _hold(self, consumer: str, d: Delivery, now: float) -> None:
        expires = now + self.visibility_s
        self.held[(d.topic, d.id)] = _Held(consumer, expires, d)
        heapq.heappush(self.expiry[d.topic], (expires, d.id))

    def next_expiry_s(self) -> float:
        """Seconds until a held record may be redelivered (at most a second)."""
        soonest = min((h[0][0] for h in self.expiry.values() if h), default=None)
        if soonest is None:
            return 1.0
        return min(max(soonest - time.monotonic(), 0.001), 1.0)

    def touch(self, consumer: str, deliveries: Sequence[Delivery], now: float) -> None:
        for d in deliveries:
            if (d.topic, d.id) in self.held:
                self._hold(consumer, d, now)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        moved: dict[TopicKey, int] = {}
        names = {topic: name for name, topic in self.wanted.items()}
        for d in deliveries:
            self.held.pop((d.topic, d.id), None)
            name = names.get(d.topic)
            partition, _, offset_text = d.id.partition("-")
            key = (name or "", int(partition))
            part = self.parts.get(key)
            offset = int(offset_text)
            if part is None or offset not in part.live:
                continue  # acknowledged already, or the partition moved to another member
            part.live.discard(offset)
            part.done.add(offset)
            while part.outstanding and part.outstanding[0] in part.done:
                part.done.discard(part.outstanding.popleft())
            moved[key] = part.outstanding[0] if part.outstanding else part.seen + 1
        if moved:
            with self._lock:
                self._to_commit.update(moved)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
