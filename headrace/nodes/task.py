"""`task` nodes: Python functions from the modules a worker is told about (`--tasks`).

A spec names `module.function`; it resolves only inside the listed modules, so a workflow
can never import code by itself. Sync functions run on a thread of their own so they cannot
stall the loop. A thread cannot be interrupted: a sync task that runs past its timeout is
abandoned (the attempt fails with `timeout` and may be retried) while its thread runs on to
its end; the threads are daemons, so they never keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from headrace.errors import InputError, NodeError
from headrace.events import Job
from headrace.nodes.base import Outcome, check_output


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
        self._threads = asyncio.Semaphore(MAX_SYNC_THREADS)

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
                f"task {name!r} is not a function of the task modules ({listed})",
                type="unknown_task",
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
            raise NodeError(f"{job.task}: {e}", type="bad_arguments", retryable=False) from None
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(**args)
            else:
                result, error = await _in_thread(fn, args, self._threads)
                if error is not None:
                    raise error
        except NodeError:
            raise
        except (Exception, SystemExit) as e:  # sys.exit() in a task fails it, not the worker
            raise NodeError(f"{type(e).__name__}: {e}", type="task_error", retryable=True) from e
        return Outcome(_json_safe(job.task, result))


# Threads of sync tasks alive at once, abandoned ones included: past this, a sync task waits
# for one to end (under its own timeout), so hung tasks cannot pile up threads without end.
MAX_SYNC_THREADS = 64


# What a sync task's thread hands back: its result, or what it raised. The error travels as a
# value and `TaskRegistry.run` raises it: a Future refuses to hold StopIteration, which left
# the attempt hanging until its timeout.
_Outcome = tuple[Any, BaseException | None]


async def _in_thread(
    fn: Callable[..., Any], args: dict[str, Any], slots: asyncio.Semaphore
) -> _Outcome:
    """`fn(**args)` on a daemon thread (with this task's context variables); the thread
    holds one of `slots` until it ends."""
    loop = asyncio.get_running_loop()
    await slots.acquire()
    done: asyncio.Future[_Outcome] = loop.create_future()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome: _Outcome = (context.run(fn, **args), None)
        except BaseException as e:
            outcome = (None, e)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, done, slots, outcome)

    threading.Thread(target=work, name=f"task {fn.__qualname__}", daemon=True).start()
    return await done


def _settle(done: asyncio.Future[_Outcome], slots: asyncio.Semaphore, outcome: _Outcome) -> None:
    slots.release()
    if not done.done():  # else the attempt timed out (or was cancelled) while the thread ran
        done.set_result(outcome)


def _defined_in(fn: Any, module_name: str) -> bool:
    """Only functions the module itself defines are tasks: not what it imports."""
    if not inspect.isfunction(fn):
        return False
    home = getattr(fn, "__module__", "") or ""
    return home == module_name or home.startswith(module_name + ".")


def _json_safe(name: str, value: Any) -> Any:
    """The output as stored: plain JSON (a tuple becomes a list); NodeError if not JSON."""
    check_output(value, name)
    return msgspec.json.decode(msgspec.json.encode(value))
