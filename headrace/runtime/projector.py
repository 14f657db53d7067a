"""The projector: keeps the read models (`runs_read`, `states_read`) from `workflow.events`.

Projectors are one consumer group (`projectors`), so several share the stream. Each batch
is applied in one store transaction (projections/apply.py), then acknowledged: a projector
killed before the commit gets the batch again, one killed after it gets it again and skips
it (every run's applied seq is committed with its rows). Events of one run may come out of
order or be missing (a second projector took some, a bus lost one): what does not follow on
from a run's applied seq is read from the store's event log instead.

While ENABLE_PROJECTIONS is off, the projector idles (its group stays) and the runtime
publishes no events. So each time it starts consuming (at start, and when the flag comes
on) it first catches up: every run whose main-table seq is past its read row is brought
up to date from the event log, a page of runs at a time. It catches up again every
minute: a process applies a flag up to a second after it changed, and what it committed
meanwhile was not published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from headrace.bus import Bus, Delivery
from headrace.bus.base import content_type
from headrace.bus.topics import EVENTS, PROJECTORS
from headrace.clock import SYSTEM, Clock
from headrace.events import Event, decode_events, unreadable
from headrace.flags.definitions import FlagValue, FlagValues
from headrace.projections.apply import Projected, catch_up
from headrace.runtime.crash import NO_CRASH, CrashPoints
from headrace.runtime.metrics import Metrics
from headrace.store import ReadModels

log = logging.getLogger(__name__)

IDLE_S = 0.2  # how often an idle projector looks at the flag
LINGER_S = 0.05  # a batch that came short waits this long for more (adds to the lag)
CATCH_UP_EVERY_S = 60.0


class Projector:
    def __init__(
        self,
        store: ReadModels,
        bus: Bus,
        flags: Mapping[str, FlagValue],
        metrics: Metrics,
        *,
        name: str,
        batch_size: int = 1000,
        page: int = 5000,
        linger_s: float = LINGER_S,
        catch_up_every_s: float = CATCH_UP_EVERY_S,
        crash: CrashPoints = NO_CRASH,
        clock: Clock = SYSTEM,
    ) -> None:
        self.store = store
        self.bus = bus
        self.flags = FlagValues(flags)  # a live view: the process's flag watcher updates it
        self.metrics = metrics
        self.name = name
        self.batch_size = batch_size
        self.page = page
        self.linger_s = linger_s
        self.catch_up_every_s = catch_up_every_s
        self.crash = crash
        self.clock = clock
        self.caught_up_at: float | None = None  # monotonic; None: not since it came on
        self.lag_s = 0.0  # the last batch's newest event: committed to applied
        self.applied = 0

    async def run(self) -> None:
        while True:
            if not self.flags.on("ENABLE_PROJECTIONS"):
                self.caught_up_at = None
                await asyncio.sleep(IDLE_S)
                continue
            since = self.caught_up_at
            if since is None or time.monotonic() - since > self.catch_up_every_s:
                self.caught_up_at = time.monotonic()
                behind = await self.catch_up()
                if behind:
                    log.info("projector %s caught up %d runs from the event log", self.name, behind)
            await self.step()

    async def step(self, block_ms: int = 200) -> int:
        """Apply one batch from the stream; the number of events applied."""
        size = self.batch_size
        deliveries = await self.bus.consume([EVENTS], PROJECTORS, self.name, size, block_ms)
        if 0 < len(deliveries) < size and self.linger_s:  # let the batch fill: a transaction
            await asyncio.sleep(self.linger_s)  # per handful of events costs the runs' commits
            more = size - len(deliveries)
            deliveries += await self.bus.consume([EVENTS], PROJECTORS, self.name, more, 0)
        batch: dict[str, list[Event]] = {}
        good: list[Delivery] = []
        for d in deliveries:
            events = await self._decode(d)
            if events is not None:
                batch.setdefault(d.message.key, []).extend(events)
                good.append(d)
        if not deliveries:  # nothing waits: nothing lags
            self.lag_s = 0.0
            self.metrics.projection_lag.labels(self.name).set(0)
        if not good:
            return 0
        projected = await self.store.project(batch, checkpoint=self._in_commit)
        self.crash.reached("projector_after_commit")
        await self.bus.ack(PROJECTORS, good)
        self._observe(projected)
        return projected.applied

    def _in_commit(self) -> None:
        self.crash.reached("projector_in_commit")

    async def _decode(self, d: Delivery) -> list[Event] | None:
        """The events of a message; None for one that cannot be read (dead-lettered)."""
        reason = unreadable(content_type(d.message))
        if reason is None:
            try:
                return decode_events(d.message.payload)
            except msgspec.DecodeError as e:
                reason = f"undecodable events: {e}"
        log.error("events %s go to the dead-letter topic: %s", d.id, reason)
        await self.bus.dead_letter(PROJECTORS, d, reason)
        return None

    async def catch_up(self) -> int:
        """Bring every run whose read row is behind the main tables up to date from the
        event log; how many there were."""
        runs, events = await catch_up(self.store, _Live(self.store), self.page)
        self.metrics.projected.inc("applied", by=events)  # old news: no measure of the lag
        return runs

    def figures(self) -> dict[str, Any]:
        """What the projector reports each second (the lag trigger reads it)."""
        return {"projector": {"lag_s": self.lag_s, "applied": self.applied}}

    def _observe(self, projected: Projected) -> None:
        self.applied += projected.applied
        self.metrics.projected.inc("applied", by=projected.applied)
        self.metrics.projected.inc("skipped", by=projected.skipped)
        if projected.last_event_at is not None:
            lag = self.lag_s = max(0, self.clock.now_ms() - projected.last_event_at) / 1000
            self.metrics.projection_lag.labels(self.name).set(lag)
            self.metrics.projection_delay.observe(self.name, lag)


class _Live:
    """The live read tables, as the catch-up sees them."""

    def __init__(self, store: ReadModels) -> None:
        self.store = store

    async def applied(self, run_ids: Sequence[str]) -> dict[str, int]:
        return await self.store.applied_seqs(run_ids)

    async def project(self, upto: Mapping[str, int]) -> Projected:
        return await self.store.project({}, upto)
