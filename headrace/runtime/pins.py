"""The bus each run is pinned to during the Redis → Kafka migration (ARCHITECTURE §4).

A run's pin is chosen when it starts, from the flags this process applies: Kafka when
`ENABLE_KAFKA` is on and the run falls in the first `KAFKA_TRAFFIC_PERCENT` of 100 buckets
(crc32 of its id), else Redis. The driver commits it with the run (`Transition.pin`) and
stamps it on every message of the run (the `hr-pin` header), which is all the migrating bus
reads. A rollback re-pins the unfinished Kafka runs to Redis in a transaction of its own
(`PinBook.repin`); a run started before the migration has no pin, and is Redis's.
"""

from __future__ import annotations

import uuid
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from headrace.bus.headers import KAFKA, REDIS
from headrace.flags.definitions import FlagValue, FlagValues
from headrace.store import PinBook

CACHE_SIZE = 100_000


def in_kafka_share(run_id: str, percent: int) -> bool:
    """Whether a run falls in the first `percent` of 100 buckets (crc32 of its id)."""
    try:
        raw = uuid.UUID(run_id).bytes
    except ValueError:
        raw = run_id.encode()
    return zlib.crc32(raw) % 100 < percent


def choose_pin(run_id: str, flags: FlagValues) -> str:
    """The bus a run starting now is pinned to."""
    share = flags.percent("KAFKA_TRAFFIC_PERCENT")
    return KAFKA if flags.on("ENABLE_KAFKA") and in_kafka_share(run_id, share) else REDIS


class RunPins:
    """The pins of runs, as this process knows them: chosen here at start, else read from
    the store once and kept (a run's pin changes only in a rollback, below)."""

    def __init__(self, book: PinBook, flags: Mapping[str, FlagValue]) -> None:
        self.book = book
        self.flags = FlagValues(flags)  # a live view: the process's flag watcher updates it
        self._known: OrderedDict[str, str] = OrderedDict()
        self._kafka_was_on = False

    def choose(self, run_id: str) -> str:
        pin = choose_pin(run_id, self.flags)
        self._remember(run_id, pin)
        return pin

    async def of(self, run_ids: Sequence[str], *, fresh: bool = False) -> dict[str, str]:
        """The pin of each run: REDIS for one without (started before the migration).
        `fresh` reads them all from the store (after a re-pin)."""
        kafka_on = self.flags.on("ENABLE_KAFKA")
        if self._kafka_was_on and not kafka_on:
            self._known.clear()  # a rollback re-pins runs in the store: read them again
        self._kafka_was_on = kafka_on
        out = {} if fresh else {r: self._known[r] for r in run_ids if r in self._known}
        missing = [r for r in dict.fromkeys(run_ids) if r not in out]
        if missing:
            found = await self.book.pins(missing)
            for run_id in missing:
                out[run_id] = found.get(run_id, REDIS)
                self._remember(run_id, out[run_id])
        return out

    def _remember(self, run_id: str, pin: str) -> None:
        self._known[run_id] = pin
        self._known.move_to_end(run_id)
        if len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)
