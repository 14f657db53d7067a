"""A group's member in this process: one Kafka consumer fetching in its own thread, and what
it fetched, held and can commit (see headrace/bus/kafka/__init__.py)."""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from headrace.bus.base import Delivery
from headrace.events import Message

log = logging.getLogger(__name__)

TopicKey = tuple[str, int]  # (kafka topic, partition)


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


class Group:
    """One Kafka consumer (a group member) and what it fetched: ready records per topic,
    records handed out (held), and per partition what can be committed. Everything here
    runs on the event loop except `_fetch` and the rebalance callbacks (fetch thread),
    which talk to it through `call_soon_threadsafe` and `_lock`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        consumer: Consumer,
        name: str,
        kafka_group: str,
        *,
        visibility_ms: int,
        max_buffered: int,
    ) -> None:
        self.loop = loop
        self.consumer = consumer
        self.name = name
        self.kafka_group = kafka_group
        self.visibility_s = visibility_ms / 1000
        self.max_buffered = max_buffered
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
        if self.buffered > self.max_buffered:  # again after each rebalance
            self.consumer.pause(self.consumer.assignment())
            paused = True
        elif paused and self.buffered < self.max_buffered // 2:
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

    def _handed_over(self, name: str, partition: int, timestamp: tuple[int, int]) -> bool:
        """Whether a record was written before its partition was assigned here."""
        kind, written_ms = timestamp
        at = self.assigned_at.get((name, partition))
        return kind != TIMESTAMP_NOT_AVAILABLE and at is not None and written_ms < at

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
            handed = self._handed_over(name, partition, r.timestamp())
            self.ready[topic].append(
                Delivery(topic, f"{partition}-{offset}", message, handed_over=handed)
            )
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
