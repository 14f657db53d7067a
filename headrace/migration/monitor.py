"""`headrace serve monitor`: watches the cluster's figures (what every process writes to the
store each second) and rolls the migration back when a trigger fires: Kafka's error rate,
its p95 publish-to-consume latency against Redis's, or its consumer lag. A rollback is
audited with the figures that fired it; the monitor never advances by itself.

Each step is judged on its own figures: the window starts again when the step changes (an
operator's move or the monitor's own rollback), so a fault costs one rollback, and the
step back is rolled back further only if the fault persists there."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

from headrace.clock import SYSTEM
from headrace.errors import Conflict
from headrace.flags import FlagValues
from headrace.migration.steps import CUSTOM, STEPS, Check, Migration, checks, current_step

log = logging.getLogger(__name__)


class Monitor:
    def __init__(
        self, migration: Migration, *, window_s: float = 10.0, every_s: float = 1.0
    ) -> None:
        self.migration = migration
        self.window_s = window_s
        self.every_s = every_s
        self.step: int | None = -1  # the step last judged (-1: none yet)
        self.since_s = 0.0  # when it began to be judged
        self.rollbacks: list[dict[str, Any]] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.tick()

    async def tick(self) -> dict[str, Any] | None:
        """Read the figures; roll back if a trigger fires (returns what was done)."""
        flags = self.migration.flags.values
        step = current_step(flags)
        if step != self.step:
            self.step, self.since_s = step, time.time()
        on = FlagValues(flags).on
        if not (on("ENABLE_KAFKA") or on("ENABLE_KAFKA_WRITE")):
            return None
        window = await self.migration.window(self.window_s, self.since_s)
        found = checks(window, await self.migration.baseline(), self.migration.thresholds)
        fired = [c for c in found if c.trigger and c.ok is False]
        if not fired:
            return None
        return await self.roll_back(fired)

    async def roll_back(self, fired: list[Check]) -> dict[str, Any] | None:
        flags = self.migration.flags.values
        to = "dual-write" if FlagValues(flags).on("ENABLE_KAFKA") else "phase-1"
        why = "monitor: " + "; ".join(f"{c.name}={_show(c.value)} (limit {c.limit})" for c in fired)
        started = time.monotonic()
        step = current_step(flags)
        at = STEPS[step].name if step is not None else CUSTOM
        try:  # from the step it judged, or not at all: an operator may have moved it since
            done = await self.migration.rollback("monitor", why, expect=at, to=to)
        except Conflict as e:
            log.warning("no rollback: %s", e)
            return None
        report = {
            **done,
            "why": why,
            "fired": [asdict(c) for c in fired],
            "at_ms": SYSTEM.now_ms(),
            "took_s": round(time.monotonic() - started, 3),
        }
        log.warning("rolled back to %s: %s", to, why)
        await self.migration.store.put_note("last_rollback", report, SYSTEM.now_ms())
        self.rollbacks.append(report)
        self.step, self.since_s = current_step(self.migration.flags.values), time.time()
        return report


def _show(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
