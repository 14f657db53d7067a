"""`headrace serve shadow`: the shadow validator of dual-write. It reads every topic on both
buses (groups of its own, acting on nothing), pairs the copies of each message by its
content id (`hr-mid`), and counts:

- matched: both copies arrived and are equal (topic, key, payload and headers);
- mismatched: they differ, or a copy's content no longer hashes to its id (corrupted);
- missing: a message said to be written to both buses (`hr-copies`) whose other copy did
  not arrive within `grace_s` (the clock starts once both buses delivered something, so a
  group still joining is not taken for a loss; a copy arriving later is not counted again).

Each mismatch and each missing copy is logged with its message id."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from headrace.bus.base import Bus, Delivery
from headrace.bus.migrating import COPIES, KAFKA, MID, REDIS, TS, message_id
from headrace.bus.topics import CANCELS, JOB_LANES, RESULTS
from headrace.events import Message

log = logging.getLogger(__name__)

TOPICS = (*JOB_LANES, RESULTS, CANCELS)
GROUP = "shadow"


@dataclass
class _Seen:
    bus: str
    message: Message
    at: float


class Shadow:
    def __init__(
        self,
        buses: dict[str, Bus],
        *,
        name: str = "shadow",
        grace_s: float = 10.0,
        topics: Sequence[str] = TOPICS,
    ) -> None:
        self.buses = buses
        self.name = name
        self.grace_s = grace_s
        self.topics = list(topics)
        self.waiting: OrderedDict[str, _Seen] = OrderedDict()  # one copy seen, by id
        self.reported: OrderedDict[str, None] = OrderedDict()  # ids counted missing
        self.live: set[str] = set()  # buses that delivered: the clock runs once both did
        self.compared = self.matched = self.missing = self.mismatched = 0
        self.problems: list[tuple[str, str]] = []  # (message id, what), newest last

    async def run(self) -> None:
        while True:
            await self.step(block_ms=200)

    async def step(self, block_ms: int = 0) -> None:
        for bus_name in (REDIS, KAFKA):
            bus = self.buses[bus_name]
            got = await bus.consume(self.topics, GROUP, self.name, 500, block_ms // 2)
            if got:
                self.live.add(bus_name)
            for d in got:
                self.see(bus_name, d)
            await bus.ack(GROUP, got)
        self.expire(time.monotonic())
        if len(self.problems) > 1000:
            del self.problems[:-1000]

    def see(self, bus: str, d: Delivery) -> None:
        headers = d.message.headers
        copies = headers.get(COPIES, "").split(",")
        mid = headers.get(MID)
        if mid is None or REDIS not in copies or KAFKA not in copies:
            return  # written to one bus only: nothing to compare
        if mid in self.reported:
            return  # the twin of a copy already counted missing: late, not new
        other = self.waiting.get(mid)
        if other is None:
            self.waiting[mid] = _Seen(bus, d.message, time.monotonic())
            return
        if other.bus == bus:
            return  # a redelivery of the same copy
        del self.waiting[mid]
        self.compared += 1
        problem = _difference(other.message, d.message) or _corrupt(mid, d.message, other.message)
        if problem:
            self.mismatched += 1
            self._report(mid, f"mismatch: {problem}")
        else:
            self.matched += 1

    def expire(self, now: float) -> None:
        if len(self.live) < 2:
            return  # a bus has not delivered yet (its group may still be joining)
        while self.waiting:
            mid, seen = next(iter(self.waiting.items()))
            if now - seen.at < self.grace_s:
                return
            del self.waiting[mid]
            self.reported[mid] = None
            if len(self.reported) > 100_000:
                self.reported.popitem(last=False)
            self.compared += 1
            self.missing += 1
            other = KAFKA if seen.bus == REDIS else REDIS
            m = seen.message
            self._report(mid, f"missing: no {other} copy of {m.topic} for run {m.key}")

    def _report(self, mid: str, what: str) -> None:
        log.warning("shadow: message %s %s", mid, what)
        self.problems.append((mid, what))

    def figures(self) -> dict[str, object]:
        return {
            "shadow": {
                "compared": self.compared,
                "matched": self.matched,
                "missing": self.missing,
                "mismatched": self.mismatched,
                "waiting": len(self.waiting),
            }
        }

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.buses.values()))


def _difference(a: Message, b: Message) -> str | None:
    for what in ("topic", "key", "payload"):
        if getattr(a, what) != getattr(b, what):
            return f"{what} differs"
    ha = {k: v for k, v in a.headers.items() if k != TS}
    hb = {k: v for k, v in b.headers.items() if k != TS}
    if ha != hb:
        keys = sorted(k for k in ha.keys() | hb.keys() if ha.get(k) != hb.get(k))
        return f"headers differ: {', '.join(keys)}"
    return None


def _corrupt(mid: str, *copies: Message) -> str | None:
    for m in copies:
        if message_id(m) != mid:
            return "content does not match its id"
    return None
