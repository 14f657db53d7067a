"""`headrace serve monitor`: watches the cluster's figures (what every process writes to the
store each second) and rolls the migration back when a trigger fires: Kafka's error rate,
its p95 publish-to-consume latency against the Redis baseline, or its consumer lag. A
rollback is audited with the figures that fired it; the monitor never advances by itself.

While Kafka takes no runs, the monitor keeps the Redis p95 as the baseline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict
from typing import Any

from headrace.errors import Conflict
from headrace.migration.figures import ClusterTotals, add_up, live_reports, now_ms
from headrace.migration.steps import CUSTOM, STEPS, Check, Migration, checks, current_step

log = logging.getLogger(__name__)


class Monitor:
    def __init__(
        self, migration: Migration, *, window_s: float = 10.0, every_s: float = 1.0
    ) -> None:
        self.migration = migration
        self.window_s = window_s
        self.every_s = every_s
        self.history: deque[tuple[float, dict[str, dict[str, Any]]]] = deque()
        self.rollbacks: list[dict[str, Any]] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.tick()

    async def tick(self) -> dict[str, Any] | None:
        """Read the figures; roll back if a trigger fires (returns what was done)."""
        store = self.migration.store
        now = time.monotonic()
        self.history.append((now, await live_reports(store)))
        while self.history and self.history[0][0] < now - self.window_s:
            self.history.popleft()
        flags = self.migration.flags.values
        window = self.window()
        if not flags.get("ENABLE_KAFKA"):
            p95 = window.buses["redis"].p95_ms()
            if p95 is not None:
                await store.put_note("baseline", {"p95_ms": p95, "bus": "redis"}, now_ms())
        if not (flags.get("ENABLE_KAFKA") or flags.get("ENABLE_KAFKA_WRITE")):
            return None
        found = checks(window, await self.migration.baseline(), self.migration.thresholds)
        fired = [c for c in found if c.trigger and c.ok is False]
        if not fired:
            return None
        return await self.roll_back(fired)

    def window(self) -> ClusterTotals:
        """The cluster's figures over the window: the newest totals minus, per process, its
        oldest report in the window (a restarted process counts from its restart)."""
        newest = self.history[-1][1]
        out = add_up(newest.values())
        oldest: dict[str, dict[str, Any]] = {}
        for _, reports in self.history:
            for process, r in reports.items():
                same_life = r.get("started_ms") == newest.get(process, {}).get("started_ms")
                if process not in oldest and same_life:
                    oldest[process] = r
                for name, f in r.get("buses", {}).items():
                    bus = out.buses[name]
                    bus.max_age_ms = max(bus.max_age_ms, f.get("max_age_ms", 0))
        for r in oldest.values():
            for name, f in r.get("buses", {}).items():
                out.buses[name].add(f, sign=-1)
            for key in ("compared", "matched", "missing", "mismatched"):
                setattr(out.shadow, key, getattr(out.shadow, key) - r.get("shadow", {}).get(key, 0))
        kafka = out.buses["kafka"]
        span = self.history[-1][0] - self.history[0][0]
        lag_s = self.migration.thresholds.kafka_lag_s
        if kafka.routed > 0 and kafka.acted == 0 and span >= lag_s:
            kafka.max_age_ms = int(span * 1000)  # sent there, never consumed in the window
            kafka.acted = 1  # so that the lag is judged
        return out

    async def roll_back(self, fired: list[Check]) -> dict[str, Any] | None:
        flags = self.migration.flags.values
        to = "dual-write" if flags.get("ENABLE_KAFKA") else "phase-1"
        why = "monitor: " + "; ".join(f"{c.name}={_show(c.value)} (limit {c.limit})" for c in fired)
        started = time.monotonic()
        step = current_step(flags)
        at = STEPS[step].name if step is not None else CUSTOM
        try:  # the step it judged, or nothing: an operator may have moved it since
            done = await self.migration.rollback("monitor", why, expect=at, to=to)
        except Conflict as e:
            log.warning("no rollback: %s", e)
            self.history.clear()
            return None
        report = {
            **done,
            "why": why,
            "fired": [asdict(c) for c in fired],
            "at_ms": now_ms(),
            "took_s": round(time.monotonic() - started, 3),
        }
        log.warning("rolled back to %s: %s", to, why)
        await self.migration.store.put_note("last_rollback", report, now_ms())
        self.rollbacks.append(report)
        self.history.clear()  # judge the new step on its own figures
        return report


def _show(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
