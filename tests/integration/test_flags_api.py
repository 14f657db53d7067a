"""Feature flags over the REST API: read, set with an audit record, history, bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from headrace.flags import FLAGS
from headrace.services.runtime import Embedded

pytestmark = pytest.mark.integration


async def put(api: httpx.AsyncClient, name: str, **body: Any) -> httpx.Response:
    return await api.put(f"/v1/flags/{name}", json=body)


async def test_flags_start_at_their_initial_values(api: httpx.AsyncClient) -> None:
    items = (await api.get("/v1/flags")).json()["items"]
    assert [f["name"] for f in items] == list(FLAGS)
    by_name = {f["name"]: f for f in items}
    assert by_name["KAFKA_TRAFFIC_PERCENT"] == {
        "name": "KAFKA_TRAFFIC_PERCENT",
        "value": 0,
        "source": "initial",
        "kind": "percent",
        "default": 0,
        "help": FLAGS["KAFKA_TRAFFIC_PERCENT"].help,
    }
    assert by_name["ENABLE_REDIS_WRITE"]["value"] is True
    assert (await api.get("/v1/flags/history")).json() == {"items": []}


async def test_a_set_flag_is_audited_and_applied(api: httpx.AsyncClient, runtime: Embedded) -> None:
    first = await put(api, "KAFKA_TRAFFIC_PERCENT", value=10, why="canary", who="alice")
    assert first.status_code == 200, first.text
    assert first.json()["value"] == 10 and first.json()["source"] == "store"
    assert first.json()["change"]["old"] is None and first.json()["change"]["who"] == "alice"
    second = await put(api, "KAFKA_TRAFFIC_PERCENT", value="50", why="half")
    assert second.json()["change"] | {"at": None} == {
        "name": "KAFKA_TRAFFIC_PERCENT",
        "old": 10,
        "new": 50,
        "who": "api",
        "why": "half",
        "at": None,
    }
    assert (await put(api, "ENABLE_KAFKA", value=True, why="phase 3")).status_code == 200
    assert (await api.get("/v1/flags/KAFKA_TRAFFIC_PERCENT")).json()["value"] == 50
    assert runtime.flags.values["KAFKA_TRAFFIC_PERCENT"] == 50  # this process applied it
    metrics = (await api.get("/metrics")).text
    assert 'headrace_flag_value{flag="KAFKA_TRAFFIC_PERCENT"} 50.0' in metrics
    assert 'headrace_flag_value{flag="ENABLE_KAFKA"} 1.0' in metrics
    history = (await api.get("/v1/flags/history", params={"name": "KAFKA_TRAFFIC_PERCENT"})).json()
    assert [(c["old"], c["new"], c["why"]) for c in history["items"]] == [
        (10, 50, "half"),
        (None, 10, "canary"),
    ]
    everything = (await api.get("/v1/flags/history", params={"limit": 1})).json()["items"]
    assert [c["name"] for c in everything] == ["ENABLE_KAFKA"]


@pytest.mark.parametrize(
    ("name", "body", "status", "detail"),
    [
        ("KAFKA_TRAFFIC_PERCENT", {"value": 101, "why": "x"}, 422, "from 0 to 100"),
        ("KAFKA_TRAFFIC_PERCENT", {"value": -1, "why": "x"}, 422, "from 0 to 100"),
        ("KAFKA_TRAFFIC_PERCENT", {"value": True, "why": "x"}, 422, "from 0 to 100"),
        ("KAFKA_TRAFFIC_PERCENT", {"value": 12.5, "why": "x"}, 422, "from 0 to 100"),
        ("ENABLE_KAFKA", {"value": "maybe", "why": "x"}, 422, "true or false"),
        ("ENABLE_KAFKA", {"value": None, "why": "x"}, 422, "true or false"),
        ("ENABLE_KAFKA", {"value": True}, 422, "why"),
        ("ENABLE_KAFKA", {"value": True, "why": ""}, 422, "why"),
        ("ENABLE_KAFKA", {"value": True, "why": "x", "extra": 1}, 422, "extra"),
        ("NO_SUCH_FLAG", {"value": True, "why": "x"}, 404, "NO_SUCH_FLAG"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, name: str, body: dict[str, Any], status: int, detail: str
) -> None:
    response = await api.put(f"/v1/flags/{name}", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert (await api.get("/v1/flags/history")).json() == {"items": []}
    flags = (await api.get("/v1/flags")).json()["items"]
    assert all(f["source"] == "initial" for f in flags)


async def test_unknown_flag_and_bad_history_query(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/flags/NOPE")
    assert r.status_code == 404
    assert r.json()["detail"].startswith("flag 'NOPE' not found (the flags: ENABLE_KAFKA_WRITE, ")
    assert (await api.get("/v1/flags/history", params={"name": "NOPE"})).status_code == 404
    bad = await api.get("/v1/flags/history", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["path"] == "limit"
