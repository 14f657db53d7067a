"""The REST API end to end over real HTTP, on the embedded runtime."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import msgspec
import pytest

from headrace.services.runtime import Embedded
from headrace.spec import parse_workflow, plan_of
from headrace.store.listing import RunFilter
from headrace.store.sqlite import SqliteStore

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")

CHAIN = """
name: chain
version: 1
inputs:
  x: {type: number}
nodes:
  a: {task: headrace.testing.tasks.add, with: {a: "${{ inputs.x }}", b: 1}}
  b: {task: headrace.testing.tasks.add, with: {a: "${{ nodes.a.output.sum }}", b: 1}}
outputs:
  result: "${{ nodes.b.output.sum }}"
"""


async def wait_done(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(600):
        run: dict[str, Any] = (await api.get(f"/v1/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


async def test_register_start_and_read_a_run(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/workflows", content=CHAIN)
    assert r.status_code == 201, r.text
    assert r.json()["tag"] == "chain@1"
    assert (await api.post("/v1/workflows", content=CHAIN)).status_code == 200
    r = await api.post("/v1/runs", json={"workflow_tag": "chain", "inputs": {"x": 40}})
    assert r.status_code == 201, r.text
    run = await wait_done(api, r.json()["run_id"])
    assert run["status"] == "completed"
    assert run["outputs"] == {"result": 42}
    assert run["nodes"]["a"] == {"status": "completed", "attempts": 1, "output": {"sum": 41}}
    assert run["workflow_tag"] == "chain@1" and run["inputs"] == {"x": 40}
    assert run["started_at"].endswith("Z") and run["ended_at"] and run["cost_cents"] == 0
    listed = (await api.get("/v1/runs", params={"status": "completed"})).json()
    assert [i["run_id"] for i in listed["items"]] == [run["run_id"]]


async def test_same_idempotency_key_gives_the_same_run(api: httpx.AsyncClient) -> None:
    await api.post("/v1/workflows", content=CHAIN)
    body = {"workflow_tag": "chain@1", "inputs": {"x": 1}}
    first = await api.post("/v1/runs", json=body, headers={"Idempotency-Key": "k-1"})
    again = await api.post("/v1/runs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["run_id"] == again.json()["run_id"]
    assert len((await api.get("/v1/runs")).json()["items"]) == 1


async def test_concurrent_starts_with_one_key_make_one_run(runtime: Embedded) -> None:
    # Started together, they pass the key check before any commit and go in one batch: one
    # creates the run, the others are told it was not theirs (the API answers them 200).
    record, _ = await runtime.register(parse_workflow(CHAIN), CHAIN)
    plan = plan_of(record.ir)
    started = await asyncio.gather(
        *(runtime.start_or_reuse(plan, {"x": 1}, "k-2") for _ in range(8))
    )
    assert sorted(created for _, created in started) == [False] * 7 + [True]
    assert len({run_id for run_id, _ in started}) == 1
    assert len((await runtime.store.list_runs(RunFilter(), 10))[0]) == 1


async def test_runs_list_pages_with_a_cursor(api: httpx.AsyncClient) -> None:
    await api.post("/v1/workflows", content=CHAIN)
    ids = set()
    for i in range(5):
        r = await api.post("/v1/runs", json={"workflow_tag": "chain", "inputs": {"x": i}})
        ids.add(r.json()["run_id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/runs", params=params)).json()
        seen += [i["run_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


async def test_server_sent_events_replay_then_end(api: httpx.AsyncClient) -> None:
    await api.post("/v1/workflows", content=CHAIN)
    run_id = (
        await api.post("/v1/runs", json={"workflow_tag": "chain", "inputs": {"x": 1}})
    ).json()["run_id"]
    await wait_done(api, run_id)
    events = await read_sse(api, f"/v1/runs/{run_id}/events")
    assert events[0] == (1, "RunStarted") and events[-1][1] == "RunCompleted"
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    later = await read_sse(api, f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "3"})
    assert later == events[3:]
    after = await read_sse(api, f"/v1/runs/{run_id}/events?after=5")
    assert after == events[5:]


async def read_sse(api: httpx.AsyncClient, path: str, **kw: Any) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    async with api.stream("GET", path, **kw) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        seq = 0
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("event: "):
                out.append((seq, line[7:]))
    return out


async def test_events_stream_live_until_the_end(api: httpx.AsyncClient) -> None:
    spec = CHAIN.replace("name: chain", "name: waits").replace(
        "outputs:", "  w: {needs: [b], wait: {signal: go}}\noutputs:"
    )
    assert (await api.post("/v1/workflows", content=spec)).status_code == 201
    run_id = (
        await api.post("/v1/runs", json={"workflow_tag": "waits", "inputs": {"x": 1}})
    ).json()["run_id"]
    reader = asyncio.create_task(read_sse(api, f"/v1/runs/{run_id}/events"))
    await asyncio.sleep(0.3)
    assert not reader.done()
    r = await api.post(f"/v1/runs/{run_id}/signals/go", json={"payload": {"ok": True}})
    assert r.status_code == 202
    events = await asyncio.wait_for(reader, 30)
    assert ("SignalReceived" in [t for _, t in events]) and events[-1][1] == "RunCompleted"


async def test_websocket_stream(runtime: Embedded, api: httpx.AsyncClient) -> None:
    import json

    from websockets.asyncio.client import connect

    await api.post("/v1/workflows", content=CHAIN)
    run_id = (
        await api.post("/v1/runs", json={"workflow_tag": "chain", "inputs": {"x": 1}})
    ).json()["run_id"]
    url = str(api.base_url).replace("http://", "ws://") + f"/v1/runs/{run_id}/stream"
    got = []
    async with connect(url) as ws:
        async for message in ws:
            got.append(json.loads(message))
    assert got[0]["type"] == "RunStarted" and got[-1]["type"] == "RunCompleted"
    assert got[-1]["data"]["outputs"] == {"result": 3}


async def test_websocket_stream_replays_after_a_seq(api: httpx.AsyncClient) -> None:
    import json

    from websockets.asyncio.client import connect

    await api.post("/v1/workflows", content=CHAIN)
    run_id = (
        await api.post("/v1/runs", json={"workflow_tag": "chain", "inputs": {"x": 1}})
    ).json()["run_id"]
    url = str(api.base_url).replace("http://", "ws://") + f"/v1/runs/{run_id}/stream"
    async with connect(url) as ws:
        every = [json.loads(m) async for m in ws]
    async with connect(f"{url}?after=3") as ws:
        later = [json.loads(m) async for m in ws]
    assert [e["seq"] for e in later] == [e["seq"] for e in every if e["seq"] > 3]
    assert later and later[-1]["type"] == "RunCompleted"
    async with connect(url.replace(run_id, "00000000-0000-0000-0000-000000000000")) as ws:
        await ws.wait_closed()
    assert ws.close_code == 4404


async def test_an_event_position_past_32_bits_is_refused(api: httpx.AsyncClient) -> None:
    """Found by schemathesis: a Last-Event-ID too large for the store's integers was a 500."""
    from websockets.asyncio.client import connect

    await api.post("/v1/workflows", content=CHAIN)
    r = await api.post("/v1/runs", json={"workflow_tag": "chain", "inputs": {"x": 1}})
    events = f"/v1/runs/{r.json()['run_id']}/events"
    huge = str(2**31)
    r = await api.get(events, headers={"Last-Event-ID": huge})
    assert r.status_code == 422 and r.json()["path"] == "Last-Event-ID", r.text
    r = await api.get(events, params={"after": huge})
    assert r.status_code == 422 and r.json()["path"] == "after", r.text
    url = str(api.base_url).replace("http://", "ws://") + events.replace("/events", "/stream")
    async with connect(f"{url}?after={huge}") as ws:
        await ws.wait_closed()
    assert ws.close_code == 4422


async def test_map_children_are_paged(api: httpx.AsyncClient) -> None:
    spec = """
name: fan
inputs: {xs: {type: array}}
nodes:
  m: {map: "${{ inputs.xs }}", task: headrace.testing.tasks.echo, with: {v: "${{ item }}"}}
"""
    await api.post("/v1/workflows", content=spec)
    run_id = (
        await api.post("/v1/runs", json={"workflow_tag": "fan", "inputs": {"xs": list(range(25))}})
    ).json()["run_id"]
    run = await wait_done(api, run_id)
    assert run["nodes"]["m"]["children"] == {"total": 25, "completed": 25}
    page = (await api.get(f"/v1/runs/{run_id}/nodes/m", params={"limit": 10, "offset": 20})).json()
    assert [c["output"] for c in page["items"]] == [{"v": i} for i in range(20, 25)]
    assert page["next_offset"] is None
    first = (await api.get(f"/v1/runs/{run_id}/nodes/m", params={"limit": 10})).json()
    assert first["next_offset"] == 10 and first["items"][0]["node_id"] == "m[0]"


async def test_cancel_ends_every_open_node_and_is_idempotent(api: httpx.AsyncClient) -> None:
    spec = """
name: slow
nodes:
  a: {task: headrace.testing.tasks.sleep, with: {seconds: 30}}
  b: {needs: [a], task: headrace.testing.tasks.noop}
"""
    await api.post("/v1/workflows", content=spec)
    run_id = (await api.post("/v1/runs", json={"workflow_tag": "slow"})).json()["run_id"]
    await asyncio.sleep(0.2)
    first = await api.post(f"/v1/runs/{run_id}/cancel")
    again = await api.post(f"/v1/runs/{run_id}/cancel")
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "cancelled"
    run = (await api.get(f"/v1/runs/{run_id}")).json()
    assert {n["status"] for n in run["nodes"].values()} == {"cancelled"}
    r = await api.post(f"/v1/runs/{run_id}/signals/x")
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"


WIDE = """
name: wide
inputs: {xs: {type: array}}
nodes:
  m: {map: "${{ inputs.xs }}", task: headrace.testing.tasks.noop}
  hold: {needs: [m], wait: {signal: go}}
"""


async def until_waiting(api: httpx.AsyncClient, run_id: str, node_id: str) -> None:
    for _ in range(600):
        run = (await api.get(f"/v1/runs/{run_id}")).json()
        if run["nodes"][node_id]["status"] == "waiting":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node_id} of run {run_id} is not waiting")


async def test_cancel_signal_and_streams_of_a_wide_run_read_no_node_row(
    runtime: Embedded, api: httpx.AsyncClient
) -> None:
    await api.post("/v1/workflows", content=WIDE)
    body = {"workflow_tag": "wide", "inputs": {"xs": list(range(1000))}}
    signalled = (await api.post("/v1/runs", json=body)).json()["run_id"]
    cancelled = (await api.post("/v1/runs", json=body)).json()["run_id"]
    for run_id in (signalled, cancelled):
        await until_waiting(api, run_id, "hold")
    assert (await api.post(f"/v1/runs/{signalled}/signals/go")).status_code == 202
    first = await api.post(f"/v1/runs/{cancelled}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert (await wait_done(api, signalled))["status"] == "completed"
    run = (await api.get(f"/v1/runs/{cancelled}")).json()
    assert run["nodes"]["m"]["children"] == {"total": 1000, "completed": 1000}
    assert run["nodes"]["hold"]["status"] == "cancelled"
    # A child row that cannot be decoded: whatever loads the run's node rows fails on it
    # (the driver's load of an ended run would), so the answers below come from the run's
    # own row and its events.
    store = runtime.store
    assert isinstance(store, SqliteStore)
    for run_id in (signalled, cancelled):
        store.db.execute(
            "UPDATE node_states SET output = 'not json' WHERE run_id = ? AND node_id = 'm[7]'",
            (run_id,),
        )
        with pytest.raises(msgspec.DecodeError):
            await store.load_run(run_id)
    for run_id, status, last in (
        (signalled, "completed", "RunCompleted"),
        (cancelled, "cancelled", "RunCancelled"),
    ):
        again = await api.post(f"/v1/runs/{run_id}/cancel")
        assert again.status_code == 200 and again.json() == {"run_id": run_id, "status": status}
        assert (await api.post(f"/v1/runs/{run_id}/signals/go")).status_code == 409
        events = await read_sse(api, f"/v1/runs/{run_id}/events?after=2000")
        assert events[-1][1] == last
        assert (await read_websocket(api, run_id, after=2000))[-1]["type"] == last


async def read_websocket(api: httpx.AsyncClient, run_id: str, after: int) -> list[Any]:
    from websockets.asyncio.client import connect

    url = str(api.base_url).replace("http://", "ws://") + f"/v1/runs/{run_id}/stream"
    async with connect(f"{url}?after={after}") as ws:
        return [json.loads(m) async for m in ws]


async def test_health_metrics_and_openapi(api: httpx.AsyncClient) -> None:
    await api.post("/v1/workflows", content=CHAIN)
    run_id = (
        await api.post("/v1/runs", json={"workflow_tag": "chain", "inputs": {"x": 1}})
    ).json()["run_id"]
    await wait_done(api, run_id)
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    text = (await api.get("/metrics")).text
    for name in (
        "headrace_runs_started_total 1.0",
        'headrace_runs_finished_total{status="completed"} 1.0',
        'headrace_node_attempts_total{kind="task",outcome="completed"} 2.0',
        "headrace_node_duration_seconds_bucket",
        "headrace_node_queue_wait_seconds",
        "headrace_store_commit_seconds",
        'headrace_queue_depth{lane="node.jobs.high"}',
    ):
        assert name in text, name
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/runs/{run_id}/signals/{name}" in spec["paths"]
    assert (await api.get("/docs")).status_code == 200
