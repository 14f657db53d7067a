"""The one clock of a process: wall-clock milliseconds for the runtime (driver, coordinator,
worker, relay) and the stores, injected so a test can hold time still or move it
(`FakeClock`). The engine never reads a clock: it is given `at_ms`.

The buses and the migration's figures read the system clock themselves: they measure the
age of messages published by other processes and stamped by brokers, which only the real
time of every machine makes comparable."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


SYSTEM = SystemClock()


class FakeClock:
    """A clock that moves only when told (tests)."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01
        self.ms = start_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms
