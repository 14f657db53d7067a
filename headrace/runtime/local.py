"""Results a worker hands to the coordinator of its own process, skipping the bus.

In a process that runs both roles (`serve all`, `headrace run`, `headrace dev`) a result
need not travel to the results stream and back: the worker puts it here with the job's
delivery, the coordinator applies it like one it consumed, and acknowledges the job with the
publish that follows the commit. Two bus round trips fewer per node (Temporal dispatches its
activities eagerly to the same end).

Nothing is lost: a job is acknowledged only once its result is committed. If the process
dies first, the job stays pending on the bus and is redelivered after its lease (it runs
again: at-least-once, as when a worker dies before sending its result).
"""

from __future__ import annotations

import asyncio

from headrace.bus import Delivery
from headrace.events import Result


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
