"""Tests for the ``task`` node executor: sync tasks on real daemon threads."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from headrace.errors import NodeError
from headrace.events import Job
from headrace.nodes.task import MAX_SYNC_THREADS, TaskRegistry
from headrace.testing import tasks

T = "headrace.testing.tasks"


def job(task: str, **args: Any) -> Job:
    return Job(
        run_id="r",
        node_id="n",
        attempt=1,
        kind="task",
        priority="normal",
        timeout_ms=1000,
        scheduled_at_ms=0,
        idempotency_key="k",
        args=args,
        task=f"{T}.{task}",
    )


async def test_abandoned_sync_threads_hold_their_slots_until_they_end() -> None:
    registry = TaskRegistry([T])
    key = f"hold-{uuid.uuid4()}"
    try:
        # Every slot taken by an attempt that timed out while its thread runs on.
        for _ in range(MAX_SYNC_THREADS):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await registry.run(job("hold", key=key))
        holders = [t for t in threading.enumerate() if t.name == "task hold"]
        assert len(holders) == MAX_SYNC_THREADS
        assert all(t.daemon for t in holders)  # they never keep the process from exiting
        # No thread for another sync task until one of them ends...
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await registry.run(job("echo", v=1))
        waiting = asyncio.create_task(registry.run(job("echo", v=2)))
    finally:
        tasks.release(key)
    # ...then it runs.
    async with asyncio.timeout(10):
        outcome = await waiting
    assert outcome.output == {"v": 2}


async def test_a_sync_task_that_raises_stop_iteration_fails_as_a_task_error() -> None:
    # A Future cannot hold StopIteration: it must still end the attempt, not leave it hanging.
    with pytest.raises(NodeError) as caught:
        async with asyncio.timeout(5):
            await TaskRegistry([T]).run(job("exhausted"))
    assert caught.value.type == "task_error" and caught.value.retryable
    assert caught.value.message.startswith("StopIteration"), caught.value.message


@pytest.mark.parametrize("task", ["exits", "exits_async"])
async def test_a_task_that_calls_sys_exit_fails_its_attempt(task: str) -> None:
    with pytest.raises(NodeError) as caught:  # not SystemExit, which would stop the worker
        await TaskRegistry([T]).run(job(task, code=3))
    assert caught.value.type == "task_error" and caught.value.retryable
    assert caught.value.message == "SystemExit: 3"
