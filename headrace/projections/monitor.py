"""The projection lag trigger: while the API reads the read models (USE_PROJECTIONS), it
watches how far behind they are, and when the lag stays over `limit_s` for `window_s` it
turns USE_PROJECTIONS off (audited, with the figures that fired it), so reads go back to the
main tables. It never turns it back on: an operator does, once the projectors caught up.

The lag is what the projectors report each second (headrace/migration/figures.py): the
largest of the live ones. A projector that stopped reporting lags from its last report on;
with none at all, or with ENABLE_PROJECTIONS off (nothing is projected), the read models
only fall further behind. Every API process runs one (reads are served there); a
compare-and-set makes the first to fire the only one that writes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Protocol

from headrace.clock import SYSTEM, Clock
from headrace.flags.definitions import FlagValues
from headrace.flags.watcher import FlagWatcher
from headrace.migration.slots import SILENT_S
from headrace.store import FigureBook, FlagBook

log = logging.getLogger(__name__)

NOTE = "last_projection_rollback"  # the store note that says what the trigger did last


class GuardStore(FigureBook, FlagBook, Protocol):
    """What the trigger reads (the projectors' figures) and writes (the flag, a note)."""


class ProjectionMonitor:
    def __init__(
        self,
        store: GuardStore,
        flags: FlagWatcher,
        *,
        limit_s: float = 5.0,
        window_s: float = 10.0,
        every_s: float = 1.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.store = store
        self.watcher = flags
        self.flags = FlagValues(flags.values)  # a live view: the watcher updates it
        self.limit_s = limit_s
        self.window_s = window_s
        self.every_s = every_s
        self.clock = clock
        self.over_since_ms: int | None = None  # when the lag last went over the limit
        self.judged_since_ms = clock.now_ms()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.tick()

    async def tick(self) -> dict[str, Any] | None:
        """Judge the lag now; what was done when the trigger fired."""
        now = self.clock.now_ms()
        if not self.flags.on("USE_PROJECTIONS"):
            self.over_since_ms, self.judged_since_ms = None, now
            return None
        lag = await self.lag_s(now)
        if lag <= self.limit_s:
            self.over_since_ms = None
            return None
        self.over_since_ms = self.over_since_ms or now
        if now - self.over_since_ms < self.window_s * 1000:
            return None
        return await self._fire(lag, now)

    async def lag_s(self, now: int) -> float:
        """How far behind the read models are, as the projectors say (see the module)."""
        if not self.flags.on("ENABLE_PROJECTIONS"):
            return math.inf
        reports = await self.store.figures_since(now - int(self.window_s * 1000) - 60_000)
        projectors = [r for r in reports.values() if "projector" in r]
        live = [r for r in projectors if r["at_ms"] >= now - SILENT_S * 1000]
        if live:
            return max(float(r["projector"]["lag_s"]) for r in live)
        last = max((r["at_ms"] for r in projectors), default=self.judged_since_ms)
        return (now - min(last, now)) / 1000

    async def _fire(self, lag: float, now: int) -> dict[str, Any] | None:
        if math.isinf(lag):
            why = f"monitor: nothing was projected (ENABLE_PROJECTIONS off) for {self.window_s} s"
        else:
            why = f"monitor: projection lag {lag:.1f} s over {self.limit_s} s for {self.window_s} s"
        found = await self.store.swap_flags(
            {"USE_PROJECTIONS": True}, [("USE_PROJECTIONS", False)], self.watcher.initial,
            "monitor", why, now,
        )  # fmt: skip
        self.over_since_ms = None
        if found is not None:  # already off (another API process, or an operator)
            return None
        report = {"why": why, "lag_s": None if math.isinf(lag) else lag, "at_ms": now}
        await self.store.put_note(NOTE, report, now)
        log.warning("USE_PROJECTIONS turned off: %s", why)
        return report


async def status(store: GuardStore, flags: FlagWatcher, limit_s: float, now: int) -> dict[str, Any]:
    """Where the read models stand: the flags, each projector's last report, the runs in
    the main tables and in the read model, and what the lag trigger did last."""
    reports = await store.figures_since(now - 3_600_000)
    projectors = [
        {
            "process": key.rpartition("@")[0],
            "lag_s": r["projector"]["lag_s"],
            "applied": r["projector"]["applied"],
            "reported_at_ms": r["at_ms"],
            "live": r["at_ms"] >= now - SILENT_S * 1000,
        }
        for key, r in sorted(reports.items())
        if "projector" in r
    ]
    values = FlagValues(flags.values)
    return {
        "flags": {f: values.on(f) for f in ("ENABLE_PROJECTIONS", "USE_PROJECTIONS")},
        "lag_s": max((p["lag_s"] for p in projectors if p["live"]), default=None),
        "limit_s": limit_s,
        "projectors": projectors,
        "last_rollback": await store.note(NOTE),
    }
