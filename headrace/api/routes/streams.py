"""A run's events, replayed then live: Server-Sent Events, and the same over WebSocket.

The run is checked by its head (`Store.get_run_head`: its row without inputs and outputs);
the stream then reads events a page at a time, whatever the size of the run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from headrace.api import openapi
from headrace.api.backend import BackendDep
from headrace.api.openapi import text
from headrace.api.routes.runs import RUN_ID, parse_run_id
from headrace.api.streams import follow_events, sse
from headrace.errors import InputError, NotFound
from headrace.store import StoredEvent

SSE = "text/event-stream"

router = APIRouter()
MAX_SEQ = 2**31 - 1  # a run's events are numbered in 32 bits (the stores' `seq` columns)


@router.get(
    "/v1/runs/{run_id}/events",
    **text(SSE, "Server-Sent Events", 404, 422, schema=openapi.SSE_EVENT),
)
async def run_events(
    backend: BackendDep,
    run_id: str = RUN_ID,
    after: int | None = Query(None, ge=0, le=MAX_SEQ),
    last_event_id: str | None = Header(
        None, json_schema_extra=openapi.only_string("^[0-9]+$"), description="resume after it"
    ),
) -> StreamingResponse:
    """Server-Sent Events: replay after `after` (or Last-Event-ID), then live."""
    rid = parse_run_id(run_id)
    await backend.store.get_run_head(rid)
    resume = _last_event_id(last_event_id)  # checked even when `after` wins
    start = after if after is not None else resume

    async def stream() -> AsyncIterator[bytes]:  # Starlette stops it on a disconnect
        async for batch in follow_events(backend.store, backend.hub, rid, start):
            yield sse(batch)

    return StreamingResponse(stream(), media_type=SSE, headers={"Cache-Control": "no-cache"})


@router.websocket("/v1/runs/{run_id}/stream")
async def run_stream(
    websocket: WebSocket, backend: BackendDep, run_id: str, after: int = 0
) -> None:
    """The same events over WebSocket: one JSON message per event, then close."""
    try:
        rid = parse_run_id(run_id)
        await backend.store.get_run_head(rid)
    except NotFound:  # accepted first: a close before it is an HTTP 403 to the client
        await websocket.accept()
        await websocket.close(code=4404, reason="run not found")
        return
    if not 0 <= after <= MAX_SEQ:
        await websocket.accept()
        await websocket.close(code=4422, reason=f"after: must be 0 to {MAX_SEQ}")
        return
    await websocket.accept()
    try:
        async for batch in follow_events(backend.store, backend.hub, rid, after):
            for event in batch:
                await websocket.send_text(_message(event))
        await websocket.close()
    except WebSocketDisconnect:
        return


def _message(event: StoredEvent) -> str:
    return json.dumps({"seq": event.seq, "type": event.type, "data": json.loads(event.data)})


def _last_event_id(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit() or int(value) > MAX_SEQ:
        raise InputError("Last-Event-ID", f"must be an event sequence number (0 to {MAX_SEQ})")
    return int(value)
