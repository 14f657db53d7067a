"""The steps of the Redis → Kafka migration as flag values, the checklist that validates
each one from the cluster's live figures, and moving one step (or rolling back).

A rollback that turns `ENABLE_KAFKA` off re-pins the unfinished Kafka runs to Redis in the
store and republishes their jobs in flight from the store (the bus is transport; the
engine drops duplicates)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from headrace.errors import Conflict, InputError
from headrace.flags import FlagWatcher
from headrace.flags.definitions import FlagValue
from headrace.migration.figures import ClusterTotals, add_up, live_reports, now_ms
from headrace.store import Store


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
    for i, step in enumerate(STEPS):
        if all(values.get(k) == v for k, v in step.flags.items()):
            return i
    return None


@dataclass(frozen=True)
class Thresholds:
    error_rate: float = 0.05
    latency_factor: float = 2.0
    latency_floor_ms: float = 50.0  # below it, a p95 is never "too slow" (noise)
    kafka_lag_s: float = 10.0
    write_success: float = 0.999
    read_success: float = 0.999


@dataclass(frozen=True)
class Check:
    name: str
    value: float | int | None  # None: no traffic to judge by
    limit: str
    ok: bool | None
    trigger: bool = False  # a rollback trigger of the monitor


def checks(totals: ClusterTotals, baseline_ms: float | None, t: Thresholds) -> list[Check]:
    kafka = totals.buses["kafka"]
    shadow = totals.shadow
    errors = kafka.error_rate
    write = None if errors is None else 1 - errors
    read = kafka.read_rate
    p95 = kafka.p95_ms()
    slow = max(t.latency_factor * baseline_ms, t.latency_floor_ms) if baseline_ms else None
    lag = kafka.max_age_ms / 1000 if kafka.acted else None

    def at_least(v: float | None, limit: float) -> bool | None:
        return None if v is None else v >= limit

    def at_most(v: float | None, limit: float | None) -> bool | None:
        return None if v is None or limit is None else v <= limit

    compared = shadow.compared > 0
    return [
        Check("kafka_write_success_rate", write, f">= {t.write_success}",
              at_least(write, t.write_success)),
        Check("shadow_missing", shadow.missing, "= 0",
              shadow.missing == 0 if compared else None),
        Check("shadow_mismatched", shadow.mismatched, "= 0",
              shadow.mismatched == 0 if compared else None),
        Check("kafka_read_success_rate", read, f">= {t.read_success}",
              at_least(read, t.read_success)),
        Check("kafka_error_rate", errors, f"<= {t.error_rate}",
              at_most(errors, t.error_rate), trigger=True),
        Check("kafka_p95_latency_ms", p95, f"<= {slow} (baseline {baseline_ms})",
              at_most(p95, slow), trigger=True),
        Check("kafka_consumer_lag_s", lag, f"<= {t.kafka_lag_s}",
              at_most(lag, t.kafka_lag_s), trigger=True),
    ]  # fmt: skip


Republish = Callable[[list[str]], Awaitable[int]]


class Migration:
    """Status, advance and rollback, for the API and the monitor."""

    def __init__(
        self,
        store: Store,
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

    async def checks(self) -> list[Check]:
        totals = add_up((await live_reports(self.store)).values())
        return checks(totals, await self.baseline(), self.thresholds)

    async def baseline(self) -> float | None:
        note = await self.store.note("baseline")
        return float(note["p95_ms"]) if note else None

    async def status(self) -> dict[str, Any]:
        await self.flags.refresh()
        values = self.flags.values
        i = current_step(values)
        return {
            "step": STEPS[i].name if i is not None else CUSTOM,
            "what": STEPS[i].what if i is not None else "flags set by hand",
            "next": STEPS[i + 1].name if i is not None and i + 1 < len(STEPS) else None,
            "flags": {k: values[k] for k in STEPS[0].flags},
            "baseline_p95_ms": await self.baseline(),
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
        if not STEPS[i].flags["ENABLE_KAFKA"] and target.flags["ENABLE_KAFKA"]:
            await self.record_baseline()
        await self._swap(STEPS[i].flags, target, list(target.flags), who, why)
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

    async def record_baseline(self) -> None:
        """The Redis p95 latency before Kafka takes runs: what the monitor compares with."""
        totals = add_up((await live_reports(self.store)).values())
        p95 = totals.buses["redis"].p95_ms()
        if p95 is not None:
            await self.store.put_note("baseline", {"p95_ms": p95, "bus": "redis"}, now_ms())

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
        if before.get("ENABLE_KAFKA") and not target.flags["ENABLE_KAFKA"]:
            repinned = await self.store.repin("kafka", "redis", now_ms())
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
        found = await self.store.swap_flags(was, changes, self.flags.initial, who, why, now_ms())
        await self.flags.refresh()
        if found is not None:
            i = current_step(was)
            raise self._moved(STEPS[i].name if i is not None else CUSTOM, found)
