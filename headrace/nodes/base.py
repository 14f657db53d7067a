"""The NodeExecutor seam: one attempt of one job -> its outcome, or NodeError."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from headrace.errors import NodeError
from headrace.events import Job
from headrace.spec import json_problem


@dataclass(frozen=True)
class Outcome:
    output: Any
    cost_cents: int = 0


NodeExecutor = Callable[[Job], Awaitable[Outcome]]


def check_output(value: Any, what: str) -> None:
    """NodeError `output_not_json` (not retried: the same code returns the same kind of value)
    unless `value` can be stored as the node's output and read back unchanged. Stored as
    it is, `NaN` or `inf` would read back as null, and an output nested too deep could not be
    read back through the API at all."""
    problem = json_problem(value)
    if problem is not None:
        path, why = problem
        raise NodeError(
            f"{what} returned an output that is not JSON: output{path} {why}",
            type="output_not_json",
            retryable=False,
        )
