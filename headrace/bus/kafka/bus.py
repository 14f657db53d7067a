"""KafkaBus: topics, the producer and its delivery reports; each group's consumer is a
Group (group.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
from headrace.bus.kafka.group import Group
from headrace.errors import InfraError
from headrace.events import Message

log = logging.getLogger(__name__)


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
        self._generation = 0  # of the producer: errors of a replaced one replace nothing
        self._topics: dict[str, str] = {}  # kafka name -> topic, for those known to exist
        self._groups: dict[str, Group] = {}
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
            await asyncio.wait_for(await self._send(messages), self.timeout_s + 5)
        except TimeoutError as e:
            raise InfraError("kafka publish: no delivery report in time") from e

    async def _send(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        """Hand `messages` to the producer without waiting for the broker: the future ends
        when the broker acknowledged them all, or with the first InfraError."""
        await self._ensure_topics(list(dict.fromkeys(m.topic for m in messages)))
        self._start_poller()
        renew = functools.partial(self._renew_if_current, self._generation)
        batch = _Batch(asyncio.get_running_loop(), len(messages), renew)
        with _edge("publish"):
            for m in messages:
                await self._produce(m, batch.delivered)
        if not messages:
            batch.future.set_result(None)
        return batch.future

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

    async def _group(self, group: str, topics: Sequence[str]) -> Group:
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
            consumer = Consumer(config, logger=log)
            g = Group(
                asyncio.get_running_loop(), consumer, group, kafka_group,
                visibility_ms=self.visibility_ms, max_buffered=self.max_buffered,
            )  # fmt: skip
            self._groups[group] = g
        g.subscribe({self._name(t): t for t in topics})
        return g

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

    def _depth(self, name: str, groups: list[Group]) -> int:
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
