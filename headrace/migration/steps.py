"""The steps of the Redis → Kafka migration as flag values, the checklist that validates
each one from the cluster's live figures, and moving one step (or rolling back).

A rollback that turns `ENABLE_KAFKA` off re-pins the unfinished Kafka runs to Redis in the
store and republishes their jobs in flight from the store (the bus is transport; the
engine drops duplicates)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from headrace.bus.headers import KAFKA, REDIS
from headrace.clock import SYSTEM
from headrace.errors import Conflict, InputError
from headrace.flags import FlagValues, FlagWatcher
from headrace.flags.definitions import FlagValue
from headrace.migration.figures import window_of
from headrace.migration.slots import BusWindow, Window
from headrace.store import FigureBook, FlagBook, PinBook


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    flags: dict[str, FlagValue]


def _step(name: str, what: str, write: bool, on: bool, percent: int, redis: bool) -> Step:
    flags: dict[str, FlagValue] = {
        "ENABLE_KAFKA_WRITE": write,
        "KAFKA_TRAFFIC_PERCENT": percent,
        "ENABLE_KAFKA": on,
        "ENABLE_REDIS_WRITE": redis,
    }  # in the order an advance sets them; a rollback sets them in reverse
    return Step(name, what, flags)


STEPS = [
    _step("phase-1", "Redis Streams only", False, False, 0, True),
    _step("dual-write", "Redis primary, a copy of every message to Kafka", True, False, 0, True),
    _step("kafka-10", "10 % of new runs on Kafka, Redis keeps a copy", True, True, 10, True),
    _step("kafka-50", "50 % of new runs on Kafka", True, True, 50, True),
    _step("kafka-100", "every new run on Kafka, Redis keeps a copy", True, True, 100, True),
    _step("redis-off", "Kafka only: nothing is written to Redis", True, True, 100, False),
]
BY_NAME = {s.name: i for i, s in enumerate(STEPS)}
CUSTOM = "custom"  # the flags match no step (set by hand)


def current_step(values: Mapping[str, FlagValue]) -> int | None:
    """The step the flags match, or None when they were set to something else by hand."""
    read = FlagValues(values)
    for i, step in enumerate(STEPS):
        if all(read.value(k) == v for k, v in step.flags.items()):
            return i
    return None


@dataclass(frozen=True)
class Thresholds:
    error_rate: float = 0.05
    latency_factor: float = 2.0
    latency_floor_ms: float = 200.0  # below it, a p95 is never "too slow" (a loaded host)
    latency_samples: int = 200  # fewer messages in the window: no p95 is judged
    kafka_lag_s: float = 10.0
    write_success: float = 0.999
    read_success: float = 0.999
    window_s: float = 120.0  # the checklist's window (the monitor has its own, shorter)
    read_grace_s: float = 15.0  # a message is unread once older than this and not acted on


@dataclass(frozen=True)
class Check:
    name: str
    value: float | int | None  # None: no traffic to judge by
    limit: str
    ok: bool | None
    trigger: bool = False  # a rollback trigger of the monitor
    detail: str = ""  # what the value is made of


def checks(w: Window, baseline: Mapping[str, Any] | None, t: Thresholds) -> list[Check]:
    """The checklist over the window `w` (the monitor's triggers among them)."""
    kafka, shadow = w.bus(KAFKA), w.shadow
    compared = shadow.compared > 0
    seen = f"in the last {w.end_s - w.start_s} s"
    return [
        _write_success(kafka, t, seen),
        Check("shadow_missing", shadow.missing, "= 0", shadow.missing == 0 if compared else None,
              detail=f"{shadow.missing} of {shadow.compared} copies compared {seen} (and "
              f"{shadow.lost} not written: their writer was killed first)"),
        Check("shadow_mismatched", shadow.mismatched, "= 0",
              shadow.mismatched == 0 if compared else None,
              detail=f"{shadow.mismatched} of {shadow.compared} copies compared {seen}"),
        _read_success(w, t),
        _error_rate(kafka, t, seen),
        _p95(w, baseline, t, seen),
        _lag(w, t, seen),
    ]  # fmt: skip


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _write_success(kafka: BusWindow, t: Thresholds, seen: str) -> Check:
    rate = _share(kafka.sent - kafka.failed, kafka.sent)
    return Check(
        "kafka_write_success_rate", rate, f">= {t.write_success}",
        None if rate is None else rate >= t.write_success,
        detail=f"{kafka.sent - kafka.failed} of {kafka.sent} writes to Kafka acknowledged {seen}",
    )  # fmt: skip


def _error_rate(kafka: BusWindow, t: Thresholds, seen: str) -> Check:
    rate = _share(kafka.failed, kafka.sent)
    return Check(
        "kafka_error_rate", rate, f"<= {t.error_rate}",
        None if rate is None else rate <= t.error_rate, trigger=True,
        detail=f"{kafka.failed} of {kafka.sent} writes to Kafka failed {seen} "
        "(by the second they were sent)",
    )  # fmt: skip


def _read_success(w: Window, t: Thresholds) -> Check:
    settled = w.settled_bus(KAFKA)
    rate = _share(min(settled.acted, settled.routed), settled.routed)
    return Check(
        "kafka_read_success_rate", rate, f">= {t.read_success}",
        None if rate is None else rate >= t.read_success,
        detail=f"{settled.acted} of {settled.routed} messages routed through Kafka from "
        f"{w.end_s - w.read_from_s} to {w.end_s - w.settled_s} s ago were acted on",
    )  # fmt: skip


def _p95(w: Window, baseline: Mapping[str, Any] | None, t: Thresholds, seen: str) -> Check:
    """Kafka's p95 against Redis's: the baseline taken at the step, or Redis's p95 now
    when it is higher (the same load on the same host), and never under the floor."""
    kafka = w.bus(KAFKA)
    p95 = kafka.p95_ms(t.latency_samples)
    redis_now = w.bus(REDIS).p95_ms(t.latency_samples)
    base = max(float(baseline["p95_ms"]) if baseline else 0.0, redis_now or 0.0)
    slow = max(t.latency_factor * base, t.latency_floor_ms)
    taken = f"baseline {baseline['p95_ms']} ms at {baseline['step']}" if baseline else "no baseline"
    return Check(
        "kafka_p95_latency_ms", p95, f"<= {slow:g} ({taken}; Redis now {redis_now})",
        None if p95 is None else p95 <= slow, trigger=True,
        detail=f"{kafka.samples} messages acted on from Kafka {seen} (at least "
        f"{t.latency_samples} to judge; {kafka.handed} handed over by rebalances left out)",
    )  # fmt: skip


def _lag(w: Window, t: Thresholds, seen: str) -> Check:
    """The oldest message consumers took from Kafka (rebalances left out); or, when Kafka
    was routed messages and consumers took none of them, the age of the oldest."""
    kafka = w.bus(KAFKA)
    if kafka.acted > kafka.handed:
        lag: float | None = kafka.max_age_ms / 1000
        what = f"the oldest of {kafka.acted - kafka.handed} messages taken {seen}"
    elif kafka.routed and not kafka.acted and kafka.first_routed_s is not None:
        lag = float(w.end_s - kafka.first_routed_s)
        what = f"{kafka.routed} messages routed {seen}, none taken; the oldest {lag:g} s ago"
    else:
        lag, what = None, f"nothing taken from Kafka {seen}"
    return Check(
        "kafka_consumer_lag_s", lag, f"<= {t.kafka_lag_s}",
        None if lag is None else lag <= t.kafka_lag_s, trigger=True, detail=what,
    )  # fmt: skip


Republish = Callable[[list[str]], Awaitable[int]]


class MigrationStore(FlagBook, PinBook, FigureBook, Protocol):
    """What the migration moves and reads: flags (compare-and-set), pins, figures and notes."""


class Migration:
    """Status, advance and rollback, for the API and the monitor."""

    def __init__(
        self,
        store: MigrationStore,
        flags: FlagWatcher,
        republish: Republish,
        *,
        enabled: bool,
        thresholds: Thresholds = Thresholds(),
    ) -> None:
        self.store = store
        self.flags = flags
        self.republish = republish
        self.enabled = enabled  # this process has the migrating bus
        self.thresholds = thresholds

    async def window(self, seconds: float, since_s: float = 0.0) -> Window:
        """The cluster's figures over the last `seconds` (from `since_s` at the earliest)."""
        end = int(time.time()) + 1
        start = max(end - int(seconds), math.ceil(since_s))
        return await window_of(self.store, start, end, int(self.thresholds.read_grace_s))

    async def checks(self) -> list[Check]:
        w = await self.window(self.thresholds.window_s)
        return checks(w, await self.baseline(), self.thresholds)

    async def baseline(self) -> dict[str, Any] | None:
        note = await self.store.note("baseline")
        return dict(note) if note and "step" in note else None

    async def status(self) -> dict[str, Any]:
        await self.flags.refresh()
        values = self.flags.values
        i = current_step(values)
        return {
            "step": STEPS[i].name if i is not None else CUSTOM,
            "what": STEPS[i].what if i is not None else "flags set by hand",
            "next": STEPS[i + 1].name if i is not None and i + 1 < len(STEPS) else None,
            "flags": {k: values[k] for k in STEPS[0].flags},
            "baseline": await self.baseline(),
            "window_s": self.thresholds.window_s,
            "read_grace_s": self.thresholds.read_grace_s,
            "last_rollback": await self.store.note("last_rollback"),
            "pins": await self.store.pin_counts(0),
            "checks": [asdict(c) for c in await self.checks()],
            "steps": [s.name for s in STEPS],
        }

    async def advance(
        self, who: str, why: str, *, expect: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        """One step forward from `expect` (default: the step the flags are at now)."""
        if not self.enabled:
            raise Conflict("this process has no Kafka: set HEADRACE_KAFKA_URL on every process")
        i = await self._at(expect)
        if i is None:
            raise Conflict("the flags match no step: set them with `headrace flags set`")
        if i + 1 == len(STEPS):
            raise Conflict(f"{STEPS[i].name} is the last step")
        failing = [c.name for c in await self.checks() if c.ok is False]
        if failing and not force:
            raise Conflict(f"checks fail: {', '.join(failing)} (force to advance anyway)")
        target = STEPS[i + 1]
        await self._swap(STEPS[i].flags, target, list(target.flags), who, why)
        await self.record_baseline(target.name)
        return {"from": STEPS[i].name, "to": target.name, "failing_checks": failing}

    async def _at(self, expect: str | None) -> int | None:
        """The step the flags are at; Conflict when that is not `expect`."""
        await self.flags.refresh()
        i = current_step(self.flags.values)
        if expect is not None:
            if expect not in (*BY_NAME, CUSTOM):
                known = ", ".join((*BY_NAME, CUSTOM))
                raise InputError("from", f"unknown step {expect!r} (steps: {known})")
            if i != BY_NAME.get(expect):
                raise self._moved(expect, self.flags.values)
        return i

    def _moved(self, expect: str, values: Mapping[str, FlagValue]) -> Conflict:
        i = current_step(values)
        now = STEPS[i].name if i is not None else f"{CUSTOM} (flags set by hand)"
        return Conflict(f"the migration is at {now}, not {expect}: it moved; nothing was changed")

    async def record_baseline(self, step: str) -> None:
        """Redis's p95 over the checklist's window as the latency baseline of `step` (kept
        from the step before when Redis carried too few messages to tell)."""
        w = await self.window(self.thresholds.window_s)
        redis = w.bus(REDIS)
        p95 = redis.p95_ms(self.thresholds.latency_samples)
        if p95 is not None:
            value = {
                "p95_ms": p95,
                "samples": redis.samples,
                "at_ms": SYSTEM.now_ms(),
                "step": step,
            }
            await self.store.put_note("baseline", value, SYSTEM.now_ms())

    async def rollback(
        self, who: str, why: str, *, expect: str | None = None, to: str | None = None
    ) -> dict[str, Any]:
        """Back to `to` (default: one step) from `expect` (default: where the flags are)."""
        if to is not None and to not in BY_NAME:
            raise InputError("to", f"unknown step {to!r} (steps: {', '.join(BY_NAME)})")
        i = await self._at(expect)
        if to is None and i is None:
            raise InputError("to", "the flags match no step: say which step to go back to")
        j = BY_NAME[to] if to is not None else max((i or 0) - 1, 0)
        if i is not None and j >= i:
            raise Conflict(f"{STEPS[j].name} is not behind {STEPS[i].name}")
        before = dict(self.flags.values)
        target = STEPS[j]
        await self._swap(before, target, list(reversed(target.flags)), who, why)
        repinned: list[str] = []
        republished = 0
        if FlagValues(before).on("ENABLE_KAFKA") and not target.flags["ENABLE_KAFKA"]:
            repinned = await self.store.repin("kafka", "redis", SYSTEM.now_ms())
            republished = await self.republish(repinned)
        return {
            "from": STEPS[i].name if i is not None else CUSTOM,
            "to": target.name,
            "repinned_runs": len(repinned),
            "republished_jobs": republished,
        }

    async def _swap(
        self, expect: Mapping[str, FlagValue], step: Step, order: list[str], who: str, why: str
    ) -> None:
        """Set `step`'s flags if they still are `expect` (another actor may have moved them
        since they were read: then Conflict, and nothing changes)."""
        names = list(STEPS[0].flags)
        was = {n: expect[n] for n in names}
        changes = [(n, step.flags[n]) for n in order if was[n] != step.flags[n]]
        found = await self.store.swap_flags(
            was, changes, self.flags.initial, who, why, SYSTEM.now_ms()
        )
        await self.flags.refresh()
        if found is not None:
            i = current_step(was)
            raise self._moved(STEPS[i].name if i is not None else CUSTOM, found)
