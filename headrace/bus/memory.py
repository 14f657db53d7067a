"""The in-memory bus: the real thing for one process (`headrace dev`, `headrace run`, tests).

Messages live in this process only (`durable = False`): after a restart the runtime
republishes outstanding work from the store. Otherwise it keeps the whole Bus contract,
redelivery after `visibility_ms` included, like XAUTOCLAIM on a Redis stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Sequence

from headrace.bus.base import Delivery, dead_letter_message, publish_then_ack
from headrace.events import Message

Queue = tuple[str, str]  # (topic, group)


# a delivered, unacknowledged message: (delivery, consumer, monotonic time of its last
# delivery or touch); a tuple, as this is made once per message on the hot path
_Held = tuple[Delivery, str, float]


class MemoryBus:
    durable = False

    def __init__(self, *, visibility_ms: int = 30_000) -> None:
        self.visibility_s = visibility_ms / 1000
        self._queues: dict[Queue, deque[Delivery]] = {}  # not yet delivered
        self._groups: dict[str, list[str]] = {}  # topic -> groups
        self._backlog: dict[str, list[Delivery]] = {}  # topic -> messages before any group
        # (topic, group) -> id -> held message, ordered by time (a redelivery or a touch
        # moves it to the end), so the redelivery scan stops at the first fresh one
        self._pending: dict[Queue, dict[str, _Held]] = {}
        self._next_scan_s: dict[Queue, float] = {}
        self._waiters: dict[Queue, list[asyncio.Future[None]]] = {}
        self._ids = itertools.count(1)

    @property
    def description(self) -> str:
        return "memory"

    async def publish(self, messages: Sequence[Message]) -> None:
        for m in messages:
            delivery = Delivery(m.topic, str(next(self._ids)), m)
            groups = self._groups.get(m.topic)
            if not groups:
                self._backlog.setdefault(m.topic, []).append(delivery)
                continue
            for group in groups:
                self._queues[(m.topic, group)].append(delivery)
                self._wake((m.topic, group))

    def _wake(self, queue: Queue) -> None:
        for fut in self._waiters.pop(queue, ()):
            if not fut.done():
                fut.set_result(None)

    def _join(self, topic: str, group: str) -> deque[Delivery]:
        queue = self._queues.get((topic, group))
        if queue is None:
            queue = self._queues[(topic, group)] = deque(self._backlog.pop(topic, ()))
            self._groups.setdefault(topic, []).append(group)
            self._pending[(topic, group)] = {}
        return queue

    def _take(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int
    ) -> list[Delivery]:
        now = time.monotonic()
        out: list[Delivery] = []
        for topic in topics:
            self._join(topic, group)
            self._redeliver((topic, group), consumer, max_count - len(out), now, out)
        for topic in topics:
            queue = self._queues[(topic, group)]
            held = self._pending[(topic, group)]
            while queue and len(out) < max_count:
                d = queue.popleft()
                held[d.id] = (d, consumer, now)
                out.append(d)
        return out

    def _redeliver(
        self, queue: Queue, consumer: str, room: int, now: float, out: list[Delivery]
    ) -> None:
        """Append up to `room` messages of `queue` held past the visibility timeout. Runs
        at most every visibility/4 per queue (unless the last scan stopped for lack of room)
        and looks only at the expired ones and the first fresh one."""
        if room <= 0 or now < self._next_scan_s.get(queue, 0.0):
            return
        held = self._pending[queue]
        expired_before = now - self.visibility_s
        due: list[str] = []
        for id, (_, _, at_s) in held.items():
            if at_s > expired_before or len(due) == room:
                break
            due.append(id)
        for id in due:
            d = held.pop(id)[0]
            held[id] = (d, consumer, now)
            out.append(d)
        if len(due) < room:
            self._next_scan_s[queue] = now + self.visibility_s / 4

    async def consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        out = self._take(topics, group, consumer, max_count)
        if out or block_ms <= 0:
            return out
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for topic in topics:
            self._waiters.setdefault((topic, group), []).append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, block_ms / 1000)
        for topic in topics:
            waiters = self._waiters.get((topic, group))
            if waiters and fut in waiters:
                waiters.remove(fut)
        return self._take(topics, group, consumer, max_count)

    async def publish_and_ack(
        self, messages: Sequence[Message], group: str, deliveries: Sequence[Delivery]
    ) -> None:
        await publish_then_ack(self, messages, group, deliveries)

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._pending.get((d.topic, group), {}).pop(d.id, None)

    async def touch(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        for d in deliveries:
            held = self._pending.get((d.topic, group), {})
            h = held.pop(d.id, None)
            if h is not None:
                held[d.id] = (h[0], consumer, now)  # to the end: the order by time holds

    async def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        await self.publish([dead_letter_message(group, delivery, reason)])
        await self.ack(group, [delivery])

    async def depth(self, topic: str) -> int:
        return self.depth_now(topic)

    def depth_now(self, topic: str) -> int:
        """`depth` without awaiting, for a synchronous gauge: messages not yet delivered to
        the slowest group (all of them before any group joined)."""
        groups = self._groups.get(topic)
        if not groups:
            return len(self._backlog.get(topic, ()))
        return max(len(self._queues[(topic, g)]) for g in groups)

    async def close(self) -> None:
        self._queues.clear()
        self._groups.clear()
        self._backlog.clear()
        self._pending.clear()
        self._next_scan_s.clear()
