"""A run's event stream closes as soon as the run ends: on Postgres + Redis (`serve all`),
100 short runs each followed from their start, and none waits out the reader's timeout
(1 s) after its terminal event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from headrace.testing.cluster import ProcessCluster
from headrace.testing.services import postgres_database, redis_prefix
from headrace.testing.streams import close_delay

pytestmark = pytest.mark.integration

SPEC = """
name: short
nodes:
  a: {task: headrace.testing.tasks.noop}
  b: {task: headrace.testing.tasks.noop, needs: [a]}
"""
CEILING_S = 0.9  # the reader's wait is 1 s: a missed end costs all of it


async def follow_all(url: str, runs: int, at_once: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.post("/v1/workflows", content=SPEC)).status_code == 201
        delays: list[float] = []
        for _ in range(runs // at_once):
            delays += await asyncio.gather(*(close_delay(client, "short") for _ in range(at_once)))
        return delays


def test_streams_close_when_their_run_ends(tmp_path: Path) -> None:
    with postgres_database() as db_url, redis_prefix() as (redis_url, prefix):
        cluster = ProcessCluster(tmp_path, db_url, redis_url, prefix)
        try:
            cluster.start("all-1", "all", "--port", str(cluster.port))
            cluster.wait_healthy()
            delays = asyncio.run(follow_all(cluster.url, 100, 5))
        finally:
            cluster.down()
    late = sorted(d for d in delays if d > CEILING_S)
    assert not late, f"{len(late)} of 100 streams closed late: {late}"
