"""Every process of a migrating cluster writes its bus figures to the store each second, so
that the monitor and `headrace migrate status` see the whole cluster: its counters by the
second of publication (headrace/migration/slots.py), which readers add up over a window."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from headrace.clock import SYSTEM
from headrace.migration.slots import KEEP_S, SILENT_S, Window, window
from headrace.store import FigureBook

log = logging.getLogger(__name__)


class FigureReporter:
    def __init__(
        self,
        store: FigureBook,
        read: Callable[[], dict[str, Any]],
        process: str,
        *,
        every_s: float = 1.0,
    ) -> None:
        self.store = store
        self.read = read
        self.process = process
        self.every_s = every_s
        self.started_ms = SYSTEM.now_ms()  # a report per life: a killed one's counters stay read

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.report()

    async def report(self) -> None:
        at = SYSTEM.now_ms()
        figures = {"started_ms": self.started_ms, "at_ms": at, **self.read()}
        await self.store.put_figures(f"{self.process}@{self.started_ms}", figures, at)


async def window_of(store: FigureBook, start_s: int, end_s: int, grace_s: int) -> Window:
    """The cluster's figures over [start_s, end_s): the slots of every process that
    reported since the window began (one killed in it still counts what it did)."""
    reports = await store.figures_since(start_s * 1000)
    return window(reports.values(), start_s, end_s, grace_s)


async def gone_writers(store: FigureBook) -> set[str]:
    """The writers (process lives, by the copy-id prefix their migrating bus reports) that
    stopped reporting: what they had not yet written never will be."""
    now = SYSTEM.now_ms()
    reports = await store.figures_since(now - KEEP_S * 1000)
    silent = now - SILENT_S * 1000
    return {r["writer"] for r in reports.values() if "writer" in r and r["at_ms"] < silent}
