"""Failure paths end to end over real HTTP: retries, timeouts, limits, bad input, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from headrace.api.app import create_app
from headrace.services.runtime import Embedded
from headrace.testing.servers import serve

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")

T = "headrace.testing.tasks"
RETRY: dict[str, Any] = {"max_attempts": 3, "initial_interval": "10ms", "max_interval": "50ms"}
PROBLEM = "application/problem+json"
TERMINAL = ("completed", "failed", "cancelled")


# --- helpers ----------------------------------------------------------------------------------


def spec(name: str, nodes: dict[str, Any], **extra: Any) -> str:
    """A workflow as JSON text (JSON is YAML too), so commands need no YAML quoting."""
    return json.dumps({"name": name, "version": 1, "nodes": nodes, **extra})


def retry(attempts: int) -> dict[str, Any]:
    return {**RETRY, "max_attempts": attempts}


async def register(api: httpx.AsyncClient, source: str) -> dict[str, Any]:
    r = await api.post("/v1/workflows", content=source)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def start(api: httpx.AsyncClient, tag: str, inputs: dict[str, Any] | None = None) -> str:
    r = await api.post("/v1/runs", json={"workflow_tag": tag, "inputs": inputs or {}})
    assert r.status_code == 201, r.text
    return str(r.json()["run_id"])


async def wait_done(api: httpx.AsyncClient, run_id: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run: dict[str, Any] = (await api.get(f"/v1/runs/{run_id}")).json()
        if run["status"] in TERMINAL:
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not end within {timeout_s}s")


async def run_once(api: httpx.AsyncClient, source: str) -> dict[str, Any]:
    """Register `source`, start one run of it and wait for its end."""
    tag = (await register(api, source))["tag"]
    return await wait_done(api, await start(api, tag))


async def sse_text(api: httpx.AsyncClient, run_id: str) -> str:
    async with api.stream("GET", f"/v1/runs/{run_id}/events") as r:
        assert r.status_code == 200
        return "".join([chunk async for chunk in r.aiter_text()])


async def events(api: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """The run's events (finished run: replay, then the stream ends) as {type, **data}."""
    out: list[dict[str, Any]] = []
    kind = ""
    for line in (await sse_text(api, run_id)).splitlines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            out.append({"type": kind, **json.loads(line[6:])})
    return out


def assert_problem(r: httpx.Response, status: int, path: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"], body
    if path is not None:
        assert body.get("path") == path, body
    return body


async def counts(api: httpx.AsyncClient) -> tuple[int, int]:
    workflows = (await api.get("/v1/workflows")).json()["items"]
    runs = (await api.get("/v1/runs", params={"limit": 1000})).json()["items"]
    return len(workflows), len(runs)


# --- 1-5: tasks -------------------------------------------------------------------------------


async def test_raising_task_is_retried_then_fails_the_run(api: httpx.AsyncClient) -> None:
    source = spec(
        "boom",
        {
            "a": {"task": f"{T}.boom", "retry": RETRY},
            "b": {"needs": ["a"], "task": f"{T}.noop"},
            "c": {"needs": ["b"], "task": f"{T}.noop"},
            "s": {"task": f"{T}.sleep", "with": {"seconds": 30}},
        },
    )
    began = time.monotonic()
    run = await run_once(api, source)
    assert time.monotonic() - began < 10
    assert run["status"] == "failed"
    assert run["nodes"]["a"] == {
        "status": "failed",
        "attempts": 3,
        "error": {"type": "task_error", "message": "RuntimeError: boom", "retryable": True},
    }
    assert run["error"] == {
        "type": "task_error",
        "message": "node a failed: RuntimeError: boom",
        "retryable": False,
    }
    # Never started: cancelled, with no attempt. Running when the run failed: cancelled too.
    assert run["nodes"]["b"] == {"status": "cancelled", "attempts": 0, "output": None}
    assert run["nodes"]["c"] == {"status": "cancelled", "attempts": 0, "output": None}
    assert run["nodes"]["s"]["status"] == "cancelled" and run["nodes"]["s"]["attempts"] == 1
    assert run["outputs"] is None and run["ended_at"]

    everything = await events(api, run["run_id"])
    assert everything[-1]["type"] == "RunFailed" and everything[-1]["node_id"] == "a"
    history = [e for e in everything if e["type"].startswith("Node") and e["node_id"] == "a"]
    retries = [e for e in history if e["type"] == "NodeRetrying"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert [e["retry_at_ms"] - e["at_ms"] for e in retries] == [10, 20]  # exponential backoff
    assert [e["attempt"] for e in history if e["type"] == "NodeScheduled"] == [1, 2, 3]
    assert history[-1]["type"] == "NodeFailed" and history[-1]["attempt"] == 3


async def test_flaky_task_completes_on_the_third_attempt(api: httpx.AsyncClient) -> None:
    key = f"flaky-{uuid.uuid4()}"
    source = spec(
        "flaky",
        {"a": {"task": f"{T}.fail_times", "with": {"key": key, "times": 2}, "retry": RETRY}},
        outputs={"calls": "${{ nodes.a.output.calls }}"},
    )
    run = await run_once(api, source)
    assert run["status"] == "completed", run
    assert run["nodes"]["a"] == {
        "status": "completed",
        "attempts": 3,
        "output": {"key": key, "calls": 3},
    }
    assert run["outputs"] == {"calls": 3} and run["error"] is None


async def test_permanent_error_is_not_retried(api: httpx.AsyncClient) -> None:
    run = await run_once(api, spec("perm", {"p": {"task": f"{T}.permanent", "retry": RETRY}}))
    assert run["status"] == "failed"
    assert run["nodes"]["p"] == {
        "status": "failed",
        "attempts": 1,
        "error": {"type": "permanent", "message": "no retry", "retryable": False},
    }
    assert run["error"]["type"] == "permanent"
    assert run["error"]["message"] == "node p failed: no retry"


async def test_hanging_task_times_out_per_attempt(api: httpx.AsyncClient) -> None:
    source = spec(
        "hang",
        {
            "h": {
                "task": f"{T}.sleep",
                "with": {"seconds": 30},
                "timeout": "200ms",
                "retry": retry(2),
            }
        },
    )
    began = time.monotonic()
    run = await run_once(api, source)
    elapsed = time.monotonic() - began
    assert run["status"] == "failed"
    node = run["nodes"]["h"]
    assert node["status"] == "failed" and node["attempts"] == 2
    assert node["error"]["type"] == "timeout" and node["error"]["retryable"] is True
    assert run["error"]["type"] == "timeout"
    # The worker enforces it: well under the engine's backstop (timeout + 5 s) and the 30 s.
    assert elapsed < 5, elapsed


async def test_unknown_and_foreign_tasks_fail_without_running(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    run = await run_once(api, spec("nope", {"n": {"task": f"{T}.nope", "retry": RETRY}}))
    assert run["status"] == "failed"
    node = run["nodes"]["n"]
    assert node["attempts"] == 1 and node["error"]["type"] == "unknown_task"
    assert node["error"]["retryable"] is False and f"{T}.nope" in node["error"]["message"]

    pwned = tmp_path / "pwned"
    source = spec(
        "escape",
        {"x": {"task": "os.system", "with": {"command": f"touch {pwned}"}, "retry": RETRY}},
    )
    run = await run_once(api, source)
    assert run["status"] == "failed"
    node = run["nodes"]["x"]
    assert node["attempts"] == 1 and node["error"]["type"] == "unknown_task"
    assert run["error"]["type"] == "unknown_task"
    await asyncio.sleep(0.1)
    assert not pwned.exists()


# --- 6-7: agents ------------------------------------------------------------------------------


async def test_agent_over_its_memory_limit(api: httpx.AsyncClient) -> None:
    agent = {"command": ["python", "-c", "x = bytearray(1024**3)"], "limits": {"memory": "128Mi"}}
    run = await run_once(api, spec("hungry", {"m": {"agent": agent, "retry": retry(1)}}))
    assert run["status"] == "failed"
    node = run["nodes"]["m"]
    assert node["attempts"] == 1 and node["error"]["type"] == "limit_exceeded", node
    assert str(128 * 1024 * 1024) in node["error"]["message"]
    assert run["error"]["type"] == "limit_exceeded"


ENV_SCRIPT = """
import json, os, sys
names = ["TOKEN", "PLAIN", "HEADRACE_RUN_ID", "HEADRACE_NODE_ID", "HEADRACE_ATTEMPT",
         "HEADRACE_IDEMPOTENCY_KEY"]
print(json.dumps({"env": sorted(os.environ), "values": {n: os.environ.get(n) for n in names},
                  "stdin": json.load(sys.stdin)}))
"""


async def test_agent_contract(api: httpx.AsyncClient) -> None:
    ok = spec(
        "agents",
        {
            "env": {
                "agent": {
                    "command": ["python", "-c", ENV_SCRIPT],
                    "env_vars": {"TOKEN": "${{ secrets.token }}", "PLAIN": "x"},
                },
                "with": {"a": 1},
                "retry": RETRY,
            },
            "silent": {"agent": {"command": ["python", "-c", "pass"]}, "retry": RETRY},
            "cost": {
                "agent": {
                    "command": [
                        "python",
                        "-c",
                        "import sys; sys.stderr.write('noise\\n::headrace cost_cents=7\\n')",
                    ]
                },
                "retry": RETRY,
            },
        },
    )
    bad = spec(
        "agent-exit",
        {
            "bad": {
                "agent": {
                    "command": [
                        "python",
                        "-c",
                        "import sys; sys.stderr.write('bad thing\\n'); sys.exit(3)",
                    ]
                },
                "retry": RETRY,
            }
        },
    )
    ok_id = await start(api, (await register(api, ok))["tag"])
    bad_id = await start(api, (await register(api, bad))["tag"])
    run, failed = await wait_done(api, ok_id), await wait_done(api, bad_id)

    assert run["status"] == "completed", run
    out = run["nodes"]["env"]["output"]
    passed = {k for k in ("PATH", "HOME", "LANG") if k in os.environ}
    expected = passed | {
        "TOKEN",
        "PLAIN",
        "HEADRACE_RUN_ID",
        "HEADRACE_NODE_ID",
        "HEADRACE_ATTEMPT",
        "HEADRACE_IDEMPOTENCY_KEY",
    }
    assert set(out["env"]) - {"LC_CTYPE"} == expected
    assert out["values"] == {
        "TOKEN": "***",  # the secret reached the agent, and was scrubbed from its output
        "PLAIN": "x",
        "HEADRACE_RUN_ID": ok_id,
        "HEADRACE_NODE_ID": "env",
        "HEADRACE_ATTEMPT": "1",
        "HEADRACE_IDEMPOTENCY_KEY": f"{ok_id}/env",
    }
    assert out["stdin"] == {"a": 1}
    assert run["nodes"]["silent"] == {"status": "completed", "attempts": 1, "output": None}
    assert run["nodes"]["cost"] == {"status": "completed", "attempts": 1, "output": None}
    assert run["cost_cents"] == 7

    assert failed["status"] == "failed"
    node = failed["nodes"]["bad"]
    assert node["attempts"] == 3 and node["error"]["type"] == "exit_code", node
    assert "exited with code 3" in node["error"]["message"]
    assert "bad thing" in node["error"]["message"]
    assert failed["error"]["type"] == "exit_code" and "bad thing" in failed["error"]["message"]
    assert failed["cost_cents"] == 0


# --- 8-9: http --------------------------------------------------------------------------------


async def test_http_node_retries_a_500_with_the_same_idempotency_key(
    api: httpx.AsyncClient,
) -> None:
    seen: list[dict[str, str]] = []

    async def flaky(request: Request) -> Response:
        seen.append(dict(request.headers))
        if len(seen) == 1:
            return JSONResponse({"error": "try later"}, status_code=500)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/flaky", flaky, methods=["POST"])])
    async with serve(app) as url:
        source = spec(
            "flaky-http",
            {
                "call": {
                    "http": {"method": "POST", "url": f"{url}/flaky", "json": {"n": 1}},
                    "retry": RETRY,
                    "timeout": "5s",
                }
            },
        )
        run = await run_once(api, source)
    assert run["status"] == "completed", run
    node = run["nodes"]["call"]
    assert node["status"] == "completed" and node["attempts"] == 2
    out = node["output"]
    assert set(out) == {"status", "headers", "body"}
    assert out["status"] == 200 and out["body"] == {"ok": True}
    assert out["headers"]["content-type"] == "application/json"
    assert len(seen) == 2
    key = f"{run['run_id']}/call"
    assert [h["idempotency-key"] for h in seen] == [key, key]
    retried = [e for e in await events(api, run["run_id"]) if e["type"] == "NodeRetrying"]
    assert [e["error"]["type"] for e in retried] == ["http_status"]
    assert "500" in retried[0]["error"]["message"]


async def test_http_node_against_a_silent_server_times_out(api: httpx.AsyncClient) -> None:
    with socket.socket() as silent:  # listens, never accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        source = spec(
            "silent-http",
            {
                "call": {
                    "http": {"url": f"http://127.0.0.1:{port}/x"},
                    "timeout": "300ms",
                    "retry": retry(2),
                }
            },
        )
        began = time.monotonic()
        run = await run_once(api, source)
        elapsed = time.monotonic() - began
    assert run["status"] == "failed"
    node = run["nodes"]["call"]
    assert node["attempts"] == 2 and node["error"]["type"] == "timeout", node
    assert run["error"]["type"] == "timeout"
    assert elapsed < 5, elapsed


async def test_a_wait_times_out_on_its_own_timeout_only(api: httpx.AsyncClient) -> None:
    # defaults.timeout bounds attempts; a wait has its own, durable timer, and is not retried
    waits = {
        "short": {"wait": {"signal": "go", "timeout": "300ms"}},
        "long": {"wait": {"signal": "go", "timeout": "1h"}},
    }
    source = spec("waits", waits, defaults={"timeout": "100ms", "retry": retry(3)})
    tag = (await register(api, source))["tag"]
    run = await wait_done(api, await start(api, tag))
    assert run["status"] == "failed"
    assert run["nodes"]["short"]["status"] == "failed"
    assert run["nodes"]["short"]["attempts"] == 1
    assert run["nodes"]["short"]["error"]["type"] == "timeout"
    assert run["nodes"]["long"]["status"] == "cancelled"  # still waiting when the run failed
    assert run["error"]["message"].startswith("node short failed"), run["error"]


# --- 10: body limits --------------------------------------------------------------------------

SMALL = spec("small", {"a": {"task": f"{T}.noop"}})


async def test_oversized_bodies_get_413_and_the_server_keeps_serving(
    api: httpx.AsyncClient,
) -> None:
    limit = 1_048_576
    r = await api.post("/v1/workflows", content=b"x" * (10 * 1024 * 1024))
    body = assert_problem(r, 413)
    assert body["title"] == "Content Too Large" and str(limit) in body["detail"]
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await register(api, spec("after", {"a": {"task": f"{T}.noop"}})))["tag"] == "after@1"

    assert_problem(await api.post("/v1/workflows", content=b"#" * (limit + 1)), 413)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"#" * 65_536

    assert_problem(await api.post("/v1/workflows", content=chunked()), 413)

    # Exactly at the limit is fine: a valid spec padded with a YAML comment.
    padded = SMALL + "\n#"
    padded += "x" * (limit - len(padded.encode()))
    assert len(padded.encode()) == limit
    r = await api.post("/v1/workflows", content=padded)
    assert r.status_code == 201, r.text
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.post("/v1/runs", json={"workflow_tag": "small"})).status_code == 201
    tags = [w["tag"] for w in (await api.get("/v1/workflows")).json()["items"]]
    assert tags == ["after@1", "small@1"]


async def test_a_configured_body_limit_is_the_one_enforced(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=4096)  # HEADRACE_MAX_BODY_BYTES
    async with (
        Embedded(settings) as rt,
        serve(create_app(rt)) as url,
        httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as api,
    ):
        body = assert_problem(await api.post("/v1/workflows", content=b"#" * 4097), 413)
        assert "4096" in body["detail"]
        under = SMALL + "\n#" + "x" * (4000 - len(SMALL))
        assert (await api.post("/v1/workflows", content=under)).status_code == 201
        assert [w["tag"] for w in (await api.get("/v1/workflows")).json()["items"]] == ["small@1"]


async def test_unknown_routes_and_methods_are_problems(api: httpx.AsyncClient) -> None:
    body = assert_problem(await api.get("/v1/nope"), 404)
    assert body["detail"] == "no such endpoint: GET /v1/nope"
    r = await api.delete("/v1/runs")
    body = assert_problem(r, 405)
    assert body["detail"] == "/v1/runs does not take DELETE" and r.headers["allow"]


# --- 11: bad input ----------------------------------------------------------------------------


async def test_invalid_workflows_are_refused_and_not_stored(api: httpx.AsyncClient) -> None:
    before = await counts(api)
    post = api.post

    assert_problem(await post("/v1/workflows", content="name: bad\nnodes: {a: ["), 422, None)
    assert_problem(await post("/v1/workflows", content="- 1\n- 2\n"), 422)
    assert_problem(await post("/v1/workflows", content=b"\xff\xfe"), 400)

    cycle = spec(
        "cyc",
        {"a": {"needs": ["b"], "task": f"{T}.noop"}, "b": {"needs": ["a"], "task": f"{T}.noop"}},
    )
    body = assert_problem(await post("/v1/workflows", content=cycle), 422)
    assert body["path"].endswith(".needs") and "cycle" in body["detail"]
    # A cycle made by an expression, not by `needs`.
    cycle = spec(
        "cyc2",
        {
            "a": {"task": f"{T}.echo", "with": {"v": "${{ nodes.b.output }}"}},
            "b": {"needs": ["a"], "task": f"{T}.noop"},
        },
    )
    body = assert_problem(await post("/v1/workflows", content=cycle), 422)
    assert body["path"].endswith(".needs") and "cycle" in body["detail"]

    ref = spec("ref", {"a": {"task": f"{T}.echo", "with": {"v": "${{ nodes.zzz.output }}"}}})
    body = assert_problem(await post("/v1/workflows", content=ref), 422, "nodes.a.with.v")
    assert "zzz" in body["detail"]
    needs = spec("ref2", {"a": {"needs": ["zzz"], "task": f"{T}.noop"}})
    assert_problem(await post("/v1/workflows", content=needs), 422, "nodes.a.needs[0]")
    inp = spec("ref3", {"a": {"task": f"{T}.echo", "with": {"v": "${{ inputs.missing }}"}}})
    assert_problem(await post("/v1/workflows", content=inp), 422, "nodes.a.with.v")
    secret = spec("ref4", {"a": {"task": f"{T}.echo", "with": {"v": "${{ secrets.token }}"}}})
    assert_problem(await post("/v1/workflows", content=secret), 422, "nodes.a.with.v")
    attempts = spec("ref5", {"a": {"task": f"{T}.noop", "retry": {"max_attempts": 0}}})
    assert_problem(await post("/v1/workflows", content=attempts), 422, "nodes.a.retry.max_attempts")
    assert await counts(api) == before


TYPED = spec(
    "typed",
    {"a": {"task": f"{T}.add", "with": {"a": "${{ inputs.x }}", "b": 1}}},
    inputs={"x": {"type": "number"}},
)


async def test_invalid_run_requests_are_refused_and_start_nothing(api: httpx.AsyncClient) -> None:
    await register(api, TYPED)
    before = await counts(api)

    async def start_run(body: Any) -> httpx.Response:
        return await api.post("/v1/runs", json=body)

    assert_problem(
        await start_run({"workflow_tag": "typed", "inputs": {"x": "no"}}), 422, "inputs.x"
    )
    body = assert_problem(await start_run({"workflow_tag": "typed", "inputs": {}}), 422, "inputs.x")
    assert "required" in body["detail"]
    assert_problem(await start_run({"workflow_tag": "typed"}), 422, "inputs.x")
    body = assert_problem(
        await start_run({"workflow_tag": "typed", "inputs": {"x": 1, "y": 2}}), 422, "inputs.y"
    )
    assert_problem(await start_run({"workflow_tag": "typed", "inputs": [1]}), 422, "inputs")
    assert_problem(await start_run({"inputs": {"x": 1}}), 422, "workflow_tag")
    assert_problem(await start_run({"workflow_tag": "typed", "extra": 1}), 422, "extra")
    assert_problem(await start_run({"workflow_tag": "nope", "inputs": {"x": 1}}), 404)
    assert_problem(await start_run({"workflow_tag": "typed@2", "inputs": {"x": 1}}), 404)
    assert_problem(await start_run({"workflow_tag": "typed@x", "inputs": {"x": 1}}), 404)
    r = await api.post(
        "/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(r, 422)
    assert await counts(api) == before

    run_id = await start(api, "typed", {"x": 1})
    assert (await wait_done(api, run_id))["outputs"] == {}
    assert await counts(api) == (before[0], before[1] + 1)


async def test_unknown_runs_are_404_and_ended_runs_refuse_signals(
    api: httpx.AsyncClient,
) -> None:
    for rid in (str(uuid.uuid4()), "not-a-uuid"):
        assert_problem(await api.get(f"/v1/runs/{rid}"), 404)
        assert_problem(await api.post(f"/v1/runs/{rid}/cancel"), 404)
        assert_problem(await api.post(f"/v1/runs/{rid}/signals/go", json={"payload": 1}), 404)
        assert_problem(await api.get(f"/v1/runs/{rid}/events"), 404)
        assert_problem(await api.get(f"/v1/runs/{rid}/nodes/a"), 404)
    assert await counts(api) == (0, 0)

    await register(api, TYPED)
    run_id = await start(api, "typed", {"x": 1})
    assert (await wait_done(api, run_id))["status"] == "completed"
    assert_problem(await api.get(f"/v1/runs/{run_id}/nodes/zzz"), 404)
    body = assert_problem(await api.post(f"/v1/runs/{run_id}/signals/go", json={"payload": 1}), 409)
    assert "completed" in body["detail"]
    before = await sse_text(api, run_id)
    assert "SignalReceived" not in before
    r = await api.post(f"/v1/runs/{run_id}/cancel")  # idempotent on an ended run: unchanged
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert await sse_text(api, run_id) == before


async def test_versions_conflicts_and_latest(api: httpx.AsyncClient) -> None:
    def versioned(version: int, b: int) -> str:
        nodes = {"a": {"task": f"{T}.add", "with": {"a": 1, "b": b}}}
        source = json.loads(spec("ver", nodes, outputs={"sum": "${{ nodes.a.output.sum }}"}))
        return json.dumps({**source, "version": version})

    assert (await register(api, versioned(1, 1)))["tag"] == "ver@1"
    assert (await register(api, versioned(2, 2)))["tag"] == "ver@2"
    body = assert_problem(await api.post("/v1/workflows", content=versioned(1, 5)), 409)
    assert "ver@1" in body["detail"]
    assert_problem(await api.post("/v1/workflows", content=versioned(2, 1)), 409)
    assert (await api.post("/v1/workflows", content=versioned(1, 1))).status_code == 200
    assert [w["tag"] for w in (await api.get("/v1/workflows")).json()["items"]] == [
        "ver@1",
        "ver@2",
    ]
    assert (await api.get("/v1/workflows/ver")).json()["version"] == 2
    latest = await wait_done(api, await start(api, "ver"))
    assert latest["workflow_tag"] == "ver@2" and latest["outputs"] == {"sum": 3}
    first = await wait_done(api, await start(api, "ver@1"))
    assert first["workflow_tag"] == "ver@1" and first["outputs"] == {"sum": 2}


async def test_invalid_list_parameters(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/runs", params={"status": "bogus"}), 422, "status.0")
    assert_problem(await api.get("/v1/runs", params={"cursor": "!!!"}), 422, "cursor")
    assert_problem(await api.get("/v1/runs", params={"cursor": "bm90LWEtY3Vyc29y"}), 422, "cursor")
    assert_problem(await api.get("/v1/runs", params={"limit": 0}), 422, "limit")
    assert_problem(await api.get("/v1/runs", params={"limit": "many"}), 422, "limit")
    r = await api.get("/v1/runs/" + str(uuid.uuid4()) + "/events", headers={"Last-Event-ID": "x"})
    assert_problem(r, 404)


# --- 12: secrets ------------------------------------------------------------------------------

LEAKY_AGENT = """
import json, os, sys
token = os.environ["TOKEN"]
sys.stderr.write("stderr " + token + "\\n")
if os.environ["HEADRACE_ATTEMPT"] == "1":
    print("stdout", token)
    sys.exit(1)
print(json.dumps({"token": token, "note": "got " + token}))
"""


async def test_secrets_never_leak(
    runtime: Embedded, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = runtime.secrets["token"]  # conftest's secret
    assert len(secret) > 8
    received: list[str] = []

    async def echo(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        received.append(auth)
        status = 500 if request.url.path.endswith("fail") else 200
        return JSONResponse({"authorization": auth, "said": f"you are {auth}"}, status)

    app = Starlette(routes=[Route("/echo", echo), Route("/echo-fail", echo)])
    async with serve(app) as url:
        bearer = {"Authorization": "Bearer ${{ secrets.token }}"}
        ok = spec(
            "leaky",
            {
                "h": {"http": {"url": f"{url}/echo", "headers": bearer}, "retry": RETRY},
                "h2": {
                    "http": {"url": f"{url}/echo", "auth": {"bearer": "${{ secrets.token }}"}},
                    "retry": RETRY,
                },
                "ag": {
                    "agent": {
                        "command": ["python", "-c", LEAKY_AGENT],
                        "env_vars": {"TOKEN": "${{ secrets.token }}"},
                    },
                    "retry": RETRY,
                },
            },
            outputs={"echo": "${{ nodes.h.output.body.authorization }}"},
        )
        failing = spec(
            "leaky-fail",
            {"f": {"http": {"url": f"{url}/echo-fail", "headers": bearer}, "retry": retry(2)}},
        )
        ok_id = await start(api, (await register(api, ok))["tag"])
        fail_id = await start(api, (await register(api, failing))["tag"])
        run, failed = await wait_done(api, ok_id), await wait_done(api, fail_id)

    # The secret really was sent, so finding no trace of it below means it was scrubbed.
    assert received and all(a == f"Bearer {secret}" for a in received)
    assert run["status"] == "completed", json.dumps(run, indent=1)
    assert run["outputs"] == {"echo": "Bearer ***"}
    assert run["nodes"]["h"]["output"]["body"] == {
        "authorization": "Bearer ***",
        "said": "you are Bearer ***",
    }
    assert run["nodes"]["h2"]["output"]["body"]["authorization"] == "Bearer ***"
    assert run["nodes"]["ag"]["attempts"] == 2
    assert run["nodes"]["ag"]["output"] == {"token": "***", "note": "got ***"}
    assert failed["status"] == "failed" and failed["nodes"]["f"]["attempts"] == 2
    assert failed["nodes"]["f"]["error"]["type"] == "http_status"
    assert "***" in failed["nodes"]["f"]["error"]["message"]

    texts = {
        "runs list": (await api.get("/v1/runs")).text,
        "workflows": (await api.get("/v1/workflows/leaky")).text,
        "metrics": (await api.get("/metrics")).text,
    }
    for rid in (ok_id, fail_id):
        texts[f"run {rid}"] = (await api.get(f"/v1/runs/{rid}")).text
        texts[f"events {rid}"] = await sse_text(api, rid)
        for node in ("h", "h2", "ag", "f"):
            texts[f"node {rid} {node}"] = (await api.get(f"/v1/runs/{rid}/nodes/{node}")).text
    retried = texts[f"events {ok_id}"]
    assert "NodeRetrying" in retried and "stderr ***" in retried  # the agent's first attempt
    for where, text in texts.items():
        assert secret not in text, where

    db = Path(runtime.settings.database_url.removeprefix("sqlite:///"))
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    assert db in files and Path(f"{db}-wal") in files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path

    assert caplog.records  # DEBUG capture is on (httpx and httpcore log every request)
    for record in caplog.records:
        assert secret not in record.getMessage(), record
    assert secret not in caplog.text
