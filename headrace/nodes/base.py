"""The NodeExecutor seam: one attempt of one job -> its outcome, or NodeError."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from headrace.events import Job


@dataclass(frozen=True)
class Outcome:
    output: Any
    cost_cents: int = 0


NodeExecutor = Callable[[Job], Awaitable[Outcome]]
