"""Wall-clock time for the loops (the engine never reads a clock; it is given `at_ms`)."""

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
