"""In-process notice board: "run X has advanced to seq N". Readers fetch the events from the
store; the hub only wakes them, so it holds no data and loses nothing if a notice is missed.

A run that ended is remembered (its last seq, for the newest `ENDED_KEPT` ended runs): a
reader that checked the store just before the end and waits just after it returns at once,
instead of waiting out its timeout.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, defaultdict
from typing import Any

ENDED_KEPT = 10_000


class Hub:
    def __init__(self) -> None:
        self._seq: dict[str, int] = {}
        self._ended: OrderedDict[str, int] = OrderedDict()  # run id -> its last seq
        self._waiters: dict[str, set[asyncio.Future[int]]] = defaultdict(set)
        self._end_waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)

    def notify(self, run_id: str, seq: int) -> None:
        if seq <= self._seq.get(run_id, 0):
            return
        self._seq[run_id] = seq
        for fut in self._waiters.pop(run_id, ()):
            if not fut.done():
                fut.set_result(seq)

    async def wait(self, run_id: str, after_seq: int, timeout_s: float) -> int:
        """Return the newest seq known once it is past `after_seq`, or after the timeout."""
        known = self._seq.get(run_id) or self._ended.get(run_id, 0)
        if known > after_seq:
            return known
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[run_id].add(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return self._seq.get(run_id) or self._ended.get(run_id, after_seq)
        finally:
            _discard(self._waiters, run_id, fut)

    def ended(self, run_id: str) -> None:
        """The run reached its terminal state: wake `wait_end` callers; its seq moves to
        the ended runs kept."""
        self._ended[run_id] = self._seq.pop(run_id, 0)
        self._ended.move_to_end(run_id)
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        for fut in self._end_waiters.pop(run_id, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait_end(self, run_id: str, timeout_s: float) -> None:
        """Return when this process sees the run end (or saw it), or after the timeout."""
        if run_id in self._ended:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._end_waiters[run_id].add(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            _discard(self._end_waiters, run_id, fut)


def _discard(waiters: dict[str, set[Any]], run_id: str, fut: Any) -> None:
    found = waiters.get(run_id)
    if found is not None:
        found.discard(fut)
        if not found:
            waiters.pop(run_id, None)
