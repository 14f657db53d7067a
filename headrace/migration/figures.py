"""Every process of a migrating cluster writes its bus figures to the store each second, so
that the monitor and `headrace migrate status` see the whole cluster. The counters are
totals since the process started; readers add processes up and take differences."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from headrace.bus.migrating import LATENCY_BUCKETS_MS
from headrace.store import Store

log = logging.getLogger(__name__)

LIVE_S = 10.0  # a process that has not reported for this long is gone


def now_ms() -> int:
    return int(time.time() * 1000)


class FigureReporter:
    def __init__(
        self,
        store: Store,
        read: Callable[[], dict[str, Any]],
        process: str,
        *,
        every_s: float = 1.0,
    ) -> None:
        self.store = store
        self.read = read
        self.process = process
        self.every_s = every_s
        self.started_ms = now_ms()  # tells a restarted process's counters apart

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.report()

    async def report(self) -> None:
        at = now_ms()
        figures = {"started_ms": self.started_ms, "at_ms": at, **self.read()}
        await self.store.put_figures(self.process, figures, at)


@dataclass
class BusTotals:
    """One bus's counters added up over processes (or a difference of two such sums)."""

    sent: int = 0
    failed: int = 0
    routed: int = 0
    acted: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    max_age_ms: int = 0

    def add(self, f: dict[str, Any], sign: int = 1) -> None:
        self.sent += sign * f.get("sent", 0)
        self.failed += sign * f.get("failed", 0)
        self.routed += sign * f.get("routed", 0)
        self.acted += sign * f.get("acted", 0)
        for i, n in enumerate(f.get("latency", [])):
            self.latency[i] += sign * n
        if sign > 0:
            self.max_age_ms = max(self.max_age_ms, f.get("max_age_ms", 0))

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.sent if self.sent else None

    @property
    def read_rate(self) -> float | None:
        return min(self.acted / self.routed, 1.0) if self.routed else None

    def p95_ms(self, min_samples: int = 20) -> float | None:
        """The upper bound of the bucket holding the 95th percentile; None on too few."""
        total = sum(self.latency)
        if total < min_samples:
            return None
        seen = 0
        for i, n in enumerate(self.latency):
            seen += n
            if seen >= 0.95 * total:
                return float(LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else 60_000)
        return None


@dataclass
class ShadowTotals:
    compared: int = 0
    matched: int = 0
    missing: int = 0
    mismatched: int = 0

    def add(self, f: dict[str, Any]) -> None:
        for name in ("compared", "matched", "missing", "mismatched"):
            setattr(self, name, getattr(self, name) + f.get(name, 0))

    @property
    def success_rate(self) -> float | None:
        return self.matched / self.compared if self.compared else None


@dataclass
class ClusterTotals:
    buses: dict[str, BusTotals] = field(
        default_factory=lambda: {"redis": BusTotals(), "kafka": BusTotals()}
    )
    shadow: ShadowTotals = field(default_factory=ShadowTotals)
    processes: int = 0


def add_up(reports: Iterable[dict[str, Any]]) -> ClusterTotals:
    out = ClusterTotals()
    for r in reports:
        out.processes += 1
        for name, f in r.get("buses", {}).items():
            out.buses.setdefault(name, BusTotals()).add(f)
        out.shadow.add(r.get("shadow", {}))
    return out


async def live_reports(store: Store) -> dict[str, dict[str, Any]]:
    return await store.figures_since(now_ms() - int(LIVE_S * 1000))
