"""Read models kept by the projector inside a runtime: with ENABLE_PROJECTIONS on, every
run's read rows end as the fold of its event log, on SQLite + memory and on Postgres + Redis;
runs that ended while it was off are caught up from the log when it comes on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import api_of, make_settings

from headrace.bus import MemoryBus
from headrace.config import Settings
from headrace.events import decode_event
from headrace.projections.fold import RunRow, fold
from headrace.projections.monitor import NOTE
from headrace.runtime.metrics import Metrics
from headrace.runtime.projector import Projector
from headrace.services.adapters import build_store
from headrace.services.runtime import Embedded, Runtime
from headrace.spec import parse_workflow, plan_of
from headrace.store import Store
from headrace.testing.services import postgres_database, redis_prefix

pytestmark = pytest.mark.usefixtures("never_blocks_the_loop")
HEADRACE = str(Path(sys.executable).parent / "headrace")

SPEC = {
    "name": "mix",
    "inputs": {"xs": {"type": "array"}, "fail": {"type": "boolean", "default": False}},
    "nodes": {
        "a": {"task": "headrace.testing.tasks.echo", "with": {"x": 1}},
        "m": {
            "needs": ["a"],
            "map": "${{ inputs.xs }}",
            "task": "headrace.testing.tasks.add",
            "with": {"a": "${{ item }}", "b": 1},
        },
        "f": {
            "needs": ["m"],
            "when": "${{ inputs.fail }}",
            "task": "headrace.testing.tasks.boom",
            "retry": {"max_attempts": 2, "initial_interval": "10ms"},
        },
    },
}


@contextlib.contextmanager
def backend(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings for `name`; the Kafka ones take the module's broker (`bootstrap`)."""
    if name == "sqlite+memory":
        yield make_settings(tmp_path)
        return
    with postgres_database() as url, redis_prefix() as (redis_url, prefix):
        s = make_settings(tmp_path, database_url=url, bus=redis_url, bus_prefix=prefix)
        if "kafka" in name:
            kafka = f"kafka://{request.getfixturevalue('bootstrap')}"
            if name == "postgres+kafka":
                s = s.model_copy(update={"bus": kafka, "bus_prefix": prefix.replace(":", ".")})
            else:  # the migrating bus: half the runs on Kafka, half on Redis
                s = s.model_copy(update={"kafka_url": kafka})
        yield s


MIGRATING = {"ENABLE_KAFKA_WRITE": "true", "ENABLE_KAFKA": "true", "KAFKA_TRAFFIC_PERCENT": "50"}
BACKENDS = [
    "sqlite+memory",
    pytest.param("postgres+redis", marks=pytest.mark.integration),
    pytest.param("postgres+kafka", marks=pytest.mark.integration),
    pytest.param("postgres+redis+kafka", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS[:2])
async def settings(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Settings]:
    """SQLite + memory, and Postgres + Redis (tests through every bus ask `any_bus`)."""
    async with settings_for(request, tmp_path, monkeypatch) as s:
        yield s


@pytest.fixture(params=BACKENDS)
async def any_bus(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Settings]:
    """Every bus: memory, Redis, Kafka, and the migrating bus with half the runs on Kafka."""
    async with settings_for(request, tmp_path, monkeypatch) as s:
        yield s


@contextlib.asynccontextmanager
async def settings_for(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Settings]:
    if request.param == "postgres+redis+kafka":
        for name, value in MIGRATING.items():
            monkeypatch.setenv(name, value)
    with backend(request.param, tmp_path, request) as s:
        store = build_store(s)  # migrated here: a test's loop must not wait on it
        await store.open()
        await store.close()
        yield s


@pytest.fixture
async def projecting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Embedded, httpx.AsyncClient]]:
    """A runtime with ENABLE_PROJECTIONS on, and a client of its API."""
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    async with Embedded(settings) as rt, api_of(rt) as api:
        yield rt, api


async def run_some(rt: Embedded, n: int) -> list[str]:
    plan = plan_of(parse_workflow(SPEC))
    await rt.register(plan.ir, "")
    ids = [
        await rt.start_run(
            plan, {"xs": list(range(i % 4)), "fail": i % 3 == 2}, labels={"i": str(i)}
        )
        for i in range(n)
    ]
    for run_id in ids:
        await rt.wait(run_id, timeout_s=60)
    return ids


async def folded(store: Store, run_id: str) -> RunRow:
    log = [decode_event(e.data) for e in await store.read_events(run_id, 0, 10_000)]
    run, nodes = RunRow(run_id=run_id), {}
    fold(run, nodes, log)
    assert (await store.read_rows(run_id))[1] == [nodes[n] for n in sorted(nodes)]
    return run


async def projected(store: Store, run_ids: list[str], within_s: float = 30) -> None:
    """Wait until every run's read row is its log's fold (a ceiling that only catches hangs)."""
    deadline = time.monotonic() + within_s
    while True:
        rows = [(await store.read_rows(r))[0] for r in run_ids]
        seqs = [(await store.get_run_record(r)).seq for r in run_ids]
        if all(
            row is not None and row.last_seq == seq for row, seq in zip(rows, seqs, strict=True)
        ):
            break
        assert time.monotonic() < deadline, "the read models did not catch up"
        await asyncio.sleep(0.05)
    for run_id, row in zip(run_ids, rows, strict=True):
        assert row == await folded(store, run_id)


async def test_every_run_is_projected_as_its_log_folds(
    any_bus: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    async with Embedded(any_bus) as rt:
        ids = await run_some(rt, 12)
        await projected(rt.store, ids)
        rows = [(await rt.store.read_rows(r))[0] for r in ids]
        assert {r.status for r in rows if r} == {"completed", "failed"}
        assert [r.labels for r in rows if r] == [{"i": str(i)} for i in range(12)]
        assert all(r.active_nodes == 0 for r in rows if r)


async def test_runs_of_while_it_was_off_are_caught_up_when_it_comes_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENABLE_PROJECTIONS", raising=False)
    async with Embedded(settings) as rt:
        ids = await run_some(rt, 5)
        await asyncio.sleep(0.3)
        assert [(await rt.store.read_rows(r))[0] for r in ids] == [None] * 5
        await rt.store.set_flag("ENABLE_PROJECTIONS", True, "test", "on", rt.clock.now_ms())
        await projected(rt.store, ids)
        ids += await run_some(rt, 3)  # and those after, from the stream
        await projected(rt.store, ids)


async def flag(api: httpx.AsyncClient, name: str, value: bool) -> None:
    r = await api.put(f"/v1/flags/{name}", json={"value": value, "who": "test", "why": "test"})
    assert r.status_code == 200, r.text


async def answers(api: httpx.AsyncClient, source: str) -> list[Any]:
    """Every query's answer, each checked to come from `source`."""
    queries: list[tuple[str, dict[str, Any]]] = [
        ("/v1/runs", {}),
        ("/v1/runs", {"status": ["failed", "completed"], "limit": 3}),
        ("/v1/runs", {"workflow": "mix@1", "label": "i=2"}),
        ("/v1/runs", {"q": "4"}),
        ("/v1/runs", {"sort": "ended", "created_after": "2000-01-01T00:00:00Z"}),
        ("/v1/runs", {"created_before": "2000-01-01T00:00:00"}),
        ("/v1/runs/count", {}),
        ("/v1/runs/count", {"status": "failed", "workflow": "mix"}),
        ("/v1/stats", {}),
    ]
    out = []
    for path, params in queries:
        r = await api.get(path, params=params)
        assert r.status_code == 200, r.text
        assert r.headers["x-headrace-read-model"] == source, (path, params)
        out.append(r.json())
    return out


async def test_the_read_models_answer_as_the_main_tables_do(
    projecting: tuple[Embedded, httpx.AsyncClient],
) -> None:
    rt, api = projecting
    ids = await run_some(rt, 9)
    await projected(rt.store, ids)
    primary = await answers(api, "primary")
    assert primary[-1]["runs"]["by_workflow"]["mix@1"]["failed"] == 3
    assert primary[-1]["last_hour"]["ended"] == 9 and primary[-1]["nodes_active"] == 0
    assert primary[0]["items"][0]["run_id"] == ids[-1] and len(primary[0]["items"]) == 9
    assert primary[-2] == {
        "total": 3,
        "by_status": {"pending": 0, "running": 0, "completed": 0, "failed": 3, "cancelled": 0},
    }
    await flag(api, "USE_PROJECTIONS", True)
    deadline = time.monotonic() + 10
    while (await api.get("/v1/runs")).headers["x-headrace-read-model"] != "projection":
        assert time.monotonic() < deadline, "USE_PROJECTIONS was not applied"
        await asyncio.sleep(0.05)
    assert await answers(api, "projection") == primary
    strong = await api.get("/v1/runs", params={"consistency": "strong"})
    assert strong.headers["x-headrace-read-model"] == "primary"
    one = await api.get(f"/v1/runs/{ids[0]}")  # by id: the main tables, never behind
    assert one.headers["x-headrace-read-model"] == "primary"
    assert one.headers["x-headrace-seq"] == str((await rt.store.get_run_record(ids[0])).seq)


@pytest.mark.parametrize(
    ("params", "field", "why"),
    [
        ({"statuss": "failed"}, "statuss", "unknown parameter"),
        ({"cursor": "nope"}, "cursor", "not a next_cursor"),
        ({"cursor": "e1." + "0" * 32}, "cursor", "of sort=ended, not of sort=created"),
        ({"label": "team=" + "x" * 257}, "label", "at most 256"),
        ({"label": "team"}, "label", "key=value"),
        ({"status": "done"}, "status", "pending"),
        ({"sort": "name"}, "sort", "created"),
        ({"created_after": "yesterday"}, "created_after", "RFC 3339"),
        ({"created_before": "0.5"}, "created_before", "RFC 3339"),
        (
            {"created_after": "2026-01-02T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"},
            "created_before",
            "earlier than created_after",
        ),
        ({"q": ""}, "q", "at least 1"),
        ({"consistency": "now"}, "consistency", "strong"),
    ],
)
async def test_a_bad_filter_is_a_precise_422(
    api: httpx.AsyncClient, params: dict[str, str], field: str, why: str
) -> None:
    for path in ("/v1/runs", "/v1/runs/count"):
        if path.endswith("count") and field in ("cursor", "sort"):
            continue
        r = await api.get(path, params=params)
        assert r.status_code == 422, (path, r.text)
        assert field in r.text and why in r.text, r.text


@pytest.fixture
async def migrated(tmp_path: Path) -> Path:
    """A directory whose SQLite store is migrated (in setup: the test's loop must not wait)."""
    store = build_store(make_settings(tmp_path))
    await store.open()
    await store.close()
    return tmp_path


async def use_projections_until_off(api: httpx.AsyncClient, within_s: float) -> float:
    """Read runs until the answers come from the main tables; how long it took."""
    began = time.monotonic()
    while True:
        r = await api.get("/v1/runs")
        assert r.status_code == 200, r.text  # reads keep working throughout
        if r.headers["x-headrace-read-model"] == "primary":
            return time.monotonic() - began
        assert time.monotonic() - began < within_s, "the lag trigger did not fire"
        await asyncio.sleep(0.05)


async def test_a_stopped_projector_turns_reads_back_to_the_main_tables(
    migrated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    monkeypatch.setenv("USE_PROJECTIONS", "true")
    s = make_settings(migrated, projection_lag_limit_s=0.5, monitor_window_s=1.0)
    roles = ("api", "coordinator", "worker", "relay")  # no projector: the lag only grows
    async with (
        Runtime(s, roles) as rt,
        api_of(rt) as api,
    ):
        await run_some(rt, 2)
        assert (await api.get("/v1/runs")).headers["x-headrace-read-model"] == "projection"
        await use_projections_until_off(api, within_s=20)
        change = (await rt.store.flag_history("USE_PROJECTIONS", 10))[0]
        assert (change.who, change.new) == ("monitor", False)
        assert "projection lag" in change.why and "over 0.5 s for 1.0 s" in change.why
        note = await rt.store.note(NOTE)
        assert note["why"] == change.why
        await asyncio.sleep(2.5)  # and it never turns it back on by itself
        assert not (await rt.store.stored_flags())["USE_PROJECTIONS"]


async def test_a_projector_keeping_up_keeps_the_reads_on_the_read_models(
    migrated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    monkeypatch.setenv("USE_PROJECTIONS", "true")
    s = make_settings(migrated, projection_lag_limit_s=2.0, monitor_window_s=1.0)
    async with Embedded(s) as rt:
        ids = await run_some(rt, 6)
        await projected(rt.store, ids)
        await asyncio.sleep(4)
        assert await rt.store.flag_history("USE_PROJECTIONS", 10) == []


async def test_projections_status_says_where_the_read_models_stand(
    migrated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    async with (
        Embedded(make_settings(migrated)) as rt,
        api_of(rt) as api,
    ):
        ids = await run_some(rt, 3)
        await projected(rt.store, ids)
        await asyncio.sleep(1.5)  # a figures report
        status = (await api.get("/v1/projections")).json()
        assert status["flags"] == {"ENABLE_PROJECTIONS": True, "USE_PROJECTIONS": False}
        assert status["runs"] == {"main": 3, "projected": 3}
        [projector] = status["projectors"]
        assert projector["live"] and projector["applied"] >= 3 and status["lag_s"] is not None
        assert status["last_rollback"] is None
        out = await asyncio.to_thread(
            subprocess.run,
            [HEADRACE, "projections", "status", "--url", str(api.base_url).rstrip("/")],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0 and '"projected": 3' in out.stdout, out.stderr


def verify_cli(db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADRACE_DATABASE_URL": f"sqlite:///{db}"}
    cmd = [HEADRACE, "projections", "verify"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


async def test_verify_finds_every_read_row_the_log_disagrees_with(
    migrated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    async with Embedded(make_settings(migrated)) as rt:
        ids = await run_some(rt, 4)
        await projected(rt.store, ids)
    db = migrated / "headrace.db"
    ok = await asyncio.to_thread(verify_cli, db)
    assert ok.returncode == 0, ok.stderr
    assert "verified 4 runs: 0 differ from the event log, 0 not yet" in ok.stdout
    with sqlite3.connect(migrated / "headrace.read.db") as conn:  # a projector's bug's doing
        conn.execute("UPDATE runs_read SET status = 'running' WHERE run_id = ?", (ids[1],))
        conn.execute("DELETE FROM states_read WHERE run_id = ? AND node_id = 'a'", (ids[2],))
    bad = await asyncio.to_thread(verify_cli, db)
    assert bad.returncode == 1, bad.stderr
    assert f"{ids[1]}: status: 'running', the log says " in bad.stdout
    assert f"{ids[2]}: node a: None, the log says StateRow(" in bad.stdout
    assert "run_counts mix@1 running: (runs, open nodes) None, the rows say (1, 0)" in bad.stdout
    assert "verified 4 runs: 4 differ" in bad.stdout  # two runs, two counters
    missing = await asyncio.to_thread(verify_cli, migrated / "nope.db")
    assert missing.returncode == 2, missing.stderr
    assert "nope.db holds no headrace database (headrace db upgrade" in missing.stderr
    assert not (migrated / "nope.db").exists()


async def flow(rt: Embedded, stop: asyncio.Event) -> list[str]:
    """Start a run every 50 ms until `stop`; the runs' ids once they all ended."""
    plan = plan_of(parse_workflow(SPEC))
    ids = []
    while not stop.is_set():
        ids.append(await rt.start_run(plan, {"xs": [1, 2]}))
        await asyncio.sleep(0.05)
    for run_id in ids:
        await rt.wait(run_id, timeout_s=60)
    return ids


def rebuild_cli(s: Settings, *args: str, crash_at: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADRACE_DATABASE_URL": s.database_url, "HEADRACE_CRASH_AT": crash_at}
    env["HEADRACE_READ_DATABASE_URL"] = s.read_database_url or ""
    cmd = [HEADRACE, "projections", "rebuild", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


async def test_a_rebuild_killed_and_resumed_while_runs_flow_swaps_in_the_log_s_fold(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    async with Embedded(settings) as rt:
        ids = await run_some(rt, 8)
        stop = asyncio.Event()
        flowing = asyncio.create_task(flow(rt, stop))
        killed = await asyncio.to_thread(
            rebuild_cli, settings, "--page", "3", crash_at="rebuild_after_page:2"
        )
        assert killed.returncode == -9, killed.stderr  # SIGKILLed after its second page
        done = await asyncio.to_thread(rebuild_cli, settings, "--page", "3", "--verify")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "resumed after run " in done.stdout and "(6 runs were rebuilt before)" in done.stdout
        assert "swapped in" in done.stdout and "0 differ from the event log" in done.stdout
        stop.set()
        more = await flowing
        assert len(more) > 10  # runs started (and ended) all along
        ids += more
        await projected(rt.store, ids)  # the projector went on, on the fresh tables
        kept, recounted = await rt.store.counters()
        assert kept == recounted and sum(n for n, _ in kept.values()) == len(ids)


def runs_in(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        found = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    assert found is not None
    return int(found[0])


@pytest.mark.integration
async def test_read_models_in_a_database_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROJECTIONS", "true")
    monkeypatch.setenv("USE_PROJECTIONS", "true")
    with (
        postgres_database() as url,
        postgres_database() as read_url,
        redis_prefix() as (redis_url, prefix),
    ):
        s = make_settings(
            tmp_path, database_url=url, read_database_url=read_url, bus=redis_url, bus_prefix=prefix
        )
        store = build_store(s)  # both migrated here: the test's loop must not wait on it
        await store.open()
        await store.close()
        async with Embedded(s) as rt, api_of(rt) as api:
            ids = await run_some(rt, 5)
            await projected(rt.store, ids)
            listed = await api.get("/v1/runs", params={"label": "i=3"})
            assert listed.headers["x-headrace-read-model"] == "projection"
            assert [r["run_id"] for r in listed.json()["items"]] == [ids[3]]
            counted = (await api.get("/v1/runs/count")).json()
            assert counted["total"] == 5, counted
        assert (runs_in(url, "runs_read"), runs_in(read_url, "runs_read")) == (0, 5)
        assert (runs_in(url, "runs"), runs_in(read_url, "runs")) == (5, 0)
        done = await asyncio.to_thread(rebuild_cli, s, "--verify")
        assert done.returncode == 0, done.stderr
        assert "of 5 runs" in done.stdout and "verified 5 runs: 0 differ" in done.stdout
        assert runs_in(read_url, "runs_read") == 5


@pytest.mark.parametrize(
    ("database", "read", "why"),
    [
        ("sqlite:///{tmp}/h.db", "postgresql://127.0.0.1/x", "only beside a postgresql://"),
        ("postgresql://127.0.0.1:1/x", "sqlite:///{tmp}/r.db", "expected postgresql://"),
    ],
)
def test_a_read_database_is_another_postgres(
    tmp_path: Path, database: str, read: str, why: str
) -> None:
    env = {
        **os.environ,
        "HEADRACE_DATABASE_URL": database.format(tmp=tmp_path),
        "HEADRACE_READ_DATABASE_URL": read.format(tmp=tmp_path),
    }
    out = subprocess.run(
        [HEADRACE, "db", "upgrade"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 2, out
    assert "HEADRACE_READ_DATABASE_URL" in out.stderr and why in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made


async def test_runs_whose_events_were_never_published_are_caught_up_every_so_often(
    migrated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENABLE_PROJECTIONS", raising=False)  # its processes publish nothing
    roles = ("api", "coordinator", "worker", "relay")
    async with Runtime(make_settings(migrated), roles) as rt:
        flags = {"ENABLE_PROJECTIONS": True}
        projector = Projector(rt.store, MemoryBus(), flags, Metrics(), name="p")
        projector.catch_up_every_s = 0.3
        running = asyncio.create_task(projector.run())
        try:
            while projector.caught_up_at is None:  # its first catch-up: nothing yet
                await asyncio.sleep(0.01)
            ids = await run_some(rt, 3)
            await projected(rt.store, ids)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


@pytest.mark.integration
def test_a_read_database_that_does_not_answer_leaves_the_store_untouched(tmp_path: Path) -> None:
    with postgres_database() as url:
        env = {
            **os.environ,
            "HEADRACE_DATABASE_URL": url,
            "HEADRACE_READ_DATABASE_URL": url + "_nope",
        }
        for command in (["db", "upgrade"], ["projections", "verify"]):
            out = subprocess.run(
                [HEADRACE, *command], capture_output=True, text=True, env=env, timeout=60
            )
            assert out.returncode == 3, out
            assert "postgres (the read models' database): " in out.stderr, out.stderr
        env["HEADRACE_READ_DATABASE_URL"] = ""
        out = subprocess.run(
            [HEADRACE, "projections", "rebuild"], capture_output=True, text=True, env=env
        )
        assert out.returncode == 2, out  # a check or a rebuild makes no database
        assert "the store holds no headrace database" in out.stderr, out.stderr
        with psycopg.connect(url) as conn:
            tables = conn.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'")
            assert tables.fetchone() == (0,)


ITEM = {"run_id", "workflow_tag", "status", "created_at", "ended_at", "labels"}
SHAPES = {
    "/v1/runs": {"items", "next_cursor"},
    "/v1/runs/count": {"total", "by_status"},
    "/v1/stats": {"runs", "nodes_active", "last_hour"},
}


async def test_use_projections_flipped_under_load_changes_no_answer_s_shape(
    projecting: tuple[Embedded, httpx.AsyncClient],
) -> None:
    rt, api = projecting
    await run_some(rt, 2)
    stop = asyncio.Event()
    flowing = asyncio.create_task(flow(rt, stop))
    sources, flips = set(), 0
    began = time.monotonic()
    while len(sources) < 2 or flips < 4:
        assert time.monotonic() - began < 60, "the flag was not applied"
        await flag(api, "USE_PROJECTIONS", flips % 2 == 0)
        flips += 1
        for _ in range(5):
            for path, keys in SHAPES.items():
                r = await api.get(path)
                assert r.status_code == 200, r.text
                assert set(r.json()) == keys, r.text
                for item in r.json().get("items", []):
                    assert set(item) == ITEM, item
                sources.add(r.headers["x-headrace-read-model"])
            await asyncio.sleep(0.1)
    stop.set()
    ids = await flowing
    assert sources == {"projection", "primary"} and len(ids) > 5
