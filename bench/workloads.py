"""The workloads: each runs through the same runtime path as `headrace run` (Embedded:
store, bus, coordinator, worker, relay in one process) with no-op task bodies.

BACKEND chooses the adapters: `sqlite+memory` (default), `postgres+redis` (a fresh
database and key prefix on the servers of headrace.testing.services, fsync on),
`postgres+kafka` (the Kafka bus on the test broker, or HEADRACE_TEST_KAFKA) or
`postgres+redis+kafka` (the migrating bus in dual-write: Redis acts, Kafka gets a copy)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bench import cluster, large
from headrace.clock import SYSTEM
from headrace.config import Settings
from headrace.services import loop
from headrace.services.runtime import Embedded, Runtime
from headrace.spec import Plan, parse_workflow, plan_of
from headrace.store import RunRecord

NOOP = "headrace.testing.tasks.noop"


def chain(n: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {"n0": {"task": NOOP}}
    for i in range(1, n):
        nodes[f"n{i}"] = {"task": NOOP, "needs": [f"n{i - 1}"]}
    return {"name": "w1-chain", "nodes": nodes}


def diamond() -> dict[str, Any]:
    return {
        "name": "w2-diamond",
        "nodes": {
            "a": {"task": NOOP},
            "b": {"task": NOOP, "needs": ["a"]},
            "c": {"task": NOOP, "needs": ["a"]},
            "d": {"task": NOOP, "needs": ["a"]},
            "e": {"task": NOOP, "needs": ["b", "c", "d"]},
        },
    }


def fan(width: int) -> dict[str, Any]:
    return {
        "name": "w3-fan",
        "inputs": {"xs": {"type": "array"}},
        "nodes": {
            "start": {"task": NOOP},
            "fan": {"needs": ["start"], "map": "${{ inputs.xs }}", "task": NOOP},
            "end": {"needs": ["fan"], "task": NOOP},
        },
        "_inputs": {"xs": list(range(width))},
    }


async def _run(db: Path, spec: dict[str, Any], runs: int) -> float:
    """Seconds from the first submission to the end of the last run."""
    inputs = spec.pop("_inputs", {})
    with contextlib.ExitStack() as stack:
        settings = _settings(db, stack)
        return await _timed(settings, spec, inputs, runs)


def backend() -> str:
    return os.environ.get("BACKEND", "sqlite+memory")


def _settings(db: Path, stack: contextlib.ExitStack) -> Settings:
    tasks = "headrace.testing.tasks"
    if backend() == "sqlite+memory":
        return Settings(database_url=f"sqlite:///{db}", tasks=tasks)
    if backend() not in BACKENDS:
        raise SystemExit(f"unknown BACKEND {backend()!r} ({', '.join(BACKENDS)})")
    from headrace.testing.services import postgres_database, redis_prefix

    url = stack.enter_context(postgres_database())
    redis_url, prefix = stack.enter_context(redis_prefix())
    if backend() == "postgres+redis":
        return Settings(database_url=url, bus=redis_url, bus_prefix=prefix, tasks=tasks)
    kafka = f"kafka://{stack.enter_context(_broker(db.parent))}"
    kafka_prefix = prefix.replace(":", ".")
    if backend() == "postgres+kafka":
        return Settings(database_url=url, bus=kafka, bus_prefix=kafka_prefix, tasks=tasks)
    os.environ["ENABLE_KAFKA_WRITE"] = "true"  # dual-write: the flag's initial value
    return Settings(
        database_url=url, bus=redis_url, bus_prefix=prefix, kafka_url=kafka, tasks=tasks
    )


BACKENDS = ("sqlite+memory", "postgres+redis", "postgres+kafka", "postgres+redis+kafka")


@contextlib.contextmanager
def _broker(tmp: Path) -> Iterator[str]:
    """HEADRACE_TEST_KAFKA, or the test broker (tansu, memory storage) for this sample."""
    from headrace.testing.kafka import Tansu, external_broker

    external = external_broker()
    if external:
        yield external
        return
    with Tansu(tmp) as broker:
        yield broker.bootstrap


async def _timed(
    settings: Settings, spec: dict[str, Any], inputs: dict[str, Any], runs: int
) -> float:
    async with _runtime(settings) as rt:
        ir = parse_workflow(spec)
        await rt.register(ir, "")
        plan = plan_of(ir)
        await _warm_up(rt, plan, inputs, runs)
        started, started_ms = time.perf_counter(), SYSTEM.now_ms()
        ids = await asyncio.gather(*(rt.start_run(plan, inputs) for _ in range(runs)))
        if runs > 1:  # the runs' own clocks say when the last one ended
            records = await _all_ended(rt, ids)
            seconds = (max(r.ended_at_ms or 0 for r in records) - started_ms) / 1000
        else:
            records = [await _ended(rt, ids[0])]
            seconds = time.perf_counter() - started
            if cluster.workers():  # it ended in another process: that clock says when
                seconds = ((records[0].ended_at_ms or 0) - started_ms) / 1000
        for record in records:
            assert record.status == "completed", record
        _projection_lag(rt)
        return seconds


def _projection_lag(rt: Runtime) -> None:
    """With ENABLE_PROJECTIONS on: the projector's per-batch delays (committed to applied),
    as bucket counts, on stderr (`python -m bench.one W2 ...` shows them)."""
    series = rt.metrics.projection_delay.series
    for name, row in series.items():
        buckets = dict(zip(["<=1ms", "<=5ms", "<=10ms", "<=50ms", "<=100ms", "<=500ms",
                            "<=1s", "<=5s", "<=10s", "<=60s", "<=300s", ">300s"], row[:-1],
                           strict=True))  # fmt: skip
        print(f"projection delay per batch ({name}): {buckets}", file=sys.stderr)


async def _warm_up(rt: Runtime, plan: Plan, inputs: dict[str, Any], runs: int) -> None:
    """Runs of the workload's shape, up to 200 at once, before the measured ones: first-call
    costs are not the point. As many as it starts, so the jobs that a process's own worker
    has no slot for take the bus's path (a Kafka consumer joins its group then: ~3 s)."""
    warm = await asyncio.gather(*(rt.start_run(plan, inputs) for _ in range(min(runs, 200))))
    if len(warm) > 1:
        await _all_ended(rt, warm)
    else:
        await _ended(rt, warm[0])


PEAKS: dict[str, float] = {}  # peak RSS of the cluster's processes, by name


@contextlib.asynccontextmanager
async def _runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Every role here (Embedded), or the coordinator and workers as processes."""
    if not cluster.workers():
        async with Embedded(settings) as rt:
            yield rt
        return
    if backend() == "sqlite+memory":
        raise SystemExit("WORKERS=N needs a shared store and bus: BACKEND=postgres+...")
    with cluster.processes(settings, cluster.workers(), PEAKS):
        async with Runtime(settings, ("api",)) as rt:
            yield rt


async def _ended(rt: Runtime, run_id: str) -> RunRecord:
    if not cluster.workers():
        return await rt.wait(run_id, timeout_s=600)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # the hub hears only this process: poll the store
        record = await rt.store.get_run_record(run_id)
        if record.ended_at_ms is not None:
            return record
        await asyncio.sleep(0.005)
    raise TimeoutError(f"run {run_id} did not end in 600 s")


async def _all_ended(rt: Runtime, ids: list[str]) -> list[RunRecord]:
    """Wait until none of `ids` is active, asking the store once per poll (not once per
    run: reading 2,000 runs one by one took an eighth of the CPU the runs had), then read
    their records."""
    waiting = set(ids)
    deadline = time.monotonic() + 600
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} runs did not end in 600 s")
        await asyncio.sleep(0.01)
        waiting &= set(await rt.store.active_runs())
    return [await rt.store.get_run_record(run_id) for run_id in ids]


def measure(name: str, db: Path) -> dict[str, Any]:
    if name == "W1":
        seconds = loop.run(_run(db, chain(20), 1))
        return {"wall_ms": round(seconds * 1000, 2), "ms_per_node": round(seconds * 50, 3)}
    if name in ("W2", "W2-large"):
        runs = 200 if name == "W2" else 2000
        seconds = loop.run(_run(db, diamond(), runs))
        return {
            "runs": runs,
            "seconds": round(seconds, 3),
            "runs_per_s": round(runs / seconds),
            "nodes_per_s": round(5 * runs / seconds),
        }
    if name == "W3":
        seconds = loop.run(_run(db, fan(1000), 1))
        return {"width": 1000, "makespan_s": round(seconds, 3)}
    if name == "W-map-10k":
        seconds = loop.run(_run(db, fan(10_000), 1))
        return {
            "width": 10_000,
            "makespan_s": round(seconds, 3),
            "us_per_child": round(seconds * 100, 1),
        }
    if name == "W4":
        return loop.run(_steady(db, nodes_per_s=1000, seconds=W4_SECONDS))
    if name.startswith(("W-chain-20k", "W-map-200k", "W-stream")):
        return _large_workload(name, db)
    if name == "W-cancel":
        return {"width": 100_000, **loop.run(_cancels(db, 100_000))}
    if name == "W-reload":
        return {"width": 100_000, "open": 10, **loop.run(_reloads(db, 100_000, 10))}
    if name == "W-reload-open":
        return loop.run(_reload_applies(db, 100_000))
    raise SystemExit(f"unknown workload {name}")


def _large_workload(name: str, db: Path) -> dict[str, Any]:
    watched = name.endswith("-watched")
    if name.startswith("W-chain-20k"):
        seconds = loop.run(_large(db, chain(20_000), watched))
        return {
            "nodes": 20_000,
            "seconds": round(seconds, 2),
            "ms_per_node": round(seconds / 20, 3),
        }
    if name.startswith("W-map-200k"):
        seconds = loop.run(_large(db, fan(200_000), watched))
        return {
            "width": 200_000,
            "makespan_s": round(seconds, 2),
            "us_per_child": round(seconds * 5, 1),
        }
    delays = sorted(loop.run(_streams(db)))
    return {
        "runs": len(delays),
        "close_p50_ms": round(delays[len(delays) // 2] * 1000, 1),
        "close_p99_ms": round(delays[len(delays) * 99 // 100] * 1000, 1),
        "close_max_ms": round(delays[-1] * 1000, 1),
    }


async def _large(db: Path, spec: dict[str, Any], watched: bool) -> float:
    inputs = spec.pop("_inputs", {})
    with contextlib.ExitStack() as stack:
        async with _runtime(_settings(db, stack)) as rt:
            return await large.one_large_run(rt, spec, inputs, watched)


async def _streams(db: Path) -> list[float]:
    with contextlib.ExitStack() as stack:
        async with _runtime(_settings(db, stack)) as rt:
            return await large.stream_close_delays(rt)


async def _cancels(db: Path, width: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        async with _runtime(_settings(db, stack)) as rt:
            return await large.cancel_times(rt, width)


async def _reloads(db: Path, width: int, open_: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        async with _runtime(_settings(db, stack)) as rt:
            return await large.reload_times(rt, width, open_)


async def _reload_applies(db: Path, width: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        async with _runtime(_settings(db, stack)) as rt:
            return await large.reload_apply_times(rt, width)


W4_SECONDS = float(os.environ.get("W4_SECONDS", "30"))


async def _steady(db: Path, nodes_per_s: int, seconds: float) -> dict[str, Any]:
    """W4: diamonds started at a steady rate (5 nodes each); latency percentiles of every
    node: dispatch (scheduled -> started) and completion (scheduled -> ended)."""
    with contextlib.ExitStack() as stack:
        settings = _settings(db, stack)
        async with _runtime(settings) as rt:
            ir = parse_workflow(diamond())
            await rt.register(ir, "")
            plan = plan_of(ir)
            runs_per_tick = max(1, nodes_per_s // 5 // 100)  # a tick every 10 ms
            loop = asyncio.get_running_loop()
            ids: list[str] = []
            start = loop.time()
            tick = 0
            while loop.time() - start < seconds:
                ids += await asyncio.gather(*(rt.start_run(plan, {}) for _ in range(runs_per_tick)))
                tick += 1
                await asyncio.sleep(max(0.0, start + tick * 0.01 - loop.time()))
            for run_id in ids:
                await _ended(rt, run_id)
            dispatch, done = [], []
            for run_id in ids:
                _, nodes = await rt.store.get_run(run_id)
                for n in nodes:
                    if n.scheduled_at_ms is not None and n.started_at_ms is not None:
                        dispatch.append(n.started_at_ms - n.scheduled_at_ms)
                    if n.scheduled_at_ms is not None and n.ended_at_ms is not None:
                        done.append(n.ended_at_ms - n.scheduled_at_ms)
    offered = len(ids) * 5 / seconds
    return {
        "offered_nodes_per_s": round(offered),
        "seconds": seconds,
        "nodes": len(dispatch),
        "dispatch_p50_ms": _pct(dispatch, 50),
        "dispatch_p99_ms": _pct(dispatch, 99),
        "completion_p50_ms": _pct(done, 50),
        "completion_p99_ms": _pct(done, 99),
    }


def _pct(values: list[int], q: int) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, len(ordered) * q // 100)]) if ordered else 0.0
