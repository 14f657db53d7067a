"""`task` nodes: Python functions from the modules a worker is told about (`--tasks`).

A spec names `module.function`; it resolves only inside the listed modules, so a workflow
can never import code by itself. Sync functions run in a thread so they cannot stall the loop.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from headrace.errors import InputError, NodeError
from headrace.events import Job
from headrace.nodes.base import Outcome


class TaskRegistry:
    def __init__(self, modules: Sequence[str]) -> None:
        self.modules: dict[str, Any] = {}
        for name in modules:
            try:
                self.modules[name] = importlib.import_module(name)
            except ImportError as e:
                raise InputError(
                    "--tasks/HEADRACE_TASKS", f"cannot import task module {name!r}: {e}"
                ) from None
        self._cache: dict[str, tuple[Callable[..., Any], inspect.Signature]] = {}

    def resolve(self, name: str) -> tuple[Callable[..., Any], inspect.Signature]:
        found = self._cache.get(name)
        if found is not None:
            return found
        module_name, _, fn_name = name.rpartition(".")
        module = self.modules.get(module_name)
        fn: Any = getattr(module, fn_name, None) if module and not fn_name.startswith("_") else None
        if fn is None or not _defined_in(fn, module_name):
            listed = ", ".join(self.modules) or "none; use --tasks or HEADRACE_TASKS"
            raise NodeError(
                "unknown_task",
                f"task {name!r} is not a function of the task modules ({listed})",
                retryable=False,
            )
        self._cache[name] = (fn, inspect.signature(fn))
        return self._cache[name]

    async def run(self, job: Job) -> Outcome:
        assert job.task is not None
        fn, signature = self.resolve(job.task)
        args = job.args if isinstance(job.args, dict) else {}
        try:
            signature.bind(**args)
        except TypeError as e:
            raise NodeError("bad_arguments", f"{job.task}: {e}", retryable=False) from None
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(**args)
            else:
                result = await asyncio.to_thread(fn, **args)
        except NodeError:
            raise
        except Exception as e:
            raise NodeError("task_error", f"{type(e).__name__}: {e}", retryable=True) from e
        return Outcome(_json_safe(job.task, result))


def _defined_in(fn: Any, module_name: str) -> bool:
    """Only functions the module itself defines are tasks: not what it imports."""
    if not inspect.isfunction(fn):
        return False
    home = getattr(fn, "__module__", "") or ""
    return home == module_name or home.startswith(module_name + ".")


def _json_safe(name: str, value: Any) -> Any:
    try:
        return msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError) as e:
        raise NodeError(
            "bad_output", f"{name} returned a value that is not JSON: {e}", retryable=False
        ) from None
