"""The Store contract (headrace/store/base.py), run against every adapter: SQLite and Postgres.

Each test gets an empty store: SQLite on a temporary file, Postgres on a fresh database of
the test server (dropped afterwards). Runs are driven by the real engine, so what a store
keeps is compared with what the engine holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import Checker, workflows

from headrace.bus.topics import jobs_topic
from headrace.engine import (
    Cancel,
    Complete,
    MarkStarted,
    RunState,
    Start,
    child_of,
    decide,
    decided_alone,
    maps_to_load,
    new_run,
)
from headrace.engine.decide import Decision
from headrace.errors import Conflict, InfraError, InputError, NotFound
from headrace.events import (
    NODE_OPEN,
    Job,
    Message,
    SignalReceived,
    Timer,
    decode_event,
    decode_job,
    encode,
)
from headrace.projections.apply import Tables, catch_up
from headrace.projections.fold import RunRow, fold
from headrace.spec import Plan, canonical_json, parse_workflow, plan_of
from headrace.store import Children, Holder, RunHead, Store, Transition
from headrace.store.listing import RunFilter, Sort, Source
from headrace.store.migrate import HEAD, head
from headrace.store.postgres import PostgresStore
from headrace.store.sqlite import SqliteStore
from headrace.testing.services import postgres_database

SHOP = {
    "name": "shop",
    "version": 1,
    "inputs": {"xs": {"type": "array"}},
    "nodes": {
        "a": {"task": "m.f"},
        "m": {
            "needs": ["a"],
            "map": "${{ inputs.xs }}",
            "task": "m.f",
            "with": {"x": "${{ item }}"},
        },
        "z": {"needs": ["m"], "task": "m.f"},
    },
}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


POSTGRES = pytest.param("postgres", marks=pytest.mark.integration)


@pytest.fixture(params=["sqlite", POSTGRES])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(
    params=["sqlite", POSTGRES, pytest.param("postgres+read", marks=pytest.mark.integration)]
)
async def read_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store, and one whose read models are in a database of their own."""
    async with open_store(request.param, tmp_path) as opened:
        yield opened


@contextlib.asynccontextmanager
async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    if kind == "sqlite":
        lite = SqliteStore(tmp_path / "h.db")
        await lite.open()
        yield lite
        await lite.close()
        return
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database())
        read = stack.enter_context(postgres_database()) if kind == "postgres+read" else None
        pg = PostgresStore(url, read_url=read, max_size=4)
        await pg.open()
        yield pg
        await pg.close()


async def register(store: Store, spec: dict[str, Any] = SHOP) -> Plan:
    ir = parse_workflow(spec)
    await store.put_workflow(ir, canonical_json(ir).decode(), 0)
    return plan_of(ir)


def start(plan: Plan, *, at_ms: int = 1_000, **inputs: Any) -> tuple[RunState, Decision]:
    state = new_run(str(uuid.uuid4()), plan, created_at_ms=at_ms)
    return state, decide(state, Start(at_ms=at_ms, inputs={"xs": [], **inputs}))


def step(state: RunState, d: Decision, *, new: bool = False, key: str | None = None) -> Transition:
    messages = [Message(jobs_topic(j.priority), state.run_id, encode(j)) for j in d.jobs]
    return Transition(state, d.events, messages, d.timers, new=new, idempotency_key=key)


def job_message(state: RunState, node_id: str, attempt: int) -> Message:
    job = Job(
        run_id=state.run_id,
        node_id=node_id,
        attempt=attempt,
        kind="task",
        priority="normal",
        timeout_ms=1000,
        scheduled_at_ms=1,
        idempotency_key="k",
    )
    return Message(jobs_topic("normal"), state.run_id, encode(job))


async def started(store: Store, plan: Plan, **kw: Any) -> RunState:
    state, d = start(plan, **kw)
    assert not (await store.commit([step(state, d, new=True)])).conflicts
    return state


async def complete(store: Store, state: RunState, node_id: str, at_ms: int = 2_000) -> None:
    d = decide(state, Complete(node_id, 1, at_ms, at_ms, output={"n": node_id}))
    assert not (await store.commit([step(state, d)])).conflicts


async def same(store: Store, state: RunState) -> None:
    assert (await store.load_run(state.run_id)).comparable() == state.comparable()


def now_ms() -> int:
    return int(time.time() * 1000)


async def pending(store: Store, dead: list[str] | None = None, limit: int = 100) -> list[Any]:
    """What a relay would send now, with `dead` holders dead (default: none)."""
    return await store.pending_outbox(dead or [], limit)


# --- workflows ---


async def test_workflows_are_put_once_and_addressed_by_tag(store: Store) -> None:
    ir = parse_workflow(SHOP)
    first, new = await store.put_workflow(ir, "src", 5)
    assert new and first.tag == "shop@1" and first.created_at_ms == 5
    again, new = await store.put_workflow(ir, "src", 9)
    assert not new and again.created_at_ms == 5 and again.ir_hash == first.ir_hash
    changed = parse_workflow({**SHOP, "nodes": {"only": {"task": "m.g"}}})
    with pytest.raises(Conflict):
        await store.put_workflow(changed, "src", 9)
    for version in (3, 2):
        await store.put_workflow(parse_workflow({**SHOP, "version": version}), "src", version)
    assert (await store.get_workflow("shop")).version == 3
    assert (await store.get_workflow("shop@1")).ir == ir
    assert [w.tag for w in await store.list_workflows()] == ["shop@1", "shop@2", "shop@3"]
    for tag in ("nope", "shop@4", "shop@x", "nope@1"):
        with pytest.raises(NotFound):
            await store.get_workflow(tag)


# --- commit: the hot path ---


async def test_a_new_run_reloads_as_the_engine_holds_it(store: Store) -> None:
    plan = await register(store)
    state, d = start(plan, xs=[1, 2])
    result = await store.commit([step(state, d, new=True, key="k1")])
    assert result.conflicts == set() and len(result.outbox_ids) == 1
    assert state.version == 1
    await same(store, state)
    assert await store.run_for_key("k1") == state.run_id
    assert await store.run_for_key("k2") is None
    await complete(store, state, "a")
    assert state.version == 2
    await same(store, state)


async def test_runs_load_together_and_unknown_ids_are_left_out(store: Store) -> None:
    plan = await register(store)
    a, b = await started(store, plan, xs=[1, 2]), await started(store, plan, xs=[3])
    await complete(store, a, "a")
    loaded = await store.load_runs([b.run_id, "no-such-run", a.run_id])
    by_id = {s.run_id: s.comparable() for s in loaded}
    assert by_id == {a.run_id: a.comparable(), b.run_id: b.comparable()}
    assert await store.load_runs([]) == []


async def test_two_writers_from_one_version_exactly_one_applies(store: Store) -> None:
    plan = await register(store)
    state = await started(store, plan, xs=[1, 2, 3])
    mine, theirs = await store.load_run(state.run_id), await store.load_run(state.run_id)
    ours = step(mine, decide(mine, Complete("a", 1, 2, 3, output=1)))
    other = step(theirs, decide(theirs, Cancel(at_ms=3)))
    results = await asyncio.gather(store.commit([ours]), store.commit([other]))
    assert sorted(len(r.conflicts) for r in results) == [0, 1]
    winner, loser = (mine, theirs) if not results[0].conflicts else (theirs, mine)
    assert winner.version == 2 and loser.version == 1
    await same(store, winner)
    events = await store.read_events(state.run_id, 0, 100)
    assert [e.seq for e in events] == list(range(1, winner.seq + 1))
    outbox = await pending(store)  # a's job row went with the attempt either ended
    assert len(outbox) == len(results[0].outbox_ids) + len(results[1].outbox_ids)


async def test_a_stale_update_among_others_is_refused_alone(store: Store) -> None:
    plan = await register(store)
    a, b = await started(store, plan), await started(store, plan)
    stale = await store.load_run(b.run_id)
    await complete(store, b, "a")  # moves b's version under `stale`
    ta = step(a, decide(a, Complete("a", 1, 5, 6, output=1)))
    tb = step(stale, decide(stale, Cancel(at_ms=6)))
    result = await store.commit([ta, tb])
    assert result.conflicts == {b.run_id}
    await same(store, a)
    await same(store, b)
    assert (await store.run_version(a.run_id), await store.run_version(b.run_id)) == (2, 2)
    assert len(result.outbox_ids) == len(ta.messages)


async def test_a_taken_idempotency_key_refuses_only_that_run(store: Store) -> None:
    plan = await register(store)
    first, d = start(plan)
    assert not (await store.commit([step(first, d, new=True, key="k")])).conflicts
    dup, d_dup = start(plan)
    twin_a, d_a = start(plan)
    twin_b, d_b = start(plan)
    fresh, d_fresh = start(plan)
    d_first = decide(first, Complete("a", 1, 5, 6))
    result = await store.commit(
        [
            step(dup, d_dup, new=True, key="k"),
            step(twin_a, d_a, new=True, key="twin"),
            step(twin_b, d_b, new=True, key="twin"),
            step(fresh, d_fresh, new=True, key="fresh"),
            step(first, d_first),
        ]
    )
    assert result.conflicts == {dup.run_id, twin_b.run_id}
    assert len(result.outbox_ids) == 3  # twin_a, fresh, first: one job each
    for state in (first, twin_a, fresh):
        await same(store, state)
    for state in (dup, twin_b):
        assert state.version == 0
        with pytest.raises(NotFound):
            await store.load_run(state.run_id)
        assert await store.read_events(state.run_id, 0, 10) == []
    assert await store.run_for_key("twin") == twin_a.run_id


async def test_events_are_unique_per_run_and_read_in_pages(store: Store) -> None:
    plan = await register(store)
    state = await started(store, plan, xs=[1, 2, 3])
    await complete(store, state, "a")
    pages, after = [], 0
    while page := await store.read_events(state.run_id, after, 2):
        pages.append([e.seq for e in page])
        after = page[-1].seq
    assert [s for p in pages for s in p] == list(range(1, state.seq + 1))
    assert all(len(p) == 2 for p in pages[:-1])
    first = (await store.read_events(state.run_id, 0, 1))[0]
    assert first.type == "RunStarted" and first.at_ms == 1_000 and b'"seq":1' in first.data
    # A transition that passes the version check but repeats a stored seq writes nothing.
    # (SqliteStore lets sqlite3.IntegrityError through; PostgresStore raises InfraError.)
    outbox = await pending(store)
    again = SignalReceived(seq=1, at_ms=9, name="x")
    with pytest.raises((InfraError, sqlite3.IntegrityError)):
        await store.commit([Transition(state, [again], [Message("t", "k", b"x")])])
    assert state.version == 2
    await same(store, state)
    assert await pending(store) == outbox
    assert len(await store.read_events(state.run_id, 0, 100)) == state.seq


# --- reads ---


async def test_get_run_counts_map_children_by_status(store: Store) -> None:
    plan = await register(store)
    state = await started(store, plan, xs=[10, 20, 30, 40])
    await complete(store, state, "a")
    await complete(store, state, "m[1]")
    await complete(store, state, "m[3]")
    record, nodes = await store.get_run(state.run_id)
    assert record.run_id == state.run_id and record.workflow_tag == "shop@1"
    assert record.status == "running" and record.seq == state.seq
    assert record.inputs == {"xs": [10, 20, 30, 40]} and record.created_at_ms == 1_000
    assert [n.node_id for n in nodes] == ["a", "m", "z"]
    a, m, z = nodes
    assert a.status == "completed" and a.output == {"n": "a"} and a.children is None
    assert m.width == 4 and m.children == {"completed": 2, "scheduled": 2}
    assert z.status == "pending" and z.attempt == 0
    assert await store.get_run_record(state.run_id) == record
    with pytest.raises(NotFound):
        await store.get_run("no-such-run")
    with pytest.raises(NotFound):
        await store.get_run_record("no-such-run")


async def test_a_run_head_has_its_status_workflow_and_last_event(store: Store) -> None:
    plan = await register(store)
    state = await started(store, plan, xs=list(range(1000)))
    running = await store.get_run_head(state.run_id)
    assert running == RunHead(state.run_id, "shop@1", "running", state.seq)
    record = await store.get_run_record(state.run_id)
    assert (record.workflow_tag, record.status, record.seq) == ("shop@1", "running", running.seq)
    d = decide(state, Cancel(at_ms=3_000))
    assert not (await store.commit([step(state, d)])).conflicts
    ended = await store.get_run_head(state.run_id)
    assert ended == RunHead(state.run_id, "shop@1", "cancelled", state.seq)
    assert ended.seq > running.seq
    with pytest.raises(NotFound):
        await store.get_run_head("no-such-run")


async def project_all(store: Store) -> None:
    """Bring the read models up to the main tables, as the projector's catch-up does."""
    await store.project({}, dict(await store.run_seqs("", 10_000)))


SOURCES = pytest.mark.parametrize("source", ["primary", "projection"])


@SOURCES
async def test_list_runs_filters_and_pages_newest_first(read_store: Store, source: Source) -> None:
    shop = await register(read_store)
    shop2 = await register(read_store, {**SHOP, "version": 2})
    other = await register(read_store, {**SHOP, "name": "other"})
    made: list[RunState] = []
    batch: list[Transition] = []
    for i in range(30):
        plan = (shop, shop2, other)[i % 3]
        state, d = start(plan, at_ms=1_000 + i // 4)  # ties on created_at, ordered by run id
        if i % 5 == 0:
            d.events += decide(state, Cancel(at_ms=2_000 + i % 7)).events
        made.append(state)
        batch.append(Transition(state, d.events, new=True))
    assert not (await read_store.commit(batch)).conflicts
    await project_all(read_store)

    async def everything(f: RunFilter, sort: Sort = "created") -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            page, cursor = await read_store.list_runs(f, 7, cursor, sort, source)
            assert len(page) <= 7
            ids += [r.run_id for r in page]
            if cursor is None:
                return ids

    def expected(keep: Any, key: Any = lambda s: s.created_at_ms) -> list[str]:
        chosen = sorted((s for s in made if keep(s)), key=lambda s: (key(s), s.run_id))
        return [s.run_id for s in reversed(chosen)]

    def has(*statuses: str) -> Any:
        return lambda s: s.status in statuses

    assert await everything(RunFilter()) == expected(lambda s: True)
    assert await everything(RunFilter(("cancelled",))) == expected(has("cancelled"))
    both = RunFilter(("cancelled", "running"))
    assert await everything(both) == expected(has("cancelled", "running"))
    assert await everything(RunFilter(workflow="shop")) == expected(
        lambda s: s.plan.ir.name == "shop"
    )
    assert await everything(RunFilter(workflow="shop@2")) == expected(lambda s: s.plan is shop2)
    assert await everything(RunFilter(("running",), "other@1")) == expected(
        lambda s: s.plan is other and s.status == "running"
    )
    window = RunFilter(created_after=1_002, created_before=1_005)
    assert await everything(window) == expected(lambda s: 1_002 <= s.created_at_ms < 1_005)
    ended = await everything(RunFilter(), "ended")
    assert ended == expected(has("cancelled"), key=lambda s: s.ended_at_ms)
    prefix = made[3].run_id[:6].upper()  # any case
    assert await everything(RunFilter(q=prefix)) == expected(
        lambda s: s.run_id.startswith(prefix.lower())
    )
    assert await read_store.list_runs(RunFilter(workflow="shop@x"), 10) == ([], None)
    page, cursor = await read_store.list_runs(RunFilter(), 30, None, "created", source)
    assert len(page) == 30 and cursor is None
    tags = {s.run_id: s.plan.tag for s in made}
    assert [i.workflow_tag for i in page] == [tags[i.run_id] for i in page]
    with pytest.raises(InputError, match="not a next_cursor"):
        await read_store.list_runs(RunFilter(), 10, "not a cursor", "created", source)
    _, of_ended = await read_store.list_runs(RunFilter(), 1, None, "ended", source)
    assert of_ended is not None
    with pytest.raises(InputError, match="of sort=ended, not of sort=created"):
        await read_store.list_runs(RunFilter(), 10, of_ended, "created", source)
    counts = await read_store.count_runs(RunFilter(workflow="shop"), source)
    shops = [s for s in made if s.plan.ir.name == "shop"]
    assert counts == {
        st: sum(s.status == st for s in shops)
        for st in ("pending", "running", "completed", "failed", "cancelled")
    }


@SOURCES
async def test_a_run_keeps_its_labels_and_is_listed_by_them(
    read_store: Store, source: Source
) -> None:
    plan = await register(read_store)
    given = [{"team": "growth", "env": "prod"}, {"team": "growth"}, {}, {"team": "ops"}]
    made = []
    for i, labels in enumerate(given):
        state = new_run(str(uuid.uuid4()), plan, created_at_ms=1_000 + i)
        d = decide(state, Start(at_ms=1_000 + i, inputs={"xs": []}, labels=labels))
        assert not (await read_store.commit([step(state, d, new=True)])).conflicts
        assert state.labels == labels
        await same(read_store, state)  # loaded back with them
        made.append(state.run_id)
    assert (await read_store.get_run_record(made[0])).labels == given[0]
    await project_all(read_store)

    async def found(f: RunFilter) -> list[str]:
        return [r.run_id for r in (await read_store.list_runs(f, 10, None, "created", source))[0]]

    async def listed(**labels: str) -> list[str]:
        return await found(RunFilter(labels=tuple(labels.items())))

    assert await listed(team="growth") == [made[1], made[0]]
    assert await listed(team="growth", env="prod") == [made[0]]
    assert await listed(team="nobody") == []
    both = (("team", "growth"), ("team", "ops"))  # the same key twice: every one must hold
    assert await found(RunFilter(labels=both)) == []
    assert len(await listed()) == 4
    assert await found(RunFilter(q="growth")) == [made[1], made[0]]  # any label's value
    assert await found(RunFilter(q="grow")) == []  # whole values only
    assert await found(RunFilter(q='o"ps')) == []  # quotes are values, not syntax
    assert await found(RunFilter(q="%")) == await found(RunFilter(q="_")) == []  # no wildcards
    items = (await read_store.list_runs(RunFilter(), 10, None, "created", source))[0]
    assert [i.labels for i in items] == list(reversed(given))
    assert (await read_store.count_runs(RunFilter(q="ops"), source))["running"] == 1


async def test_stats_are_the_same_from_either_source(read_store: Store) -> None:
    plan = await register(read_store)
    states = [await started(read_store, plan, xs=[1, 2, 3]) for _ in range(4)]
    await complete(read_store, states[0], "a", at_ms=1_500)
    for i, state in enumerate(states[1:3]):
        d = decide(state, Cancel(at_ms=2_000 + 1_000 * i))
        assert not (await read_store.commit([step(state, d)])).conflicts
    await project_all(read_store)
    primary, projected = await read_store.run_stats(0), await read_store.run_stats(0, "projection")
    assert primary == projected
    assert primary.by_workflow == {
        "shop@1": {"pending": 0, "running": 2, "completed": 0, "failed": 0, "cancelled": 2}
    }
    assert (primary.ended_since, primary.duration_p50_ms, primary.duration_p95_ms) == (
        2,
        1_500.0,
        1_950.0,
    )
    assert primary.nodes_active == 1 + 3 + 1  # a; m and its three children; a
    assert (await read_store.run_stats(10_000)).ended_since == 0


async def test_list_children_pages_in_index_order(store: Store) -> None:
    plan = await register(store)
    state = await started(store, plan, xs=list(range(12)))
    await complete(store, state, "a")
    await complete(store, state, "m[10]")
    seen = []
    for offset in range(0, 15, 5):
        page = await store.list_children(state.run_id, "m", offset, 5)
        seen += [(c.node_id, c.status) for c in page]
    assert [nid for nid, _ in seen] == [f"m[{i}]" for i in range(12)]
    assert dict(seen)["m[10]"] == "completed" and dict(seen)["m[0]"] == "scheduled"
    assert await store.list_children(state.run_id, "a", 0, 5) == []


async def test_active_runs_are_those_not_ended(store: Store) -> None:
    plan = await register(store)
    running = await started(store, plan)
    ended = await started(store, plan)
    assert not (await store.commit([step(ended, decide(ended, Cancel(at_ms=3)))])).conflicts
    assert await store.active_runs() == [running.run_id]


async def test_unstarted_runs_have_an_attempt_scheduled_before_and_not_started(
    store: Store,
) -> None:
    plan = await register(store)
    early = await started(store, plan, at_ms=1_000)
    late = await started(store, plan, at_ms=5_000)
    begun = await started(store, plan, at_ms=1_000)
    assert not (
        await store.commit([step(begun, decide(begun, MarkStarted("a", 1, 1_500)))])
    ).conflicts
    ended = await started(store, plan, at_ms=1_000)
    assert not (await store.commit([step(ended, decide(ended, Cancel(at_ms=3)))])).conflicts
    assert await store.unstarted_runs(2_000, 10) == [early.run_id]
    assert sorted(await store.unstarted_runs(6_000, 10)) == sorted([early.run_id, late.run_id])
    assert len(await store.unstarted_runs(6_000, 1)) == 1


async def test_unknown_run_ids(store: Store) -> None:
    plan = await register(store)
    with pytest.raises(NotFound):
        await store.load_run("no-such-run")
    with pytest.raises(NotFound):
        await store.get_run("no-such-run")
    with pytest.raises(NotFound):
        await store.run_version("no-such-run")
    assert await store.read_events("no-such-run", 0, 10) == []
    assert await store.list_children("no-such-run", "m", 0, 10) == []
    ghost, d = start(plan)
    ghost.version = 1  # an update of a run that was never created: refused, nothing written
    assert (await store.commit([step(ghost, d)])).conflicts == {ghost.run_id}
    assert await store.read_events(ghost.run_id, 0, 10) == []
    assert await pending(store) == []


# --- outbox and timers ---


async def test_flags_are_set_with_an_audit_record(store: Store) -> None:
    assert await store.stored_flags() == {}
    first = await store.set_flag("KAFKA_TRAFFIC_PERCENT", 10, "ops", "canary", 5)
    assert (first.old, first.new) == (None, 10)
    await store.set_flag("ENABLE_KAFKA", True, "ops", "phase 3", 6)
    second = await store.set_flag("KAFKA_TRAFFIC_PERCENT", 50, "monitor", "half", 7)
    assert (second.old, second.new, second.who) == (10, 50, "monitor")
    assert await store.stored_flags() == {"KAFKA_TRAFFIC_PERCENT": 50, "ENABLE_KAFKA": True}
    history = await store.flag_history("KAFKA_TRAFFIC_PERCENT", 10)
    assert [(c.old, c.new, c.why, c.at_ms) for c in history] == [
        (10, 50, "half", 7),
        (None, 10, "canary", 5),
    ]
    assert [c.name for c in await store.flag_history(None, 2)] == [
        "KAFKA_TRAFFIC_PERCENT",
        "ENABLE_KAFKA",
    ]


async def test_flags_are_swapped_only_from_the_values_expected(store: Store) -> None:
    initial = {"ENABLE_KAFKA": False, "KAFKA_TRAFFIC_PERCENT": 0}
    to_ten = [("KAFKA_TRAFFIC_PERCENT", 10), ("ENABLE_KAFKA", True)]
    assert await store.swap_flags(initial, to_ten, initial, "ops", "canary", 5) is None
    assert await store.stored_flags() == {"KAFKA_TRAFFIC_PERCENT": 10, "ENABLE_KAFKA": True}
    # a second actor that read the same values: refused, told what is there, nothing written
    to_fifty = [("KAFKA_TRAFFIC_PERCENT", 50)]
    found = await store.swap_flags(initial, to_fifty, initial, "monitor", "late", 6)
    assert found == {"ENABLE_KAFKA": True, "KAFKA_TRAFFIC_PERCENT": 10}
    assert await store.stored_flags() == {"KAFKA_TRAFFIC_PERCENT": 10, "ENABLE_KAFKA": True}
    assert [(c.name, c.old, c.new, c.who) for c in await store.flag_history(None, 5)] == [
        ("ENABLE_KAFKA", None, True, "ops"),
        ("KAFKA_TRAFFIC_PERCENT", None, 10, "ops"),
    ]
    # an unstored flag compares by its initial value (the process environment's)
    off = {"ENABLE_REDIS_WRITE": False}
    assert await store.swap_flags(off, [], off, "a", "b", 7) is None


async def test_a_run_s_pin_is_committed_with_it_and_moved_by_a_re_pin(store: Store) -> None:
    plan = await register(store)
    pinned: dict[str, str | None] = {}
    for pin in ("kafka", "redis", "kafka", None):  # None: started before the migration
        state, d = start(plan, xs=[1])
        t = step(state, d, new=True)
        t.pin = pin
        assert not (await store.commit([t])).conflicts
        pinned[state.run_id] = pin
    ids = list(pinned)
    again = new_run(ids[1], plan, created_at_ms=5)  # a start refused does not pin anew
    d = decide(again, Start(at_ms=5, inputs={"xs": []}))
    refused = Transition(again, d.events, new=True, pin="kafka")
    assert (await store.commit([refused])).conflicts == {ids[1]}
    assert await store.pins([*ids, "unknown"]) == {r: p for r, p in pinned.items() if p}
    assert await store.pin_counts(0) == {"kafka": 2, "redis": 1}
    ended, running = ids[0], ids[2]
    state = await store.load_run(ended)
    assert not (await store.commit([step(state, decide(state, Cancel(at_ms=3)))])).conflicts
    assert await store.repin("kafka", "redis", 30) == [running]  # unfinished runs only
    assert await store.pins(ids) == {ended: "kafka", ids[1]: "redis", running: "redis"}


async def test_figures_and_notes_are_kept_per_name(store: Store) -> None:
    await store.put_figures("api-1", {"published": 3}, 1_000)
    await store.put_figures("worker-1", {"published": 1}, 1_500)
    await store.put_figures("api-1", {"published": 5}, 2_000)
    assert await store.figures_since(1_200) == {
        "api-1": {"published": 5},
        "worker-1": {"published": 1},
    }
    assert await store.figures_since(1_800) == {"api-1": {"published": 5}}
    assert await store.note("baseline") is None
    await store.put_note("baseline", {"p95_ms": 4.5}, 1)
    await store.put_note("baseline", {"p95_ms": 5.0}, 2)
    assert await store.note("baseline") == {"p95_ms": 5.0}


async def test_outbox_rows_wait_until_marked_sent(store: Store) -> None:
    plan = await register(store)
    state, d = start(plan, xs=[1])
    extra = [Message("t.x", state.run_id, bytes(range(256)), {"content-type": "a/b"})]
    t = step(state, d, new=True)
    t.messages += extra
    ids = (await store.commit([t])).outbox_ids
    assert len(ids) == len(t.messages) == 2 and len(set(ids)) == 2
    found = await pending(store)
    assert [p.id for p in found] == sorted(ids)
    assert [p.message for p in found] == t.messages
    assert len(await pending(store, limit=1)) == 1
    d2 = decide(state, Complete("a", 1, 5, 6))  # ends a's attempt: its job row goes too
    third = (await store.commit([step(state, d2)], sent=[ids[1]])).outbox_ids
    assert [p.id for p in await pending(store)] == sorted(third)
    await store.outbox_sent(third)
    await store.outbox_sent([])
    assert await pending(store) == []
    assert (await store.commit([], sent=[12345])).conflicts == set()


async def test_outbox_rows_are_their_holders_while_it_lives(store: Store) -> None:
    plan = await register(store)
    a, b = await started(store, plan), await started(store, plan)
    for row in await pending(store):  # written without a holder: any relay's
        await store.outbox_sent([row.id])
    stale = await store.load_run(b.run_id)
    await complete(store, b, "a")  # moves b's version under `stale`
    for row in await pending(store):
        await store.outbox_sent([row.id])
    ta = step(a, decide(a, Complete("a", 1, 5, 6, output=1)))  # schedules m[0]
    ta.local, ta.messages = ta.messages, [Message("t.x", a.run_id, b"published")]
    tb = step(stale, decide(stale, Cancel(at_ms=6)))
    tb.local = [job_message(stale, "m[0]", 1)]
    result = await store.commit([ta, tb], holder="h1")
    assert result.conflicts == {b.run_id}  # its local job was not written either
    assert len(result.outbox_ids) == 1 and len(result.local_ids) == len(ta.local) == 1
    assert result.outbox_ids[0] < result.local_ids[0]
    mine = sorted(result.outbox_ids + result.local_ids)
    assert await pending(store, ["h2"]) == []  # h1 lives: its rows are its own
    assert [p.id for p in await pending(store, ["h1", "h2"])] == mine  # h1 died
    await store.release_outbox(result.local_ids)  # h1 hands its local job back
    assert [p.id for p in await pending(store)] == result.local_ids
    await store.release_outbox([])  # nothing to do
    await store.leave("h1")  # a graceful stop releases the rest
    assert [p.id for p in await pending(store)] == mine


async def test_the_job_of_an_ended_attempt_is_never_pending(store: Store) -> None:
    plan = await register(store)
    state = await started(store, plan, xs=[1, 2])
    first = [p.message for p in await pending(store)]
    assert len(first) == 1  # a's job
    await complete(store, state, "a")  # deletes a's job row: its attempt ended
    jobs = [decode_job(p.message.payload) for p in await pending(store)]
    assert [(j.node_id, j.attempt) for j in jobs] == [("m[0]", 1), ("m[1]", 1)]
    cancel = Message("node.cancels", state.run_id, b"{}")
    superseded = job_message(state, "m[0]", 7)  # not the node's attempt
    done = job_message(state, "a", 1)  # a completed
    t = Transition(state, [], [cancel, superseded, done])
    ids = (await store.commit([t])).outbox_ids
    found = await pending(store)
    assert ids[0] in {p.id for p in found} and not {ids[1], ids[2]} & {p.id for p in found}
    assert {ids[1], ids[2]}.isdisjoint(p.id for p in await pending(store))  # deleted
    assert len(await pending(store)) == len(found)


async def test_open_attempts_are_those_still_scheduled_or_running(store: Store) -> None:
    plan = await register(store)
    state = await started(store, plan, xs=[1])
    run = state.run_id
    assert await store.open_attempts([]) == set()
    assert await store.open_attempts([(run, "a", 1), (run, "a", 2), (run, "z", 1)]) == {
        (run, "a", 1)
    }
    await complete(store, state, "a")
    keys = [(run, "a", 1), (run, "m[0]", 1), ("no-such-run", "a", 1)]
    assert await store.open_attempts(keys) == {(run, "m[0]", 1)}


async def test_processes_beat_leave_and_are_forgotten(store: Store) -> None:
    one = Holder("h1", "api-1", "host-a", 11, 100)
    two = Holder("h2", "worker-1", "host-b", 12, 200)
    await store.beat(one, 5_000)
    await store.beat(two, 9_000)
    await store.beat(one, 7_000)  # renewed
    assert sorted(await store.holders(), key=lambda h: h[0].id) == [(one, 7_000), (two, 9_000)]
    await store.leave("h2")
    assert await store.holders() == [(one, 7_000)]
    await store.leave("nobody")
    plan = await register(store)
    state, d = start(plan)
    await store.commit([step(state, d, new=True)], holder="h1")
    await store.forget("h1")  # it still holds a row
    assert await store.holders() == [(one, 7_000)]
    for row in await pending(store, ["h1"]):
        await store.outbox_sent([row.id])
    await store.forget("h1")
    assert await store.holders() == []


def timer(state: RunState, node_id: str, due_at_ms: int, attempt: int = 1) -> Timer:
    return Timer(
        run_id=state.run_id, kind="retry", node_id=node_id, attempt=attempt, due_at_ms=due_at_ms
    )


async def test_timers_come_due_and_go_with_their_run(store: Store) -> None:
    plan = await register(store)
    a, b = await started(store, plan), await started(store, plan)
    assert await store.next_timer_at() is None
    ta1, ta2, tb = timer(a, "a", 100), timer(a, "m[0]", 300), timer(b, "a", 200)
    assert not (await store.commit([Transition(a, [], timers=[ta1, ta2])])).conflicts
    assert not (await store.commit([Transition(b, [], timers=[tb])])).conflicts
    assert await store.next_timer_at() == 100
    assert await store.due_timers(99, 10) == []
    assert await store.due_timers(200, 10) == [ta1, tb]
    assert await store.due_timers(1_000, 1) == [ta1]
    moved = timer(a, "m[0]", 50)  # set again under the same id: replaced
    renewed = timer(a, "a", 400)  # fired and set again in one step: kept
    fired = Transition(a, [], timers=[moved, renewed], fired=[ta1])
    assert not (await store.commit([fired])).conflicts
    assert await store.due_timers(1_000, 10) == [moved, tb, renewed]
    d = decide(a, Cancel(at_ms=500))
    ending = step(a, d)
    ending.timers.append(timer(a, "z", 600))  # a run that ends keeps no timer
    assert not (await store.commit([ending])).conflicts
    assert await store.due_timers(10_000, 10) == [tb]
    assert await store.next_timer_at() == 200
    assert not (await store.commit([Transition(b, [], fired=[tb])])).conflicts
    assert await store.next_timer_at() is None


# --- the engine's state survives every commit ---

_versions = iter(range(2, 10_000))


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wf=workflows(), seed=st.integers(0, 2**32))
async def test_reloaded_state_equals_engine_state(
    store: Store, wf: tuple[dict[str, Any], dict[str, Any]], seed: int
) -> None:
    spec, inputs = wf
    ir = parse_workflow({**spec, "version": next(_versions)})  # one store for all examples
    await store.put_workflow(ir, canonical_json(ir).decode(), 0)
    checker = Checker(plan_of(ir), inputs, random.Random(seed))
    checker.state.run_id = str(uuid.uuid4())
    committed, new = 0, True
    for _ in range(2000):
        events = checker.events[committed:]
        t = Transition(checker.state, events, [Message("t", "k", b"x")], new=new)
        assert not (await store.commit([t])).conflicts
        new, committed = False, len(checker.events)
        await same(store, checker.state)
        if checker.state.status != "running" or not checker.step():
            break
    events = checker.events[committed:]
    assert not (await store.commit([Transition(checker.state, events)])).conflicts
    await same(store, checker.state)


@pytest.mark.parametrize("children", ["open", "none"])
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wf=workflows(), seed=st.integers(0, 2**32))
async def test_a_run_reloaded_in_part_decides_as_the_whole_run(
    store: Store, children: Children, wf: tuple[dict[str, Any], dict[str, Any]], seed: int
) -> None:
    """A reload to decide reads the top-level nodes and the map children not yet ended
    (`open`), or only the children its commands are about (`none`), never a wide map's
    every row. Given what the engine says a command needs (`decided_alone`: else every open
    child; `maps_to_load`: a map's children), it decides every command exactly as the whole
    run in memory does."""
    spec, inputs = wf
    ir = parse_workflow({**spec, "version": next(_versions)})
    await store.put_workflow(ir, canonical_json(ir).decode(), 0)
    checker = Recorder(plan_of(ir), inputs, random.Random(seed))
    checker.state.run_id = run_id = str(uuid.uuid4())
    committed, new = 0, True
    for _ in range(2000):
        t = Transition(checker.state, checker.events[committed:], new=new)
        assert not (await store.commit([t])).conflicts
        new, committed = False, len(checker.events)
        if checker.state.status != "running":
            break
        partial = await store.load_run(run_id, children=children)
        assert partial.partial == (children == "none")
        assert all(
            n.status in NODE_OPEN for nid, n in partial.nodes.items() if nid not in ir_nodes(ir)
        )
        first = len(checker.decided)
        going = checker.step()
        for command, events, jobs, timers in checker.decided[first:]:
            await load_needed(store, partial, command)
            decision = decide(partial, command)
            assert (decision.events, decision.jobs, decision.timers) == (events, jobs, timers)
        if not going:
            break


async def load_needed(store: Store, state: RunState, command: Any) -> None:
    """What the driver loads before it decides (runtime/driver.py, `_load_needed`)."""
    child = child_of(command)
    if state.partial and child is not None and child not in state.nodes:
        for nid, node in (
            (await store.load_nodes({state.run_id: [child]})).get(state.run_id, {}).items()
        ):
            state.nodes.setdefault(nid, node)
    if state.partial and not decided_alone(state, command):
        for nid, node in (await store.load_run(state.run_id, children="open")).nodes.items():
            state.nodes.setdefault(nid, node)
        state.partial = False
    for pid in maps_to_load(state, command):
        for nid, node in (await store.load_children(state.run_id, pid)).items():
            state.nodes.setdefault(nid, node)


def ir_nodes(ir: Any) -> set[str]:
    return {n.id for n in ir.nodes}


class Recorder(Checker):
    """A Checker that keeps every command it applied, with the events, jobs and timers the
    engine decided on it."""

    def __init__(self, *args: Any) -> None:
        self.decided: list[tuple[Any, list[Any], list[Any], list[Any]]] = []
        super().__init__(*args)

    def apply(self, command: Any) -> None:
        n = len(self.events), len(self.jobs), len(self.timers)
        super().apply(command)
        made = self.events[n[0] :], self.jobs[n[1] :], self.timers[n[2] :]
        self.decided.append((command, *made))


# --- Postgres only ---


@pytest.mark.integration
async def test_postgres_opens_concurrently_and_migrates_once(pg_url: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from headrace.store.postgres import PostgresStore\n"
        "async def main():\n"
        "    s = PostgresStore(sys.argv[1]); await s.open(); await s.close()\n"
        "asyncio.run(main())\n"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, pg_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(5)
    ]
    here = [PostgresStore(pg_url, min_size=1, max_size=2) for _ in range(5)]
    await asyncio.gather(*(s.open() for s in here))
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    for s in here:
        assert s.description == "postgres(synchronous_commit=on)"
        await s.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head(),)]


def test_head_names_the_newest_migration() -> None:
    assert head() == HEAD


def imports_alembic_to_open(store: str, location: str) -> bool:
    """Whether a new process opening `store` (module.Class under headrace.store) at
    `location` imported Alembic and SQLAlchemy."""
    module, _, cls = store.partition(".")
    code = (
        "import asyncio, sys\n"
        f"from headrace.store.{module} import {cls}\n"
        "async def main():\n"
        f"    s = {cls}(sys.argv[1])\n"
        "    await s.open(); await s.close()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules, 'sqlalchemy' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, location], capture_output=True, text=True, check=True
    )
    return {"True True": True, "False False": False}[out.stdout.strip()]


def test_a_sqlite_schema_at_head_opens_without_alembic(tmp_path: Path) -> None:
    """Alembic's import costs about a second of every start: it is paid only to migrate."""
    path = str(tmp_path / "h.db")
    assert imports_alembic_to_open("sqlite.SqliteStore", path)  # a new file is migrated
    assert not imports_alembic_to_open("sqlite.SqliteStore", path)  # then it is at head


@pytest.mark.integration
def test_a_postgres_schema_at_head_opens_without_alembic() -> None:
    with postgres_database() as url:
        assert imports_alembic_to_open("postgres.PostgresStore", url)
        assert not imports_alembic_to_open("postgres.PostgresStore", url)


@pytest.mark.integration
async def test_postgres_replaces_connections_the_server_closed(pg_url: str) -> None:
    # Every connection dead at once: the eight pooled ones and the commits' own.
    store = PostgresStore(pg_url, min_size=8, max_size=8)
    await store.open()
    try:
        plan = await register(store)
        state = await started(store, plan)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        assert len(killed) == 9
        await asyncio.sleep(0.1)
        await same(store, state)  # idle connections found closed are replaced, not used
        await complete(store, state, "a")
        await same(store, state)
    finally:
        await store.close()


@pytest.mark.integration
async def test_postgres_unreachable_is_an_infra_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=1")
    with pytest.raises(InfraError):
        await store.open()
    with pytest.raises(InputError):
        await PostgresStore("mysql://x/y").open()


# --- read models ---


async def logged_events(store: Store, run_id: str) -> list[Any]:
    return [decode_event(e.data) for e in await store.read_events(run_id, 0, 10_000)]


async def test_read_rows_are_the_fold_of_the_log_whatever_comes_twice_or_not_at_all(
    read_store: Store,
) -> None:
    plan = await register(read_store)
    state = new_run(str(uuid.uuid4()), plan, created_at_ms=1_000)
    d = decide(state, Start(at_ms=1_000, inputs={"xs": [1, 2]}, labels={"team": "a"}))
    assert not (await read_store.commit([step(state, d, new=True)])).conflicts
    first = await logged_events(read_store, state.run_id)
    await complete(read_store, state, "a")
    log = await logged_events(read_store, state.run_id)
    done = await read_store.project({state.run_id: first})
    assert (done.applied, done.skipped, done.filled) == (len(first), 0, 0)
    again = await read_store.project({state.run_id: first})  # a redelivery: nothing changes
    assert (again.applied, again.skipped) == (0, len(first))
    await complete(read_store, state, "m[0]")
    log = await logged_events(read_store, state.run_id)
    tail = log[-1:]  # the events of `a` were lost: the gap is read from the log
    done = await read_store.project({state.run_id: tail})
    assert done.filled == 1 and done.applied == len(log) - len(first)
    run, nodes = RunRow(run_id=state.run_id), {}
    fold(run, nodes, log)
    assert await read_store.read_rows(state.run_id) == (run, [nodes[n] for n in sorted(nodes)])
    assert run.labels == {"team": "a"} and run.active_nodes == 2 and run.status == "running"
    assert nodes["a"].output_ref is not None and nodes["m[0]"].status == "completed"


async def test_the_catch_up_sees_which_runs_are_behind(read_store: Store) -> None:
    plan = await register(read_store)
    a, b = await started(read_store, plan), await started(read_store, plan)
    assert await read_store.applied_seqs([a.run_id, b.run_id]) == {}
    await read_store.project({}, {a.run_id: a.seq})
    assert await read_store.applied_seqs([a.run_id, b.run_id]) == {a.run_id: a.seq}
    everything = await read_store.run_seqs("", 10)
    assert sorted(everything) == sorted([(a.run_id, a.seq), (b.run_id, b.seq)])
    first = min(a.run_id, b.run_id)
    assert await read_store.run_seqs(first, 10) == [(max(a.run_id, b.run_id), a.seq)]


async def fold_of_log(read_store: Store, run_id: str) -> tuple[RunRow, list[Any]]:
    run, nodes = RunRow(run_id=run_id), dict[str, Any]()
    fold(run, nodes, await logged_events(read_store, run_id))
    return run, [nodes[n] for n in sorted(nodes)]


async def read_model_indexes(read_store: Store) -> list[str]:
    if isinstance(read_store, SqliteStore):
        query = "SELECT name FROM read.sqlite_master WHERE type = 'index' AND name LIKE 'runs%'"
        return sorted(r[0] for r in read_store.db.execute(query))
    assert isinstance(read_store, PostgresStore)
    query = "SELECT indexname FROM pg_indexes WHERE tablename IN ('runs_read', 'states_read')"
    return sorted(r[0] for r in await read_store._all(query))


async def test_a_rebuild_resumes_catches_up_and_swaps_in_the_fold_of_the_log(
    read_store: Store,
) -> None:
    plan = await register(read_store)
    runs = {s.run_id: s for s in [await started(read_store, plan, xs=[1]) for _ in range(5)]}
    ids = sorted(runs)
    await complete(read_store, runs[ids[0]], "a")
    await read_store.project({}, {ids[0]: 1})  # the live rows: one run, behind
    indexes = await read_model_indexes(read_store)
    assert await read_store.rebuild_open() == ("", 0)
    fresh = read_store.rebuild_tables()
    await fresh.project(dict(await read_store.run_seqs("", 2)))
    assert await read_store.rebuild_open() == (ids[1], 2)  # where a rebuild that stopped resumes
    await complete(read_store, runs[ids[1]], "a")  # moved on after it was filled
    assert (await fresh.applied(ids)).keys() == set(ids[:2])
    assert (await read_store.read_rows(ids[1]))[0] is None  # the live rows serve meanwhile
    assert (await catch_up(read_store, fresh, 2))[0] == 4  # one moved on, three new
    await complete(read_store, runs[ids[4]], "a")

    async def last(tables: Tables) -> None:
        assert (await catch_up(read_store, tables, 2))[0] == 1  # ids[4] moved on

    await read_store.rebuild_swap(last)
    for run_id in ids:
        assert await read_store.read_rows(run_id) == await fold_of_log(read_store, run_id)
    kept, recounted = await read_store.counters()
    assert kept == recounted and sum(n for n, _ in kept.values()) == 5
    assert await read_model_indexes(read_store) == indexes  # the old names, on the fresh tables
    await complete(read_store, runs[ids[2]], "a")  # a projector goes on with the fresh tables
    await read_store.project({ids[2]: (await logged_events(read_store, ids[2]))[-1:]})
    assert await read_store.read_rows(ids[2]) == await fold_of_log(read_store, ids[2])
    assert await read_store.rebuild_open() == ("", 0)  # the next rebuild starts afresh


async def test_one_rebuild_at_a_time(read_store: Store) -> None:
    async with read_store.rebuild_lock():
        with pytest.raises(Conflict, match="another rebuild"):
            async with read_store.rebuild_lock():
                pass
    async with read_store.rebuild_lock():  # released with the first
        pass
