"""`headrace projections rebuild`: fresh read models from the store's event log, built into
new tables (`runs_read_next`, ...) while the live ones keep serving, then swapped in.

1. fill: every run of the main tables, a page at a time in run id order; each page is one
   transaction, so the fresh tables' last run id is where a rebuild that died resumes;
2. catch up: runs that moved on (or started) while the pages went by, until a pass finds
   fewer than a page of them (each pass compares every run's seq: the read models may be
   in another database);
3. swap: one transaction holds the projectors' writes, brings the last runs up, and puts
   the fresh tables in place of the live ones. Whatever commits after it reaches a
   projector, which then writes to the fresh tables (store/*/read_models.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from headrace.projections.apply import Tables, catch_up
from headrace.runtime.crash import NO_CRASH, CrashPoints
from headrace.store import ReadModels, Rebuilds

SCAN = 5_000  # runs compared per round trip when catching up (few of them are behind)


class RebuildStore(ReadModels, Rebuilds, Protocol):
    """The main tables' runs, and the fresh tables a rebuild fills."""


@dataclass
class Progress:
    total: int  # runs in the main tables when the rebuild began
    resumed_after: str = ""  # the last run id an earlier rebuild left ('' if none)
    held: int = 0  # runs an earlier rebuild left
    done: int = 0  # runs filled by this one
    caught_up: int = 0  # runs brought up again after they moved on
    events: int = 0
    phase: str = "fill"
    began: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return max(time.monotonic() - self.began, 1e-6)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def eta_s(self) -> float | None:
        """Seconds left of the fill, at its pace so far."""
        left = self.total - self.held - self.done
        if self.phase != "fill" or not self.done:
            return None
        return max(left, 0) * self.seconds / self.done


async def rebuild(
    store: RebuildStore,
    page: int = 500,
    progress: Callable[[Progress], None] | None = None,
    crash: CrashPoints = NO_CRASH,
) -> Progress:
    async with store.rebuild_lock():
        return await _rebuild(store, page, progress or (lambda _: None), crash)


async def _rebuild(
    store: RebuildStore, page: int, tell: Callable[[Progress], None], crash: CrashPoints
) -> Progress:
    after, held = await store.rebuild_open()
    counts = await store.read_model_counts()
    p = Progress(total=counts["main"], resumed_after=after, held=held)
    fresh = store.rebuild_tables()
    while runs := await store.run_seqs(after, page):
        p.events += (await fresh.project(dict(runs))).applied
        p.done += len(runs)
        after = runs[-1][0]
        tell(p)
        crash.reached("rebuild_after_page")
    p.phase = "catch up"
    scan = max(page, SCAN)
    while True:  # until what moved on during a pass is less than a page
        moved, events = await catch_up(store, fresh, scan, page)
        p.caught_up, p.events = p.caught_up + moved, p.events + events
        tell(p)
        if moved < page:
            break
    p.phase = "swap"

    async def last(tables: Tables) -> None:
        moved, events = await catch_up(store, tables, scan, page)
        p.caught_up, p.events = p.caught_up + moved, p.events + events

    await store.rebuild_swap(last)
    p.phase = "done"
    tell(p)
    return p
