"""Task functions for tests and benchmarks (`--tasks headrace.testing.tasks`)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from headrace.errors import NodeError

_calls: dict[str, int] = {}
_gates: dict[str, threading.Event] = {}
_running: dict[str, int] = {}
_peaks: dict[str, int] = {}


async def noop(**kwargs: Any) -> None:
    """Does nothing: the cost of the runtime alone."""


def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


async def sleep(seconds: float, **kwargs: Any) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def block(seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return {"slept": seconds}


def hold(key: str, limit_s: float = 30.0) -> dict[str, Any]:
    """Block this thread until `release(key)` is called in this process (or `limit_s` passes)."""
    _gates.setdefault(key, threading.Event()).wait(limit_s)
    return {"key": key}


def release(key: str) -> None:
    _gates.setdefault(key, threading.Event()).set()


def fail_times(key: str, times: int) -> dict[str, Any]:
    """Raise on the first `times` calls for `key` in this process, then succeed."""
    _calls[key] = _calls.get(key, 0) + 1
    if _calls[key] <= times:
        raise RuntimeError(f"failure {_calls[key]} of {times} for {key}")
    return {"key": key, "calls": _calls[key]}


def boom(message: str = "boom") -> None:
    raise RuntimeError(message)


def exits(code: int = 3) -> None:
    """Call sys.exit, as a script turned into a task might."""
    sys.exit(code)


async def exits_async(code: int = 3) -> None:
    sys.exit(code)


def exhausted() -> Any:
    """Raise StopIteration, as `next()` on an empty iterator does."""
    return next(iter([]))


def permanent(message: str = "no retry") -> None:
    raise NodeError(message, type="permanent", retryable=False)


def add(a: float, b: float) -> dict[str, float]:
    return {"sum": a + b}


async def counted_sleep(key: str, seconds: float) -> dict[str, Any]:
    """Sleep, counting how many times `key` ran in this process (see `calls`)."""
    _calls[key] = _calls.get(key, 0) + 1
    await asyncio.sleep(seconds)
    return {"key": key}


def calls(key: str) -> int:
    return _calls.get(key, 0)


async def crowded_sleep(key: str, seconds: float, **kwargs: Any) -> dict[str, Any]:
    """Sleep, keeping the most calls for `key` that ever ran at once in this process (see
    `peak`)."""
    _running[key] = _running.get(key, 0) + 1
    _peaks[key] = max(_peaks.get(key, 0), _running[key])
    try:
        await asyncio.sleep(seconds)
    finally:
        _running[key] -= 1
    return {"key": key}


def peak(key: str) -> int:
    return _peaks.get(key, 0)


async def marked_sleep(marks: str, name: str, seconds: float) -> dict[str, Any]:
    """Sleep, leaving a file `marks/name.PID` first: which processes ran `name` (a test
    SIGKILLs a worker and checks that its jobs ran again elsewhere)."""
    Path(marks, f"{name}.{os.getpid()}").touch()
    await asyncio.sleep(seconds)
    return {"name": name}


def not_json(kind: str) -> Any:
    """A value a node output cannot be: `nan`, `inf`, `set`, `object`, `deep` (300 levels)
    or `surrogate`; anything else gives a plain JSON value."""
    deep: list[Any] = []
    for _ in range(299):
        deep = [deep]
    values: dict[str, Any] = {
        "nan": {"ratio": float("nan")},
        "inf": {"ratio": [1.0, float("inf")]},
        "set": {"tags": {"a"}},
        "object": {"when": object()},
        "deep": deep,
        "surrogate": {"text": "\ud800"},
    }
    return values.get(kind, {"ratio": 0.5})
