"""What the API refuses at the door, over real HTTP: values the store could not hold and
give back (422 naming where and the limit), versions no column holds, and node outputs that
are not JSON. Values at the limits round-trip on SQLite and on Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.api.app import create_app
from headrace.config import Settings
from headrace.services.runtime import Embedded
from headrace.testing.servers import serve
from headrace.testing.services import postgres_database

pytestmark = pytest.mark.integration

WAIT = """
name: waits
version: 1
inputs:
  x: {}
nodes:
  a: {wait: go}
outputs:
  x: "${{ inputs.x }}"
  got: "${{ nodes.a.output }}"
"""

NOT_JSON = """
name: not-json
version: 1
nodes:
  a: {task: headrace.testing.tasks.not_json, with: {kind: nan}, retry: {max_attempts: 3}}
"""

PATTERN = """
name: pattern
version: 1
inputs:
  code: {type: string, pattern: "^(a+)+$"}
nodes:
  a: {task: headrace.testing.tasks.noop}
"""


async def wait_done(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(600):
        run: dict[str, Any] = (await api.get(f"/v1/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "]" * depth


def inputs_body(x: str) -> str:
    """A start body for `waits` with the JSON text `x` as input x (as sent, not re-encoded)."""
    return '{"workflow_tag": "waits", "inputs": {"x": ' + x + "}}"


def payload_body(payload: str) -> str:
    return '{"payload": ' + payload + "}"


@pytest.fixture(params=["sqlite", "postgres"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API of an embedded runtime on SQLite, or on a fresh Postgres database."""
    async with contextlib.AsyncExitStack() as stack:
        url = f"sqlite:///{tmp_path}/headrace.db"
        if request.param == "postgres":
            url = stack.enter_context(postgres_database())
        settings = Settings(database_url=url, tasks="headrace.testing.tasks")
        runtime = await stack.enter_async_context(Embedded(settings))
        base = await stack.enter_async_context(serve(create_app(runtime)))
        yield await stack.enter_async_context(
            httpx.AsyncClient(base_url=base, timeout=30, trust_env=False)
        )


async def start(api: httpx.AsyncClient, body: str) -> httpx.Response:
    return await api.post("/v1/runs", content=body, headers={"Content-Type": "application/json"})


async def test_inputs_nested_too_deep_or_not_text_are_refused(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/workflows", content=WAIT)).status_code == 201
    deep = await start(api, inputs_body(nested_text(300)))
    assert deep.status_code == 422, deep.text
    assert deep.json()["path"] == "inputs.x" + "[0]" * 63
    assert "deeper than the limit of 64 levels" in deep.json()["detail"]
    lone = await start(api, inputs_body('{"k": "\\ud800"}'))
    assert lone.status_code == 422, lone.text
    assert lone.json()["path"] == "inputs.x.k" and "lone surrogate" in lone.json()["detail"]
    assert (await api.get("/v1/runs")).json()["items"] == []  # nothing was stored


async def test_values_at_the_limit_round_trip(api: httpx.AsyncClient) -> None:
    # inputs: 64 levels with the inputs object; a payload: 64 levels; both read back intact
    assert (await api.post("/v1/workflows", content=WAIT)).status_code == 201
    body = inputs_body(nested_text(63))
    started = await start(api, body)
    assert started.status_code == 201, started.text
    run_id = started.json()["run_id"]
    payload = payload_body(nested_text(64))
    signal = await api.post(
        f"/v1/runs/{run_id}/signals/go",
        content=payload,
        headers={"Content-Type": "application/json"},
    )
    assert signal.status_code == 202, signal.text
    run = await wait_done(api, run_id)
    assert run["status"] == "completed"
    assert run["inputs"] == {"x": nested(63)}
    assert run["nodes"]["a"]["output"] == nested(64)
    assert run["outputs"] == {"x": nested(63), "got": nested(64)}


async def test_a_signal_payload_that_cannot_be_stored_is_refused(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/workflows", content=WAIT)).status_code == 201
    run_id = (
        await api.post("/v1/runs", json={"workflow_tag": "waits", "inputs": {"x": 1}})
    ).json()["run_id"]
    for body, path, why in (
        (payload_body(nested_text(300)), "payload" + "[0]" * 64, "deeper than the limit"),
        ('{"payload": {"note": "\\udfff"}}', "payload.note", "lone surrogate"),
    ):
        r = await api.post(
            f"/v1/runs/{run_id}/signals/go",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["path"] == path and why in r.json()["detail"]
    r = await api.post(f"/v1/runs/{run_id}/signals/go%0A", json={"payload": 1})
    assert r.status_code == 422 and r.json()["path"] == "name"
    run = (await api.get(f"/v1/runs/{run_id}")).json()  # readable, and still waiting
    assert run["status"] == "running" and run["nodes"]["a"]["status"] == "waiting"


async def test_versions_no_column_holds(api: httpx.AsyncClient) -> None:
    big = "name: w\nversion: 9223372036854775808\nnodes: {a: {task: m.f}}\n"
    r = await api.post("/v1/workflows", content=big)
    assert r.status_code == 422 and r.json()["path"] == "version", r.text
    for tag in ("w@9223372036854775808", "w@2147483648", "w@\u00b2"):
        r = await api.get(f"/v1/workflows/{tag}")
        assert r.status_code == 404, (tag, r.text)
        r = await api.post("/v1/runs", json={"workflow_tag": tag})
        assert r.status_code == 404, (tag, r.text)
    r = await api.get("/v1/runs", params={"workflow": "w@99999999999"})  # matches nothing
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}, r.text


async def test_a_task_output_that_is_not_json_fails_the_node(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/workflows", content=NOT_JSON)).status_code == 201
    run_id = (await api.post("/v1/runs", json={"workflow_tag": "not-json"})).json()["run_id"]
    run = await wait_done(api, run_id)
    assert run["status"] == "failed"
    node = run["nodes"]["a"]
    assert node["status"] == "failed" and node["attempts"] == 1  # not retried
    assert node["error"]["type"] == "output_not_json" and not node["error"]["retryable"]
    assert "output.ratio is nan" in node["error"]["message"]


async def test_a_catastrophic_pattern_is_answered_at_once(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/workflows", content=PATTERN)).status_code == 201
    began = time.monotonic()
    r = await api.post(
        "/v1/runs", json={"workflow_tag": "pattern", "inputs": {"code": "a" * 40 + "!"}}
    )
    assert time.monotonic() - began < 10  # Python's re: ~81 s at 28 a's, doubling per a
    assert r.status_code == 422 and r.json()["path"] == "inputs.code", r.text
    bad = PATTERN.replace("^(a+)+$", "(a)\\\\1")
    r = await api.post("/v1/workflows", content=bad.replace("pattern\n", "backref\n", 1))
    assert r.status_code == 422 and r.json()["path"] == "inputs.code.pattern", r.text
