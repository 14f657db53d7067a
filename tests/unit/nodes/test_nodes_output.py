"""Node outputs are stored as JSON: a value that is not JSON fails the node, never changes."""

from __future__ import annotations

import pytest

from headrace.errors import NodeError
from headrace.events import Job
from headrace.nodes.agent import _parse
from headrace.nodes.base import check_output
from headrace.nodes.task import TaskRegistry

T = "headrace.testing.tasks"


def job(kind: str) -> Job:
    return Job(
        run_id="r",
        node_id="n",
        attempt=1,
        kind="task",
        priority="normal",
        timeout_ms=5000,
        scheduled_at_ms=0,
        idempotency_key="k",
        args={"kind": kind},
        task=f"{T}.not_json",
    )


@pytest.mark.parametrize(
    ("kind", "where", "why"),
    [
        ("nan", "output.ratio", "is nan"),
        ("inf", r"output.ratio\[1\]", "is inf"),
        ("set", "output.tags", "is a Python set"),
        ("object", "output.when", "is a Python object"),
        ("deep", r"output(\[0\]){64}", "is nested deeper than the limit of 64"),
        ("surrogate", "output.text", "holds a lone surrogate"),
    ],
)
async def test_a_task_output_that_is_not_json_fails_the_node(
    kind: str, where: str, why: str
) -> None:
    with pytest.raises(NodeError, match=f"not JSON: {where} {why}") as info:
        await TaskRegistry([T]).run(job(kind))
    assert info.value.type == "output_not_json"
    assert not info.value.retryable


async def test_a_json_output_is_kept() -> None:
    assert (await TaskRegistry([T]).run(job("plain"))).output == {"ratio": 0.5}


def test_agent_and_http_outputs_are_strict_json_and_bounded() -> None:
    # msgspec parses both (agent stdout, an http JSON body): NaN and lone surrogates never
    # parse, so only the depth remains to check
    for text in (b'{"x": NaN}', b"[1e999]", b'"\\ud800"'):
        with pytest.raises(NodeError, match="not one JSON document"):
            _parse(text)
    deep = _parse(b"[" * 65 + b"]" * 65)
    with pytest.raises(NodeError, match="nested deeper") as info:
        check_output(deep, "the agent")
    assert info.value.type == "output_not_json"
    check_output(_parse(b"[" * 64 + b"]" * 64), "the agent")
