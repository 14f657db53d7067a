"""Every process of a migrating cluster writes its bus figures to the store each second, so
that the monitor and `headrace migrate status` see the whole cluster."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from headrace.store import Store

log = logging.getLogger(__name__)


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
        self.started_ms = int(time.time() * 1000)  # tells a restarted process's counters apart

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.report()

    async def report(self) -> None:
        now = int(time.time() * 1000)
        figures = {"started_ms": self.started_ms, "at_ms": now, "buses": self.read()}
        await self.store.put_figures(self.process, figures, now)
