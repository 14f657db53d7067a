"""The event loop a headrace process runs on: uvloop where it exists (Linux, macOS).

With the Postgres and Redis clients, the stock asyncio loop's own bookkeeping was a large
part of each node's CPU time; uvloop cut W1 by about a third (docs/decisions.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows
    uvloop = None  # type: ignore[assignment]


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest loop available."""
    if uvloop is None:  # pragma: no cover
        return asyncio.run(main)
    return uvloop.run(main)
