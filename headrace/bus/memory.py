"""The in-memory bus: the real thing for one process (`headrace dev`, `headrace run`, tests).

Messages live in this process only (`durable = False`): after a restart the runtime
republishes outstanding work from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Sequence

from headrace.bus.base import Delivery
from headrace.events import Message

Queue = tuple[str, str]  # (topic, group)


class MemoryBus:
    durable = False

    def __init__(self) -> None:
        self._queues: dict[Queue, deque[Delivery]] = {}
        self._groups: dict[str, list[str]] = {}  # topic -> groups
        self._backlog: dict[str, list[Delivery]] = {}  # topic -> messages before any group
        self._pending: dict[tuple[str, str], Delivery] = {}  # (group, id) -> unacked
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
        return queue

    def _take(self, topics: Sequence[str], group: str, max_count: int) -> list[Delivery]:
        out: list[Delivery] = []
        for topic in topics:
            queue = self._join(topic, group)
            while queue and len(out) < max_count:
                d = queue.popleft()
                self._pending[(group, d.id)] = d
                out.append(d)
        return out

    async def consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        out = self._take(topics, group, max_count)
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
        return self._take(topics, group, max_count)

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._pending.pop((group, d.id), None)

    def depth(self, topic: str) -> int:
        """Messages waiting in `topic`, over all groups (for the queue-depth metric)."""
        waiting = sum(len(q) for (t, _), q in self._queues.items() if t == topic)
        return waiting + len(self._backlog.get(topic, ()))

    async def close(self) -> None:
        self._queues.clear()
