"""A run followed through the API's event stream from its start: how long after the run's
end the stream closed (tests/integration/test_stream_close.py, the bench's W-stream)."""

from __future__ import annotations

import time
from datetime import datetime

import httpx


async def close_delay(client: httpx.AsyncClient, workflow_tag: str) -> float:
    """Start a run of `workflow_tag`, follow its stream to the end; seconds from the run's
    end (its `ended_at`) to the stream's close."""
    run = await client.post("/v1/runs", json={"workflow_tag": workflow_tag, "inputs": {}})
    run_id = run.json()["run_id"]
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as stream:
        async for _ in stream.aiter_bytes():
            pass
    closed = time.time()
    record = (await client.get(f"/v1/runs/{run_id}")).json()
    assert record["status"] == "completed", record
    return closed - datetime.fromisoformat(record["ended_at"]).timestamp()
