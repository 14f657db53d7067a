"""`headrace serve shadow`: the shadow validator of dual-write. It reads every topic on both
buses (groups of its own, acting on nothing), pairs the two copies of each publish by
their copy id (`hr-cid`: a re-publish of the same content, as a rollback does, is a pair
of its own), and counts:

- matched: both copies arrived and are equal (topic, key, payload and headers but the
  publish time);
- mismatched: they differ (the message says which fields, with both values), or a copy's
  content no longer hashes to its content id (`hr-mid`: corrupted);
- missing: a message said to be written to both buses (`hr-copies`) whose other copy did
  not arrive within `grace_s` (the clock starts once both buses delivered something, so a
  group still joining is not taken for a loss; a copy arriving later is not counted again);
- lost: the same, when the process that wrote it has since stopped (`gone`: SIGKILLed
  with the copy still in its producer's queue): its writer's loss, not the bus's.

Each mismatch and each missing copy is logged with its message id."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from headrace.bus.base import Bus, Delivery
from headrace.bus.headers import CID, COPIES, KAFKA, MID, REDIS, TS
from headrace.bus.migrating import message_id
from headrace.bus.topics import CANCELS, JOB_LANES, RESULTS
from headrace.events import Message
from headrace.migration.slots import (
    COMPARED,
    LOST,
    MATCHED,
    MISMATCHED,
    MISSING,
    SHADOW_WIDTH,
    Slots,
)

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
        gone: Callable[[], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.gone = gone  # the writers (copy-id prefixes) that stopped
        self.gone_now: set[str] = set()
        self.gone_read = 0.0
        self.buses = buses
        self.name = name
        self.grace_s = grace_s
        self.topics = list(topics)
        self.waiting: OrderedDict[str, _Seen] = OrderedDict()  # one copy seen, by id
        self.reported: OrderedDict[str, None] = OrderedDict()  # ids counted missing
        self.live: set[str] = set()  # buses that delivered: the clock runs once both did
        self.compared = self.matched = self.missing = self.mismatched = self.lost = 0
        self.slots = Slots(SHADOW_WIDTH)  # the same, by the second of the comparison
        self.problems: list[tuple[str, str]] = []  # (message id, what), newest last

    async def run(self) -> None:
        while True:
            await self.step(block_ms=200)

    async def step(self, block_ms: int = 0) -> None:
        if self.gone is not None and time.monotonic() - self.gone_read > 1.0:
            self.gone_now, self.gone_read = await self.gone(), time.monotonic()
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
        pair = headers.get(CID, mid)  # messages of an older version carry no copy id
        if pair in self.reported:
            return  # the twin of a copy already counted missing: late, not new
        other = self.waiting.get(pair)
        if other is None:
            self.waiting[pair] = _Seen(bus, d.message, time.monotonic())
            return
        if other.bus == bus:
            return  # a redelivery of the same copy
        del self.waiting[pair]
        found = [_difference(other, bus, d.message), _corrupt(mid, other, bus, d.message)]
        problem = "; ".join(p for p in found if p)
        self._count(MISMATCHED if problem else MATCHED)
        if problem:
            self._report(mid, f"mismatch: {problem}")

    def expire(self, now: float) -> None:
        if len(self.live) < 2:
            return  # a bus has not delivered yet (its group may still be joining)
        while self.waiting:
            pair, seen = next(iter(self.waiting.items()))
            if now - seen.at < self.grace_s:
                return
            del self.waiting[pair]
            self.reported[pair] = None
            if len(self.reported) > 100_000:
                self.reported.popitem(last=False)
            other = KAFKA if seen.bus == REDIS else REDIS
            m = seen.message
            mid = m.headers.get(MID, pair)
            if pair.partition("-")[0] in self.gone_now:
                self.slots.add(int(time.time()), LOST)
                self.lost += 1
                log.info("shadow: message %s: its %s copy died with its writer", mid, other)
                continue
            self._count(MISSING)
            self._report(mid, f"missing: no {other} copy of {m.topic} for run {m.key}")

    def _count(self, outcome: int) -> None:
        second = int(time.time())
        self.slots.add(second, COMPARED)
        self.slots.add(second, outcome)
        self.compared += 1
        if outcome == MATCHED:
            self.matched += 1
        elif outcome == MISSING:
            self.missing += 1
        else:
            self.mismatched += 1

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
                "lost_with_writer": self.lost,
                "waiting": len(self.waiting),
                "slots": self.slots.report(int(time.time())),
            }
        }

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.buses.values()))


def _difference(first: _Seen, bus: str, b: Message) -> str | None:
    """Which fields of the two copies differ, with each bus's value."""
    a = first.message
    fields = [(what, getattr(a, what), getattr(b, what)) for what in ("topic", "key", "payload")]
    names = sorted((a.headers.keys() | b.headers.keys()) - {TS})
    fields += [(f"header {k}", a.headers.get(k), b.headers.get(k)) for k in names]
    differ = [f"{what} {_short(x)} on {first.bus}, {_short(y)} on {bus}"
              for what, x, y in fields if x != y]  # fmt: skip
    return "; ".join(differ) or None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _corrupt(mid: str, first: _Seen, bus: str, b: Message) -> str | None:
    """Which copies no longer hash to the content id both carry."""
    bad = [name for name, m in ((first.bus, first.message), (bus, b)) if message_id(m) != mid]
    return f"the {' and '.join(bad)} copy does not match its content id" if bad else None
