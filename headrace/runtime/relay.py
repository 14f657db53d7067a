"""The relay: publishes outbox rows that a crash left between commit and publish, and sends
again the jobs a bus lost.

Not on the hot path: the process that commits publishes right away. The relay only sweeps
rows older than `grace_s`, so it never races a healthy committer, and leaves alone the rows
of jobs a live process runs itself (held, and renewed by its heartbeats): once a hold lapses,
its process is presumed dead and the job goes to the bus.

A bus can lose a message it acknowledged (a Redis failover, a Kafka broker whose storage
came back behind what it acknowledged). A lost job leaves its attempt scheduled and never
started, so every `redispatch_s` the relay publishes again the jobs of attempts scheduled
more than `redispatch_s` ago and still not started. A job that was only waiting in a long
queue is then sent twice and may run twice (at-least-once, as after any redelivery); the
engine applies one result per attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from headrace.bus import Bus
from headrace.runtime.clock import now_ms
from headrace.store import Store

log = logging.getLogger(__name__)

Redispatch = Callable[[list[str], int], Awaitable[int]]  # (run ids, unstarted before ms)


class Relay:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        redispatch: Redispatch,
        *,
        grace_s: float = 5.0,
        every_s: float = 1.0,
        redispatch_s: float = 300.0,
        batch_size: int = 1000,
    ) -> None:
        self.store = store
        self.bus = bus
        self.redispatch = redispatch
        self.grace_s = grace_s
        self.every_s = every_s
        self.redispatch_s = redispatch_s
        self.batch_size = batch_size

    async def sweep(self, older_than_s: float | None = None) -> int:
        """Publish leftover rows created more than `older_than_s` ago and not held (by a
        process running their job itself, see runtime/local.py); return how many."""
        age_ms = int(1000 * (self.grace_s if older_than_s is None else older_than_s))
        count = 0
        while True:
            now = now_ms()
            rows = await self.store.pending_outbox(now - age_ms, now, self.batch_size)
            if not rows:
                return count
            await self.bus.publish([r.message for r in rows])
            await self.store.outbox_sent([r.id for r in rows])
            count += len(rows)

    async def resend_unstarted(self) -> int:
        """Publish again the jobs of attempts scheduled more than `redispatch_s` ago and not
        started; return how many."""
        before = now_ms() - int(self.redispatch_s * 1000)
        run_ids = await self.store.unstarted_runs(before, self.batch_size)
        return await self.redispatch(run_ids, before) if run_ids else 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_redispatch = loop.time() + self.redispatch_s
        while True:
            swept = await self.sweep()
            if swept:
                log.warning("relay republished %d outbox messages left by a crash", swept)
            if loop.time() >= next_redispatch:
                next_redispatch = loop.time() + self.redispatch_s
                sent = await self.resend_unstarted()
                if sent:
                    log.warning("relay sent again %d jobs not started in time", sent)
            await asyncio.sleep(min(self.every_s, self.redispatch_s))
