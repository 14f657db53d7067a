"""Deterministic crash points for crash tests: `HEADRACE_CRASH_AT=after_commit:20` makes the
process SIGKILL itself the 20th time it passes `after_commit`. Off unless configured."""

from __future__ import annotations

import os
import signal


class CrashPoints:
    def __init__(self, spec: str | None) -> None:
        name, _, count = (spec or "").partition(":")
        self.name = name
        self.left = int(count) if count.isdigit() else 1

    def reached(self, point: str) -> None:
        if point != self.name:
            return
        self.left -= 1
        if self.left <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


NO_CRASH = CrashPoints(None)
