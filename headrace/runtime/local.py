"""Jobs and results that skip the bus, in a process that runs both worker and coordinator
(`serve all`, `headrace run`, `headrace dev`).

**Results** (`LocalResults`): a result need not travel to the results stream and back: the
worker puts it here with the job's delivery, the coordinator applies it like one it consumed,
and acknowledges the job with the publish that follows the commit. Nothing is lost: a job is
acknowledged only once its result is committed. If the process dies first, the job stays
pending and is delivered again after its lease (it runs again: at-least-once, as when a
worker dies before sending its result).

**Jobs** (`LocalJobs`): a job the driver of this process schedules while its own worker has
a free slot is handed to that worker, not published (Temporal's eager activity dispatch does
the same). Its outbox row is written by the commit that scheduled it, as for any message,
and stays this process's while the process is alive (its heartbeat says so, see
runtime/relay.py): no relay sends it. The commit of the job's result (or the one that
cancelled it) deletes the row. If the process dies, its lease lapses and the relay of any
process sends the job to the bus (it runs again: at-least-once). A graceful stop releases
the rows of the jobs it hands back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from headrace.bus import Delivery
from headrace.events import Message, Result
from headrace.store import Outbox


class LocalResults:
    def __init__(self) -> None:
        self._items: list[tuple[Result, Delivery | None]] = []
        self._ready = asyncio.Event()
        self._unsettled = 0
        self._settled = asyncio.Event()
        self._settled.set()

    def put(self, result: Result, job: Delivery | None) -> None:
        """`job`: the delivery to acknowledge once `result` is committed (None for a
        `Started` notice, whose job is still running)."""
        self._items.append((result, job))
        self._unsettled += 1
        self._settled.clear()
        self._ready.set()

    async def take(self) -> list[tuple[Result, Delivery | None]]:
        """Everything put so far (waits for at least one); call `settle` once applied."""
        await self._ready.wait()
        self._ready.clear()
        items, self._items = self._items, []
        return items

    def settle(self, count: int) -> None:
        self._unsettled -= count
        if self._unsettled <= 0:
            self._settled.set()

    async def settled(self, timeout_s: float) -> bool:
        """Whether every result put was applied within `timeout_s` (for a graceful stop)."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class LocalJob(Delivery):
    """A job handed over in this process; acknowledging it deletes its outbox row."""

    outbox_id: int


def split(deliveries: Sequence[Delivery]) -> tuple[list[Delivery], list[LocalJob]]:
    """(those from the bus, local jobs)."""
    bus: list[Delivery] = []
    local: list[LocalJob] = []
    for d in deliveries:
        if isinstance(d, LocalJob):
            local.append(d)
        else:
            bus.append(d)
    return bus, local


class Slots(Protocol):
    """The worker's side of `LocalJobs`."""

    def reserve(self, wanted: int) -> int:
        """Take up to `wanted` free slots for jobs about to be handed over; how many."""

    def unreserve(self, count: int) -> None:
        """Give back slots reserved for jobs that will not come (their commit failed)."""

    def start_local(self, job: LocalJob) -> None:
        """Run `job` in a slot reserved for it."""


class LocalJobs:
    """The jobs the driver of this process hands its worker (connected by LocalDispatch)."""

    def __init__(self, store: Outbox) -> None:
        self.store = store
        self.worker: Slots | None = None  # the worker's slots
        # the driver's: deletes outbox rows, in its batches of published ones
        self.mark_sent: Callable[[list[int]], None] | None = None

    # --- the driver's side ---

    def reserve(self, wanted: int) -> int:
        """Slots for up to `wanted` jobs of the commit about to be made; how many."""
        return self.worker.reserve(wanted) if self.worker is not None and wanted else 0

    def unreserve(self, count: int) -> None:
        if self.worker is not None and count:
            self.worker.unreserve(count)

    def start(self, jobs: Sequence[Message], outbox_ids: Sequence[int]) -> None:
        """Run committed jobs (their slots reserved) on the worker of this process."""
        assert self.worker is not None
        for message, outbox_id in zip(jobs, outbox_ids, strict=True):
            self.worker.start_local(
                LocalJob(message.topic, f"outbox-{outbox_id}", message, outbox_id)
            )

    # --- the worker's side ---

    async def release(self, jobs: Sequence[LocalJob]) -> None:
        """Hand these jobs back: the relay may send them to the bus now."""
        await self.store.release_outbox([j.outbox_id for j in jobs])

    def done(self, jobs: Sequence[LocalJob]) -> None:
        """These jobs ended with nothing to commit (cancelled), or their results went to
        the bus: their rows are no longer needed."""
        assert self.mark_sent is not None
        self.mark_sent([j.outbox_id for j in jobs])


class LocalDispatch:
    """The meeting point of this process's driver, coordinator and worker, built and
    connected by the runtime, so none of them holds another: `results` the worker hands the
    coordinator, `jobs` the driver hands the worker (None: that part is off)."""

    def __init__(self, store: Outbox, *, results: bool, jobs: bool) -> None:
        self.results = LocalResults() if results else None
        self.jobs = LocalJobs(store) if jobs else None

    def connect(self, worker: Slots, mark_sent: Callable[[list[int]], None]) -> None:
        """The worker's free slots take the driver's jobs; the driver deletes the outbox
        rows of the jobs done."""
        if self.jobs is not None:
            self.jobs.worker = worker
            self.jobs.mark_sent = mark_sent
