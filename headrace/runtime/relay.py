"""The relay: publishes outbox rows that a crash left between commit and publish.

Not on the hot path: the process that commits publishes right away. The relay only sweeps
rows older than `grace_s`, so it never races a healthy committer.
"""

from __future__ import annotations

import asyncio
import logging

from headrace.bus import Bus
from headrace.runtime.clock import now_ms
from headrace.store import Store

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        grace_s: float = 5.0,
        every_s: float = 1.0,
        batch_size: int = 1000,
    ) -> None:
        self.store = store
        self.bus = bus
        self.grace_s = grace_s
        self.every_s = every_s
        self.batch_size = batch_size

    async def sweep(self, older_than_s: float | None = None) -> int:
        """Publish leftover rows created more than `older_than_s` ago; return how many."""
        age_ms = int(1000 * (self.grace_s if older_than_s is None else older_than_s))
        count = 0
        while True:
            rows = await self.store.pending_outbox(now_ms() - age_ms, self.batch_size)
            if not rows:
                return count
            await self.bus.publish([r.message for r in rows])
            await self.store.outbox_sent([r.id for r in rows])
            count += len(rows)

    async def run(self) -> None:
        while True:
            swept = await self.sweep()
            if swept:
                log.warning("relay republished %d outbox messages left by a crash", swept)
            await asyncio.sleep(self.every_s)
