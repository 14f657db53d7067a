"""The `agent` node executor against real child processes, on both event loops."""

from __future__ import annotations

import os
from typing import Any

import pytest

from headrace.errors import NodeError
from headrace.events import Job
from headrace.nodes import AgentExecutor

REPEAT = 50
BIG = {"blob": "x" * 1_048_576}  # `with` data larger than a pipe buffer


def job(command: list[str], args: Any = None, **config: Any) -> Job:
    return Job(
        run_id="r",
        node_id="n",
        attempt=1,
        kind="agent",
        priority="normal",
        timeout_ms=10_000,
        scheduled_at_ms=0,
        idempotency_key="k",
        args=args,
        config={"command": command, **config},
    )


@pytest.mark.parametrize("args", [None, BIG], ids=["no-with", "1MB-with"])
async def test_an_agent_that_exits_without_reading_stdin_completes_with_null(args: Any) -> None:
    agent = AgentExecutor({})
    for _ in range(REPEAT):
        outcome = await agent.run(job(["true"], args))
        assert (outcome.output, outcome.cost_cents) == (None, 0)


@pytest.mark.parametrize("args", [None, BIG], ids=["no-with", "1MB-with"])
async def test_an_agent_that_fails_without_reading_stdin_reports_exit_code_and_stderr(
    args: Any,
) -> None:
    agent = AgentExecutor({})
    command = ["sh", "-c", "echo about to fail >&2; exit 1"]
    for _ in range(REPEAT):
        with pytest.raises(NodeError) as info:
            await agent.run(job(command, args))
        error = info.value
        assert (error.type, error.retryable) == ("exit_code", True)
        assert error.message == "agent exited with code 1; stderr: about to fail"


async def test_an_agent_reads_its_with_and_reports_cost() -> None:
    code = (
        "import json, sys; d = json.load(sys.stdin); "
        "print('::headrace cost_cents=7', file=sys.stderr); print(json.dumps(len(d['blob'])))"
    )
    path = {"PATH": os.environ.get("PATH", "")}
    outcome = await AgentExecutor({}).run(job(["python", "-c", code], BIG, env_vars=path))
    assert (outcome.output, outcome.cost_cents) == (1_048_576, 7)
