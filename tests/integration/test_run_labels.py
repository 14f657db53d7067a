"""Labels: a run is started with `key: value` strings and found again by them, over the API
and the CLI, on the embedded runtime; bad labels are refused precisely and store nothing."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.services.runtime import Embedded
from headrace.store.listing import RunFilter

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")

HOLD = (
    "name: hold\ninputs:\n  x: {type: number, default: 0}\nnodes:\n  wait: {wait: {signal: go}}\n"
)
HEADRACE = str(Path(sys.executable).parent / "headrace")


async def start(api: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await api.post("/v1/runs", json={"workflow_tag": "hold", **body})


async def ids(api: httpx.AsyncClient, *labels: str) -> list[str]:
    r = await api.get("/v1/runs", params={"label": list(labels)})
    assert r.status_code == 200, r.text
    return [i["run_id"] for i in r.json()["items"]]


async def test_runs_are_found_by_their_labels(api: httpx.AsyncClient) -> None:
    await api.post("/v1/workflows", content=HOLD)
    a = (await start(api, labels={"team": "growth", "env": "prod"})).json()["run_id"]
    b = (await start(api, labels={"team": "growth", "env": "test"})).json()["run_id"]
    c = (await start(api)).json()["run_id"]
    run = (await api.get(f"/v1/runs/{a}")).json()
    assert run["labels"] == {"team": "growth", "env": "prod"}
    assert (await api.get(f"/v1/runs/{c}")).json()["labels"] == {}
    assert await ids(api, "team=growth") == [b, a]  # newest first
    assert await ids(api, "team=growth", "env=prod") == [a]  # several: all of them
    assert await ids(api, "team=ops") == []
    assert await ids(api, "team=growth", "team=ops") == []  # all of them: none has both
    items = (await api.get("/v1/runs")).json()["items"]
    assert [i["labels"] for i in items] == [{}, {"team": "growth", "env": "test"}, run["labels"]]


@pytest.mark.parametrize(
    ("labels", "path", "why"),
    [
        ({"team": 7}, "labels.team", "string"),
        ({"bad key": "x"}, "labels.bad key", "a key is 1-63 letters"),
        ({"-x": "x"}, "labels.-x", "from a letter or digit"),
        ({"team": "x" * 257}, "labels.team", "at most 256 characters"),
        ({"team": "a\u0000b"}, "labels.team", "control characters"),
        ({f"k{i}": "v" for i in range(33)}, "labels", "at most 32 labels"),
        (["team"], "labels", "valid dictionary"),
    ],
)
async def test_bad_labels_are_refused_and_store_nothing(
    api: httpx.AsyncClient, runtime: Embedded, labels: Any, path: str, why: str
) -> None:
    await api.post("/v1/workflows", content=HOLD)
    r = await start(api, labels=labels)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["path"] == path and why in problem["detail"], problem
    assert (await runtime.store.list_runs(RunFilter(), 10))[0] == []


async def test_a_label_filter_that_is_not_key_value_is_refused(api: httpx.AsyncClient) -> None:
    for bad, why in (
        ("team", "expected key=value"),
        ("bad key=x", "a key is 1-63 letters"),
        ("team=" + "x" * 257, "at most 256 characters"),
    ):
        r = await api.get("/v1/runs", params={"label": ["env=prod", bad]})
        assert r.status_code == 422 and why in r.json()["detail"], r.text
    r = await api.get("/v1/runs", params={"label": [f"k{i}=v" for i in range(33)]})
    assert r.status_code == 422 and "at most 32 label filters" in r.json()["detail"]


async def test_an_idempotency_key_reused_with_other_labels_is_refused(
    api: httpx.AsyncClient,
) -> None:
    await api.post("/v1/workflows", content=HOLD)
    key = {"Idempotency-Key": "labels-1"}
    first = await api.post(
        "/v1/runs", json={"workflow_tag": "hold", "labels": {"a": "1"}}, headers=key
    )
    again = await api.post(
        "/v1/runs", json={"workflow_tag": "hold", "labels": {"a": "1"}}, headers=key
    )
    assert (first.status_code, again.status_code) == (201, 200)
    other = await api.post(
        "/v1/runs", json={"workflow_tag": "hold", "labels": {"a": "2"}}, headers=key
    )
    assert other.status_code == 422 and "other labels (differing: labels.a)" in other.text
    both = {"workflow_tag": "hold", "inputs": {"x": 1}, "labels": {"a": "2"}}
    other = await api.post("/v1/runs", json=both, headers=key)
    assert "other inputs and labels (differing: inputs.x, labels.a)" in other.text


async def test_the_cli_starts_and_lists_by_label(api: httpx.AsyncClient) -> None:
    await api.post("/v1/workflows", content=HOLD)
    url = str(api.base_url)

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [HEADRACE, "runs", *args, "--url", url]  # the API serves on this loop
        return await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )

    started = await cli("start", "hold", "--label", "team=growth", "--label", "tier=gold")
    assert started.returncode == 0, started.stderr
    listed = await cli("list", "--label", "tier=gold")
    assert listed.returncode == 0 and '"tier": "gold"' in listed.stdout, listed.stdout
    bad = await cli("start", "hold", "--label", "nokey")
    assert bad.returncode != 0 and "--label" in bad.stderr and "key=value" in bad.stderr
    twice = await cli("start", "hold", "--label", "k=1", "--label", "k=2")
    assert twice.returncode != 0 and "--label: the key 'k' is given twice" in twice.stderr


def test_headrace_run_keeps_its_labels(tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\nnodes:\n  a: {task: headrace.testing.tasks.echo, with: {x: 1}}\n")
    env = {
        **os.environ,
        "HEADRACE_DATABASE_URL": f"sqlite:///{tmp_path}/h.db",
        "HEADRACE_TASKS": "headrace.testing.tasks",
    }
    command = [HEADRACE, "run", str(spec), "--label", "team=growth", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "h.db") as db:
        assert db.execute("SELECT labels FROM runs").fetchall() == [('{"team":"growth"}',)]
    bad = subprocess.run([*command[:3], "--label", "x"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--label" in bad.stderr and "key=value" in bad.stderr
