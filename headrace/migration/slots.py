"""Figures by the second: what each process of a migrating cluster counts, and how the
readers (the checklist, the monitor) add them up over a window.

A bus's counters go in the slot of the second its message was *published* (`hr-ts`), in
whichever process counts them: the publisher counts a message routed and its copies sent
(or failed, when the delivery report comes back later), the consumer counts it acted on
with its latency. So over any range of seconds a share such as acted / routed compares
the same messages, whatever process died or how late a report came: a rate never exceeds
what it counts. A process reports the slots of the last `KEEP_S` seconds; a reader adds
up the reports of every process that reported since the window began (a process killed
in the window still counts what it did)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)
KEEP_S = 600  # the longest window a reader may judge, with its grace
SILENT_S = 3  # a process that has not reported for this long (it reports each second) stopped

# a bus's slot: these counters, then the latency histogram of the messages acted on
SENT, FAILED, ROUTED, ACTED, HANDED, MAX_AGE_MS = range(6)
_HIST = 6
BUS_WIDTH = _HIST + len(LATENCY_BUCKETS_MS) + 1
# the shadow's slot (by the second of the comparison)
COMPARED, MATCHED, MISSING, MISMATCHED, LOST = range(5)  # lost: with a writer that died
SHADOW_WIDTH = 5


class Slots:
    """Counters by the second, kept for `KEEP_S` seconds."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.slots: dict[int, list[int]] = {}

    def at(self, second: int) -> list[int]:
        slot = self.slots.get(second)
        if slot is None:
            slot = self.slots[second] = [0] * self.width
        return slot

    def add(self, second: int, counter: int, n: int = 1) -> None:
        self.at(second)[counter] += n

    def report(self, now_s: int) -> dict[str, list[int]]:
        for second in [s for s in self.slots if s < now_s - KEEP_S]:
            del self.slots[second]
        return {str(s): list(v) for s, v in self.slots.items()}


class BusSlots(Slots):
    def __init__(self) -> None:
        super().__init__(BUS_WIDTH)

    def acted(self, second: int, age_ms: int, *, handed_over: bool = False) -> None:
        """A message published in `second` was acted on `age_ms` after. One a group member
        took over from a dead one (a rebalance) is counted, but its age is not latency."""
        slot = self.at(second)
        slot[ACTED] += 1
        if handed_over:
            slot[HANDED] += 1
            return
        slot[MAX_AGE_MS] = max(slot[MAX_AGE_MS], age_ms)
        slot[_HIST + bisect.bisect_left(LATENCY_BUCKETS_MS, age_ms)] += 1


@dataclass
class BusWindow:
    """One bus's slots added up over a range of seconds."""

    sent: int = 0
    failed: int = 0
    routed: int = 0
    acted: int = 0
    handed: int = 0
    max_age_ms: int = 0
    first_routed_s: int | None = None  # the second of the oldest message routed
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))

    def add(self, slot: list[int], second: int) -> None:
        if slot[ROUTED] and (self.first_routed_s is None or second < self.first_routed_s):
            self.first_routed_s = second
        self.sent += slot[SENT]
        self.failed += slot[FAILED]
        self.routed += slot[ROUTED]
        self.acted += slot[ACTED]
        self.handed += slot[HANDED]
        self.max_age_ms = max(self.max_age_ms, slot[MAX_AGE_MS])
        for i, n in enumerate(slot[_HIST:]):
            self.latency[i] += n

    @property
    def samples(self) -> int:
        return sum(self.latency)

    def p95_ms(self, min_samples: int) -> float | None:
        """The upper bound of the bucket holding the 95th percentile; None on fewer than
        `min_samples` (a p95 of a handful of messages is not a figure)."""
        total = self.samples
        if total < max(min_samples, 1):
            return None
        seen, i = 0, 0
        while seen + self.latency[i] < 0.95 * total:
            seen += self.latency[i]
            i += 1
        return float(LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else 60_000)


@dataclass
class ShadowWindow:
    compared: int = 0
    matched: int = 0
    missing: int = 0
    mismatched: int = 0
    lost: int = 0  # copies not written because their writer was killed: not Kafka's loss

    def add(self, slot: list[int]) -> None:
        self.compared += slot[COMPARED]
        self.matched += slot[MATCHED]
        self.missing += slot[MISSING]
        self.mismatched += slot[MISMATCHED]
        self.lost += slot[LOST] if len(slot) > LOST else 0


@dataclass
class Window:
    """The cluster's figures over [start_s, end_s): per bus, everything published in the
    range (`buses`) and what was published in [read_from_s, settled_s): at least `grace`
    old, and after the last death of a process, whose counts of its last second died with
    it (`settled`: the read rate's messages); the shadow's comparisons; who reported."""

    start_s: int
    end_s: int
    settled_s: int
    read_from_s: int  # after the last process that stopped reporting: its last second is lost
    buses: dict[str, BusWindow] = field(default_factory=dict)
    settled: dict[str, BusWindow] = field(default_factory=dict)
    shadow: ShadowWindow = field(default_factory=ShadowWindow)

    def bus(self, name: str) -> BusWindow:
        return self.buses.get(name) or BusWindow()

    def settled_bus(self, name: str) -> BusWindow:
        return self.settled.get(name) or BusWindow()


def window(reports: Iterable[Mapping[str, Any]], start_s: int, end_s: int, grace_s: int) -> Window:
    """Add up the slots of `reports` (what `figures()` of the migrating bus and of the
    shadow give, one per process) over [start_s, end_s)."""
    reports = [r for r in reports if "buses" in r or "shadow" in r]  # not a projector's
    silent_ms = (end_s - SILENT_S) * 1000
    deaths = [r["at_ms"] // 1000 for r in reports if r.get("at_ms", silent_ms) < silent_ms]
    read_from = max([start_s, *(d + 1 for d in deaths)])
    out = Window(start_s, end_s, max(start_s, end_s - grace_s), read_from)
    for r in reports:
        for name, f in r.get("buses", {}).items():
            for second, slot in _in(f.get("slots", {}), start_s, end_s):
                out.buses.setdefault(name, BusWindow()).add(slot, second)
                if read_from <= second < out.settled_s:
                    out.settled.setdefault(name, BusWindow()).add(slot, second)
        for _, slot in _in(r.get("shadow", {}).get("slots", {}), start_s, end_s):
            out.shadow.add(slot)
    return out


def _in(
    slots: Mapping[str, list[int]], start_s: int, end_s: int
) -> Iterable[tuple[int, list[int]]]:
    for key, slot in slots.items():
        second = int(key)
        if start_s <= second < end_s:
            yield second, slot
