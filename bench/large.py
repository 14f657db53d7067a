"""Large runs, and the runs' event streams: per-node cost must not grow with the run.

- W-chain-20k: one run of a 20,000-node chain (ms per node, against W1's 20-node chain).
- W-map-200k: one run of a 200,000-wide map (µs per child, against W-map-10k).
- `-watched`: the same while a client (another process) follows the run's event stream
  through the API from its start to its end.
- W-stream: 100 short runs, each followed through the API's event stream from its start,
  five at a time: how long after its run ended each stream closed (p50, p99).
- W-reload: loading a run to decide on one child's result, its 100,000-wide map down to 10
  children still running: the whole run (every node row, as before issue 21) against the
  top-level nodes and the open children (`load_run(children="open")`), medians of 7.
- W-reload-open: a process that did not start the run (nothing cached) applies one child's
  result while all of a 100,000-wide map's children run (just fanned out): the time of its
  `Driver.apply`, reload and commit included, medians of 7 (each a fresh driver, another
  child). Before issue 21 the reload read every open child (all 100,000); now the run's
  top-level nodes and that child.
- W-cancel: `POST /v1/runs/{id}/cancel` on a run whose 100,000-wide map is done and which
  waits for a signal, against the same on one-node runs (a median of 7), and once more on
  each after it ended (medians of 7).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from headrace.api.app import create_app
from headrace.engine import Complete, Start, decide, new_run
from headrace.runtime.driver import Driver
from headrace.runtime.hub import Hub
from headrace.runtime.metrics import Metrics
from headrace.services.runtime import Runtime
from headrace.spec import Plan, parse_workflow, plan_of
from headrace.store import Transition
from headrace.testing.servers import serve
from headrace.testing.streams import close_delay


async def one_large_run(
    rt: Runtime, spec: dict[str, Any], inputs: dict[str, Any], watched: bool
) -> float:
    """Seconds from the run's start to its end."""
    ir = parse_workflow(spec)
    await rt.register(ir, "")
    plan = plan_of(ir)
    async with serve(create_app(rt)) as url:
        started = time.perf_counter()
        run_id = await rt.start_run(plan, inputs)
        watcher = await _watch(url, run_id) if watched else None
        record = await rt.wait(run_id, timeout_s=1800)
        seconds = time.perf_counter() - started
        if watcher is not None:
            out, _ = await watcher.communicate()
            assert int(out) == record.seq, (out, record.seq)  # it read every event
    assert record.status == "completed", record
    return seconds


async def _watch(url: str, run_id: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.watch",
        url,
        run_id,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[1],
    )


SHORT = {
    "name": "short",
    "nodes": {
        "a": {"task": "headrace.testing.tasks.noop"},
        "b": {"task": "headrace.testing.tasks.noop", "needs": ["a"]},
    },
}


async def stream_close_delays(rt: Runtime, runs: int = 100, at_once: int = 5) -> list[float]:
    """Seconds from each run's end to the close of the stream that followed it."""
    ir = parse_workflow(SHORT)
    await rt.register(ir, "")
    async with serve(create_app(rt)) as url, httpx.AsyncClient(base_url=url) as client:
        delays: list[float] = []
        for _ in range(runs // at_once):
            delays += await asyncio.gather(*(close_delay(client, "short") for _ in range(at_once)))
    return delays


NOOP = "headrace.testing.tasks.noop"
WIDE_HOLD = {
    "name": "wide-hold",
    "inputs": {"xs": {"type": "array"}},
    "nodes": {
        "fan": {"map": "${{ inputs.xs }}", "task": NOOP},
        "hold": {"needs": ["fan"], "wait": {"signal": "go"}},
    },
}
ONE_HOLD = {"name": "one-hold", "nodes": {"hold": {"wait": {"signal": "go"}}}}


async def cancel_times(rt: Runtime, width: int, repeat: int = 7) -> dict[str, float]:
    """Milliseconds of a cancel request, each on a run waiting at `hold`: with a `width`-wide
    map done before it (the state in the driver's memory, as in `headrace dev`; and not, as
    in an API process of a cluster), or `hold` alone (median of `repeat` runs); then the
    same request on those runs once ended (medians of `repeat`)."""
    wide, one = await _register(rt, WIDE_HOLD), await _register(rt, ONE_HOLD)
    xs = {"xs": list(range(width))}
    wide_ids = await asyncio.gather(_waiting(rt, wide, xs), _waiting(rt, wide, xs))
    one_ids = [await _waiting(rt, one, {}) for _ in range(repeat + 1)]
    async with serve(create_app(rt)) as url, httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _cancel_ms(client, one_ids.pop())  # first-call costs are not the point
        cancel_wide = await _cancel_ms(client, wide_ids[0])
        rt.driver.cache.pop(wide_ids[1], None)  # a process that has not driven the run
        cancel_wide_cold = await _cancel_ms(client, wide_ids[1])
        cancel_one = [await _cancel_ms(client, run_id) for run_id in one_ids]
        ended_wide = [await _cancel_ms(client, wide_ids[0]) for _ in range(repeat)]
        ended_one = [await _cancel_ms(client, one_ids[0]) for _ in range(repeat)]
    return {
        "cancel_wide_ms": cancel_wide,
        "cancel_wide_cold_ms": cancel_wide_cold,
        "cancel_one_ms": statistics.median(cancel_one),
        "ended_wide_ms": statistics.median(ended_wide),
        "ended_one_ms": statistics.median(ended_one),
    }


async def reload_times(rt: Runtime, width: int, open_: int, repeat: int = 7) -> dict[str, float]:
    """Milliseconds of `load_run` of a run whose `width`-wide map has `open_` children left
    (the rest completed), with every node (`all`) and with the open children only (`open`)."""
    plan = await _register(rt, WIDE_HOLD)
    state = new_run(str(uuid.uuid4()), plan, created_at_ms=1)
    d = decide(state, Start(at_ms=1, inputs={"xs": list(range(width))}))
    await rt.store.commit([Transition(state, d.events, new=True)])
    done = range(width - open_)
    for chunk in (done[i : i + 10_000] for i in range(0, len(done), 10_000)):
        events = []
        for i in chunk:
            events += decide(state, Complete(f"fan[{i}]", 1, 2, 2, output=i)).events
        assert not (await rt.store.commit([Transition(state, events)])).conflicts
    out = {}
    for children in ("all", "open"):
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            loaded = await rt.store.load_run(state.run_id, children=children)  # type: ignore[arg-type]
            times.append((time.perf_counter() - started) * 1000)
        out[f"load_{children}_ms"] = round(statistics.median(times), 2)
        out[f"load_{children}_nodes"] = len(loaded.nodes)
    return out


async def reload_apply_times(rt: Runtime, width: int, repeat: int = 7) -> dict[str, float]:
    """Milliseconds of a fresh driver's `apply` of one child's result, on a run whose
    `width`-wide map has every child running."""
    plan = await _register(rt, WIDE_HOLD)
    state = new_run(str(uuid.uuid4()), plan, created_at_ms=1)
    d = decide(state, Start(at_ms=1, inputs={"xs": list(range(width))}))
    await rt.store.commit([Transition(state, d.events, new=True)])
    times = []
    for i in range(repeat):
        driver = Driver(rt.store, rt.bus, Hub(), Metrics())  # another process: cold cache
        started = time.perf_counter()
        ((_, applied),) = await driver.apply([(state.run_id, Complete(f"fan[{i}]", 1, 2, 3))])
        times.append((time.perf_counter() - started) * 1000)
        assert len(applied.decision.events) == 2  # started, completed
    return {"width": width, "apply_ms": round(statistics.median(times), 2)}


async def _register(rt: Runtime, spec: dict[str, Any]) -> Plan:
    ir = parse_workflow(spec)
    await rt.register(ir, "")
    return plan_of(ir)


async def _waiting(rt: Runtime, plan: Plan, inputs: dict[str, Any]) -> str:
    """A run started and waiting at its node `hold`."""
    run_id = await rt.start_run(plan, inputs)
    while True:
        _, nodes = await rt.store.get_run(run_id)
        if next(n for n in nodes if n.node_id == "hold").status == "waiting":
            return run_id
        await asyncio.sleep(0.2)


async def _cancel_ms(client: httpx.AsyncClient, run_id: str) -> float:
    started = time.perf_counter()
    r = await client.post(f"/v1/runs/{run_id}/cancel")
    ms = (time.perf_counter() - started) * 1000
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    return round(ms, 2)
