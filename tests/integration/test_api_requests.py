"""What the API answers to requests at its edges: map pages, idempotency keys reused with
other inputs, signals nobody waits for, bodies that are not JSON, bodies over the limit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from test_api_runs import CHAIN, wait_done

from headrace.errors import InputError
from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of
from headrace.store.listing import RunFilter

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")

PROBLEM = "application/problem+json"


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"], body
    return body


async def register(api: httpx.AsyncClient, source: str) -> str:
    r = await api.post("/v1/workflows", content=source)
    assert r.status_code == 201, r.text
    return str(r.json()["tag"])


async def start(api: httpx.AsyncClient, tag: str, inputs: dict[str, Any]) -> str:
    r = await api.post("/v1/runs", json={"workflow_tag": tag, "inputs": inputs})
    assert r.status_code == 201, r.text
    return str(r.json()["run_id"])


# --- a map node's page holds its page, not the whole output ----------------------------------

FAN = """
name: fan
inputs: {xs: {type: array}}
nodes:
  m: {map: "${{ inputs.xs }}", task: headrace.testing.tasks.echo, with: {v: "${{ item }}"}}
"""


async def test_a_map_node_page_has_its_children_not_the_whole_output(
    api: httpx.AsyncClient,
) -> None:
    await register(api, FAN)
    run_id = await start(api, "fan", {"xs": [f"item-{i:04d}" for i in range(500)]})
    assert (await wait_done(api, run_id))["status"] == "completed"

    r = await api.get(f"/v1/runs/{run_id}/nodes/m", params={"limit": 2})
    page = r.json()
    assert "output" not in page, "the map's whole output came with a page of 2"
    assert len(r.content) < 2_000, len(r.content)
    assert page["node_id"] == "m" and page["status"] == "completed"
    assert page["children"] == {"total": 500, "completed": 500}
    assert [c["node_id"] for c in page["items"]] == ["m[0]", "m[1]"]
    assert [c["output"] for c in page["items"]] == [{"v": "item-0000"}, {"v": "item-0001"}]
    assert page["next_offset"] == 2

    # Paging through gives every child's output in item order: the map's output.
    outputs: list[Any] = []
    offset: int | None = 0
    while offset is not None:
        page = (await api.get(f"/v1/runs/{run_id}/nodes/m", params={"offset": offset})).json()
        outputs += [c["output"] for c in page["items"]]
        offset = page["next_offset"]
    run = (await api.get(f"/v1/runs/{run_id}")).json()
    assert outputs == run["nodes"]["m"]["output"] == [{"v": f"item-{i:04d}"} for i in range(500)]


# --- an Idempotency-Key names one request ----------------------------------------------------

DEFAULTS = """
name: dflt
version: 1
inputs:
  x: {type: number}
  y: {type: number, default: 5}
nodes:
  a: {task: headrace.testing.tasks.add, with: {a: "${{ inputs.x }}", b: "${{ inputs.y }}"}}
"""


async def test_a_key_reused_with_other_inputs_is_refused(api: httpx.AsyncClient) -> None:
    await register(api, DEFAULTS)
    await register(api, CHAIN)
    key = {"Idempotency-Key": "order-7"}

    async def post(body: dict[str, Any]) -> httpx.Response:
        return await api.post("/v1/runs", json=body, headers=key)

    first = await post({"workflow_tag": "dflt", "inputs": {"x": 1}})
    assert first.status_code == 201, first.text
    run_id = first.json()["run_id"]

    body = assert_problem(await post({"workflow_tag": "dflt", "inputs": {"x": 2}}), 422)
    assert body["path"] == "Idempotency-Key" and run_id in body["detail"]
    assert "other inputs" in body["detail"] and "inputs.x" in body["detail"]
    body = assert_problem(await post({"workflow_tag": "dflt", "inputs": {"x": 1, "y": 6}}), 422)
    assert "inputs.y" in body["detail"] and "inputs.x" not in body["detail"]
    body = assert_problem(await post({"workflow_tag": "dflt", "inputs": {"x": True}}), 422)
    body = assert_problem(await post({"workflow_tag": "chain", "inputs": {"x": 1}}), 422)
    assert body["path"] == "Idempotency-Key" and "dflt@1" in body["detail"]

    # The same request, however it is spelled: the tag with or without its version, a
    # default given or left out. Still the one run.
    for same in (
        {"workflow_tag": "dflt", "inputs": {"x": 1}},
        {"workflow_tag": "dflt@1", "inputs": {"x": 1, "y": 5}},
        {"workflow_tag": "dflt", "inputs": {"y": 5, "x": 1}},
    ):
        r = await post(same)
        assert r.status_code == 200, r.text
        assert r.json()["run_id"] == run_id
    # A newer version registered since: "dflt" alone still names the key's run.
    await register(api, DEFAULTS.replace("version: 1", "version: 2"))
    r = await post({"workflow_tag": "dflt", "inputs": {"x": 1}})
    assert r.status_code == 200 and r.json()["run_id"] == run_id
    assert_problem(await post({"workflow_tag": "dflt@2", "inputs": {"x": 1}}), 422)
    assert [i["run_id"] for i in (await api.get("/v1/runs")).json()["items"]] == [run_id]


async def test_racing_requests_with_one_key_and_other_inputs(runtime: Embedded) -> None:
    # Started together, every request passes the key check before any commit: one creates
    # the run; the others are told so after the commit, and those with other inputs refused.
    record, _ = await runtime.register(parse_workflow(DEFAULTS), DEFAULTS)
    plan = plan_of(record.ir)
    inputs = [{"x": 1}, {"x": 2}, {"x": 1, "y": 5}, {"x": 2, "y": 6}] * 2
    got = await asyncio.gather(
        *(runtime.start_or_reuse(plan, i, "race-1") for i in inputs), return_exceptions=True
    )
    created = [i for i, g in enumerate(got) if isinstance(g, tuple) and g[1]]
    assert len(created) == 1, got
    winner = {"y": 5, **inputs[created[0]]}
    run_id = got[created[0]][0]  # type: ignore[index]
    for i, g in zip(inputs, got, strict=True):
        if {"y": 5, **i} == winner:
            assert g == (run_id, False) or g == (run_id, True), g
        else:
            assert isinstance(g, InputError) and g.path == "Idempotency-Key", g
    assert len((await runtime.store.list_runs(RunFilter(), 10))[0]) == 1


# --- signals are those a `wait` declares -----------------------------------------------------

WAITS = """
name: waits
version: 1
nodes:
  a: {task: headrace.testing.tasks.noop}
  approve: {needs: [a], wait: {signal: approval}}
  go: {needs: [a], wait: {signal: go}}
"""


async def test_a_signal_no_wait_declares_is_refused(
    runtime: Embedded, api: httpx.AsyncClient
) -> None:
    await register(api, WAITS)
    run_id = await start(api, "waits", {})
    body = assert_problem(await api.post(f"/v1/runs/{run_id}/signals/aproval"), 422)
    assert body["path"] == "name"
    assert "'aproval'" in body["detail"] and "waits for: approval, go" in body["detail"]
    events = await runtime.store.read_events(run_id, 0, 1000)
    assert "SignalReceived" not in [e.type for e in events]

    for name in ("approval", "go"):
        r = await api.post(f"/v1/runs/{run_id}/signals/{name}", json={"payload": 1})
        assert r.status_code == 202, r.text
    assert (await wait_done(api, run_id))["status"] == "completed"
    events = await runtime.store.read_events(run_id, 0, 1000)
    received = [json.loads(e.data)["name"] for e in events if e.type == "SignalReceived"]
    assert sorted(received) == ["approval", "go"]


SLOW = """
name: slow
version: 1
nodes:
  a: {task: headrace.testing.tasks.sleep, with: {seconds: 30}}
"""


async def test_a_workflow_without_waits_takes_no_signal(api: httpx.AsyncClient) -> None:
    await register(api, SLOW)
    run_id = await start(api, "slow", {})
    body = assert_problem(await api.post(f"/v1/runs/{run_id}/signals/go"), 422)
    assert body["detail"].endswith("slow@1 waits for 'go'; it waits for no signal"), body
    assert (await api.post(f"/v1/runs/{run_id}/cancel")).json()["status"] == "cancelled"
    # Once the run has ended, any signal is refused as such (409), declared or not.
    assert_problem(await api.post(f"/v1/runs/{run_id}/signals/go"), 409)


# --- bodies that are not a JSON object ---------------------------------------------------------


async def test_a_body_that_is_not_json_says_what_and_where(api: httpx.AsyncClient) -> None:
    await register(api, CHAIN)
    json_type = {"content-type": "application/json"}
    broken = b'{\n  "workflow_tag": "chain",\n  "inputs": {"x": 1,}\n}'
    body = assert_problem(await api.post("/v1/runs", content=broken, headers=json_type), 422)
    assert "path" not in body, body
    assert body["detail"].startswith("the body is not valid JSON: "), body
    assert "line 3, column 21" in body["detail"], body

    body = assert_problem(await api.post("/v1/runs", content=b'{"workflow_tag": "chain"}'), 415)
    assert "Content-Type: application/json" in body["detail"] and "path" not in body
    plain = {"content-type": "text/plain"}
    body = assert_problem(await api.post("/v1/runs", content=b"{}", headers=plain), 415)
    assert "'text/plain'" in body["detail"]

    body = assert_problem(await api.post("/v1/runs", content=b"", headers=json_type), 422)
    assert body["detail"] == "the body is empty: send a JSON object"
    body = assert_problem(await api.post("/v1/runs", content=b"[1, 2]", headers=json_type), 422)
    assert body["detail"] == "the body must be a JSON object"
    body = assert_problem(await api.post("/v1/runs", content=b"\xff\xfe{", headers=json_type), 422)
    assert body["detail"].startswith("the body is not valid JSON: it is not UTF-8 text")
    # A field still has its path.
    body = assert_problem(await api.post("/v1/runs", json={"workflow_tag": ""}), 422)
    assert body["path"] == "workflow_tag"
    assert (await api.get("/v1/runs")).json()["items"] == []


# --- one body limit, named --------------------------------------------------------------------


async def test_the_413_names_the_setting(api: httpx.AsyncClient) -> None:
    big = json.dumps({"workflow_tag": "chain", "inputs": {"x": "y" * 2_000_000}})
    body = assert_problem(await api.post("/v1/runs", content=big), 413)
    assert "HEADRACE_MAX_BODY_BYTES" in body["detail"] and "1048576" in body["detail"]

    async def chunked() -> Any:
        for _ in range(20):
            yield b" " * 65_536

    body = assert_problem(await api.post("/v1/workflows", content=chunked()), 413)
    assert "HEADRACE_MAX_BODY_BYTES" in body["detail"]


@pytest.mark.parametrize("method", ["OPTIONS", "DELETE"])
async def test_a_method_not_taken_lists_every_method_of_the_path(
    api: httpx.AsyncClient, method: str
) -> None:
    r = await api.request(method, "/v1/workflows")
    assert_problem(r, 405)
    assert r.headers["allow"] == "GET, POST"
    r = await api.request(method, "/v1/flags/ENABLE_KAFKA")
    assert r.headers["allow"] == "GET, PUT"
