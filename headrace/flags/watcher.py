"""Every process's view of the flags: re-read from the store every second, so a change
made anywhere applies everywhere within about a second, without a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from headrace.flags.definitions import FlagValue
from headrace.store import FlagBook

log = logging.getLogger(__name__)


class FlagWatcher:
    def __init__(
        self,
        store: FlagBook,
        initial: dict[str, FlagValue],
        *,
        every_s: float = 1.0,
        on_change: Callable[[str, FlagValue], None] | None = None,
    ) -> None:
        self.store = store
        self.initial = initial
        self.every_s = every_s
        self.on_change = on_change
        self.values = dict(initial)
        self.stored: dict[str, FlagValue] = {}
        for name, value in self.values.items():
            self._changed(name, value)

    async def refresh(self) -> None:
        self.stored = await self.store.stored_flags()
        for name, value in {**self.initial, **self.stored}.items():
            if self.values.get(name) != value or type(self.values.get(name)) is not type(value):
                log.info("flag %s is now %s", name, value)
                self.values[name] = value
                self._changed(name, value)

    def _changed(self, name: str, value: FlagValue) -> None:
        if self.on_change is not None:
            self.on_change(name, value)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.every_s)
