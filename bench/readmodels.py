"""Read models at scale, on Postgres (a fresh database on the test server, fsync on):

    python -m bench.readmodels --runs 100000

1. **Seed**: `--runs` runs through the store's real commit path (`Store.commit`, batches of
   500 transitions), each driven by the engine from its start: workflows of 5, 10 or 20
   task nodes; a third still running, the rest completed, failed or cancelled; labels
   `team` (8 values), `env` (3) and a unique `order`.
2. **Project**: the projector's catch-up folds the whole event log into `runs_read` and
   `states_read` (what a rebuild does): events/s and the total time.
3. **Rebuild**: `headrace projections rebuild` of them all (fresh tables, then the swap):
   events/s and the total time.
4. **Stream**: the events of `--stream` more runs as the runtime publishes them (one
   message per transition) go through an in-memory bus to a projector: events/s applied.
5. **Queries**, each `--repeat` times with varying arguments, on the main tables and on the
   read model: p50 and p99 in ms.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from headrace.bus import MemoryBus
from headrace.bus.topics import EVENTS
from headrace.engine import Cancel, Complete, Fail, Start, decide, new_run
from headrace.events import ErrorInfo, Message, encode
from headrace.projections.rebuild import rebuild
from headrace.runtime.metrics import Metrics
from headrace.runtime.projector import Projector
from headrace.spec import Plan, parse_workflow, plan_of
from headrace.store import Store, Transition
from headrace.store.listing import RunFilter, Source
from headrace.store.postgres import PostgresStore
from headrace.testing.services import postgres_database

TEAMS = [f"team-{i}" for i in range(8)]
ENVS = ["prod", "staging", "dev"]
DAY_MS = 86_400_000


def chain(nodes: int) -> Plan:
    spec = {
        "name": f"chain{nodes}",
        "nodes": {
            f"n{i}": {"task": "m.f", **({"needs": [f"n{i - 1}"]} if i else {})}
            for i in range(nodes)
        },
    }
    return plan_of(parse_workflow(spec))


def one_run(plan: Plan, rng: random.Random, at_ms: int) -> Iterator[Transition]:
    """A run's transitions, decided by the engine one at a time (each on the state the
    previous one was committed from): started, then node after node, ending completed,
    failed, cancelled or (a fifth) still running."""
    state = new_run(str(uuid.uuid4()), plan, created_at_ms=at_ms)
    labels = {"team": rng.choice(TEAMS), "env": rng.choice(ENVS), "order": uuid.uuid4().hex}
    d = decide(state, Start(at_ms=at_ms, inputs={}, labels=labels))
    yield Transition(state, d.events, new=True)
    fate = rng.choice(["running", "completed", "completed", "failed", "cancelled"])
    stop = rng.randrange(len(plan.order)) if fate != "completed" else len(plan.order)
    now = at_ms
    for i, node in enumerate(plan.order):
        now += rng.randint(5, 500)
        if i == stop:
            if fate == "failed":
                error = ErrorInfo("Boom", "failed for good")
                d = decide(state, Fail(node, 1, now - 1, now, error))
            elif fate == "cancelled":
                d = decide(state, Cancel(at_ms=now))
            else:
                return
            yield Transition(state, d.events)
            return
        d = decide(state, Complete(node, 1, now - 1, now, {"i": i}))
        yield Transition(state, d.events)


async def drive(store: Store, runs: list[Iterator[Transition]]) -> list[Transition]:
    """Commit the runs' transitions in waves (the next one of each run, one commit); all
    the transitions committed."""
    done: list[Transition] = []
    while runs:
        wave, left = [], []
        for run in runs:
            t = next(run, None)
            if t is not None:
                wave.append(t)
                left.append(run)
        if wave:
            result = await store.commit(wave)
            assert not result.conflicts, result.conflicts
            done += wave
        runs = left
    return done


async def seed(store: Store, runs: int, rng: random.Random) -> dict[str, Any]:
    plans = [chain(5), chain(10), chain(20)]
    for p in plans:
        await store.put_workflow(p.ir, "", 0)
    began = time.perf_counter()
    start_ms = 1_700_000_000_000
    events = 0
    for first in range(0, runs, 500):
        group = [
            one_run(rng.choice(plans), rng, start_ms + i * (30 * DAY_MS // runs))
            for i in range(first, min(runs, first + 500))
        ]
        events += sum(len(t.events) for t in await drive(store, group))
    seconds = time.perf_counter() - began
    return {"runs": runs, "events": events, "seconds": round(seconds, 1)}


async def project_log(store: Store, events: int) -> dict[str, Any]:
    projector = Projector(store, MemoryBus(), {"ENABLE_PROJECTIONS": True}, Metrics(), name="p")
    began = time.perf_counter()
    runs = await projector.catch_up()
    seconds = time.perf_counter() - began
    return {"runs": runs, "seconds": round(seconds, 1), "events_per_s": round(events / seconds)}


async def rebuild_all(store: Store) -> dict[str, Any]:
    p = await rebuild(store)
    return {"runs": p.done, "seconds": round(p.seconds, 1), "events_per_s": round(p.events_per_s)}


async def project_stream(store: Store, runs: int, rng: random.Random) -> dict[str, Any]:
    """Events of `runs` more runs, committed, then published as the driver does, drained by
    a projector from an in-memory bus (so the figure is the projector's and the store's)."""
    plan = chain(10)
    bus = MemoryBus()
    now = int(time.time() * 1000)
    done = await drive(store, [one_run(plan, rng, now) for _ in range(runs)])
    messages = [Message(EVENTS, t.state.run_id, encode(t.events)) for t in done]
    projector = Projector(store, bus, {"ENABLE_PROJECTIONS": True}, Metrics(), name="p")
    await bus.consume([EVENTS], "projectors", "p", 1, 0)  # the group exists: it gets them all
    await bus.publish(messages)
    began = time.perf_counter()
    while await bus.depth(EVENTS):
        await projector.step(block_ms=0)
    seconds = time.perf_counter() - began
    return {
        "messages": len(messages),
        "events": projector.applied,
        "seconds": round(seconds, 2),
        "events_per_s": round(projector.applied / seconds),
    }


Query = Callable[[Source, random.Random], Awaitable[Any]]


def queries(store: Store, run_ids: list[str]) -> dict[str, Query]:
    month = 1_700_000_000_000

    async def get(source: Source, rng: random.Random) -> Any:
        run_id = rng.choice(run_ids)
        if source == "primary":
            return await store.get_run(run_id)
        return await store.read_rows(run_id)

    async def newest_by_status(source: Source, rng: random.Random) -> Any:
        status = rng.choice(["running", "completed", "failed", "cancelled"])
        return await store.list_runs(RunFilter((status,)), 50, None, "created", source)

    async def workflow_status_range(source: Source, rng: random.Random) -> Any:
        after = month + rng.randrange(25) * DAY_MS
        f = RunFilter(
            (rng.choice(["completed", "failed"]),),
            rng.choice(["chain5", "chain10", "chain20"]),
            created_after=after,
            created_before=after + 3 * DAY_MS,
        )
        return await store.list_runs(f, 50, None, "created", source)

    async def by_label(source: Source, rng: random.Random) -> Any:
        f = RunFilter(labels=(("team", rng.choice(TEAMS)), ("env", rng.choice(ENVS))))
        return await store.list_runs(f, 50, None, "created", source)

    async def by_order(source: Source, rng: random.Random) -> Any:
        return await store.list_runs(RunFilter(q=uuid.uuid4().hex), 50, None, "created", source)

    async def count(source: Source, rng: random.Random) -> Any:
        return await store.count_runs(RunFilter(), source)

    async def count_team(source: Source, rng: random.Random) -> Any:
        return await store.count_runs(RunFilter(labels=(("team", rng.choice(TEAMS)),)), source)

    async def stats(source: Source, rng: random.Random) -> Any:
        return await store.run_stats(month + 29 * DAY_MS, source)

    return {
        "get_run_by_id": get,
        "list_newest_50_by_status": newest_by_status,
        "list_by_workflow_status_time_range": workflow_status_range,
        "list_by_two_labels": by_label,
        "search_q_label_value": by_order,
        "count_by_status": count,
        "count_by_status_of_a_team": count_team,
        "stats": stats,
    }


async def time_queries(store: Store, run_ids: list[str], repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, query in queries(store, run_ids).items():
        row: dict[str, Any] = {}
        for source in ("primary", "projection"):
            rng = random.Random(7)  # the same arguments on both
            await query(source, rng)  # warm
            samples = []
            for _ in range(repeat):
                began = time.perf_counter()
                await query(source, rng)
                samples.append((time.perf_counter() - began) * 1000)
            samples.sort()
            row[source] = {
                "p50_ms": round(statistics.median(samples), 2),
                "p99_ms": round(samples[min(len(samples) - 1, len(samples) * 99 // 100)], 2),
            }
        row["speedup_p50"] = round(row["primary"]["p50_ms"] / row["projection"]["p50_ms"], 1)
        out[name] = row
    return out


async def main(runs: int, stream: int, repeat: int) -> dict[str, Any]:
    rng = random.Random(1)
    with postgres_database() as url:
        store = PostgresStore(url, max_size=4)
        await store.open()
        try:
            seeded = await seed(store, runs, rng)
            projected = await project_log(store, seeded["events"])
            rebuilt = await rebuild_all(store)
            streamed = await project_stream(store, stream, rng)
            run_ids = [r for r, _ in await store.run_seqs("", 10_000)]
            await _analyze(store)
            timed = await time_queries(store, run_ids, repeat)
        finally:
            await store.close()
    return {
        "seed": seeded,
        "project_log": projected,
        "rebuild": rebuilt,
        "stream": streamed,
        "queries": timed,
    }


async def _analyze(store: PostgresStore) -> None:
    async with store._conn() as conn:
        await conn.execute("ANALYZE")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--stream", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.runs, args.stream, args.repeat))))
