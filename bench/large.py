"""Large runs, and the runs' event streams: per-node cost must not grow with the run.

- W-chain-20k: one run of a 20,000-node chain (ms per node, against W1's 20-node chain).
- W-map-200k: one run of a 200,000-wide map (µs per child, against W-map-10k).
- `-watched`: the same while a client (another process) follows the run's event stream
  through the API from its start to its end.
- W-stream: 100 short runs, each followed through the API's event stream from its start,
  five at a time: how long after its run ended each stream closed (p50, p99).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from headrace.api.app import create_app
from headrace.services.runtime import Runtime
from headrace.spec import parse_workflow, plan_of
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
        run_id = await rt.start(plan, inputs)
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
