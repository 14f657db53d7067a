"""CPU-heavy pure work in a child process: checking large run inputs against their schemas.

A worker thread is not enough: while it runs Python, every callback of the event loop waits
for the GIL, and a request takes hundreds of callbacks (a 900 KB input held the loop of
`headrace dev` for 2 s from a thread). One child process, started on first use (`spawn`:
safe beside threads and uvloop), takes the work; the loop only pickles the input.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from typing import Any

from jsonschema.protocols import Validator

from headrace.spec import Plan
from headrace.spec.plan import input_problem
from headrace.spec.schemas import InputValidator


class Offload:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def input_problem(self, plan: Plan, inputs: Any) -> tuple[str, str] | None:
        """`spec.plan.input_problem` for `plan`'s inputs, in the child process."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
        schema = json.dumps(plan.input_schema, sort_keys=True)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _input_problem, schema, inputs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _input_problem(schema: str, inputs: Any) -> tuple[str, str] | None:
    """In the child: the check, with the schema's validator compiled once."""
    return input_problem(json.loads(schema), _validator(schema), inputs)


@lru_cache(maxsize=64)
def _validator(schema: str) -> Validator:
    return InputValidator(json.loads(schema))
