"""The REST API (FastAPI): workflows, runs, signals, event streams, health and metrics."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import msgspec
from fastapi import FastAPI, Header, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from headrace.api import views
from headrace.api.limits import BodyLimit
from headrace.api.problems import on_headrace_error, on_http_error, on_validation_error, problem
from headrace.api.streams import follow_events, sse
from headrace.config import Settings
from headrace.engine import Cancel, Signal
from headrace.errors import HeadraceError, InputError, NotFound
from headrace.events import RUN_TERMINAL
from headrace.flags import FLAGS, Flag, FlagWatcher
from headrace.flags import parse as parse_flag
from headrace.flags.definitions import flag
from headrace.migration.steps import Migration
from headrace.runtime.clock import now_ms
from headrace.runtime.driver import Driver
from headrace.runtime.hub import Hub
from headrace.runtime.metrics import Metrics
from headrace.spec import Plan, WorkflowIR, parse_workflow
from headrace.store import Store, WorkflowRecord

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
RunStatusFilter = Literal["pending", "running", "completed", "failed", "cancelled"]


class Backend(Protocol):
    """What the API needs from the process it runs in."""

    settings: Settings
    store: Store
    driver: Driver
    hub: Hub
    metrics: Metrics
    flags: FlagWatcher
    migration: Migration

    async def register(self, ir: WorkflowIR, source: str) -> tuple[WorkflowRecord, bool]: ...

    async def begin(
        self, plan: Plan, inputs: dict[str, Any], idempotency_key: str | None = None
    ) -> tuple[str, bool]: ...

    async def plan(self, tag: str) -> Plan: ...


class StartRun(BaseModel):
    model_config = {"extra": "forbid"}
    workflow_tag: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] = Field(default_factory=dict)


class SetFlag(BaseModel):
    model_config = {"extra": "forbid"}
    value: Any = Field(description="true/false, or 0-100 for KAFKA_TRAFFIC_PERCENT")
    why: str = Field(min_length=1, max_length=500)
    who: str = Field("api", min_length=1, max_length=100)


class MigrationMove(BaseModel):
    model_config = {"extra": "forbid"}
    why: str = Field(min_length=1, max_length=500)
    who: str = Field("api", min_length=1, max_length=100)
    force: bool = Field(False, description="advance even though checks fail")
    to: str | None = Field(None, description="rollback: the step to go back to")


class SignalBody(BaseModel):
    model_config = {"extra": "forbid"}
    payload: Any = None


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(
        title="headrace",
        version="0.1.0",
        description="Durable workflows: register, run, signal, watch.",
    )
    app.add_exception_handler(HeadraceError, on_headrace_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_middleware(BodyLimit, max_bytes=backend.settings.max_body_bytes)
    store = backend.store

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(backend.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/workflows", status_code=201)
    async def register_workflow(request: Request) -> JSONResponse:
        """Register a workflow (YAML or JSON body). Identical content again: 200."""
        raw = await request.body()
        try:
            source = raw.decode()
        except UnicodeDecodeError:
            return problem(400, "the body must be UTF-8 YAML or JSON")
        ir = parse_workflow(source)
        record, created = await backend.register(ir, source)
        return JSONResponse(views.workflow_view(record), status_code=201 if created else 200)

    @app.get("/v1/workflows")
    async def list_workflows() -> dict[str, Any]:
        return {"items": [views.workflow_view(w) for w in await store.list_workflows()]}

    @app.get("/v1/workflows/{tag}")
    async def get_workflow(tag: str) -> dict[str, Any]:
        record = await store.get_workflow(tag)
        return {**views.workflow_view(record), "ir": msgspec.to_builtins(record.ir)}

    @app.get("/v1/flags")
    async def list_flags() -> dict[str, Any]:
        stored = await store.stored_flags()
        return {"items": [_flag(f, stored) for f in FLAGS.values()]}

    @app.get("/v1/flags/history")
    async def flag_history(
        name: str | None = None, limit: int = Query(50, ge=1, le=1000)
    ) -> dict[str, Any]:
        """Changes, newest first: of flag `name`, or of every flag."""
        if name is not None:
            flag(name)
        changes = await store.flag_history(name, limit)
        return {"items": [views.flag_change_view(c) for c in changes]}

    @app.get("/v1/flags/{name}")
    async def get_flag(name: str) -> dict[str, Any]:
        return _flag(flag(name), await store.stored_flags())

    @app.put("/v1/flags/{name}")
    async def set_flag(name: str, body: SetFlag) -> dict[str, Any]:
        """Set a flag (every process applies it within about a second), with an audit record."""
        value = parse_flag(name, body.value)
        change = await store.set_flag(name, value, body.who, body.why, now_ms())
        await backend.flags.refresh()
        view = _flag(flag(name), await store.stored_flags())
        return {**view, "change": views.flag_change_view(change)}

    @app.get("/v1/migration")
    async def migration_status() -> dict[str, Any]:
        """The Redis → Kafka step the flags are at, and its checklist from live figures."""
        return await backend.migration.status()

    @app.post("/v1/migration/advance")
    async def migration_advance(body: MigrationMove) -> dict[str, Any]:
        """One step forward; refused (409) while a check fails, unless `force`."""
        if body.to is not None:
            raise InputError("to", "advance moves one step: leave `to` out")
        moved = await backend.migration.advance(body.who, body.why, body.force)
        return {**moved, "status": await backend.migration.status()}

    @app.post("/v1/migration/rollback")
    async def migration_rollback(body: MigrationMove) -> dict[str, Any]:
        """One step back (or back `to` a step); Kafka runs are re-pinned to Redis."""
        moved = await backend.migration.rollback(body.who, body.why, body.to)
        return {**moved, "status": await backend.migration.status()}

    def _flag(f: Flag, stored: dict[str, bool | int]) -> dict[str, Any]:
        value = stored.get(f.name, backend.flags.initial[f.name])
        return views.flag_view(f, value, f.name in stored)

    @app.post("/v1/runs", status_code=201)
    async def start_run(
        body: StartRun, idempotency_key: str | None = Header(None, max_length=200)
    ) -> Any:
        """Start a run. The same Idempotency-Key with the same request gives the same run
        (200), never a second; with another workflow or other inputs, 422."""
        tag = body.workflow_tag
        if idempotency_key is not None:
            existing = await store.run_for_key(idempotency_key)
            if existing is not None:  # "name" alone still means the key's run's version
                stored = (await store.get_run_record(existing)).workflow_tag
                tag = stored if stored.partition("@")[0] == tag else tag
        plan = await backend.plan(tag)
        run_id, created = await backend.begin(plan, body.inputs, idempotency_key)
        record = await store.get_run_record(run_id)
        view = {"run_id": run_id, "status": record.status}
        return view if created else JSONResponse(view)  # the key's run: 200

    @app.get("/v1/runs")
    async def list_runs(
        status: RunStatusFilter | None = None,
        workflow: str | None = None,
        limit: int = Query(50, ge=1, le=1000),
        cursor: str | None = None,
    ) -> dict[str, Any]:
        items, next_cursor = await store.list_runs(status, workflow, limit, cursor)
        return {"items": [views.run_item(r) for r in items], "next_cursor": next_cursor}

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str) -> dict[str, Any]:
        record, nodes = await store.get_run(_run_id(run_id))
        return views.run_view(record, nodes)

    @app.get("/v1/runs/{run_id}/nodes/{node_id}")
    async def get_node(
        run_id: str,
        node_id: str,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """One node; for a map node, its children one page at a time (each with its output)
        instead of the map's whole output."""
        record, nodes = await store.get_run(_run_id(run_id))
        node = next((n for n in nodes if n.node_id == node_id), None)
        if node is None:
            raise NotFound("node", node_id)
        if node.width is None:
            return {"node_id": node_id, **views.node_view(node)}
        children = await store.list_children(record.run_id, node_id, offset, limit)
        return views.map_page_view(node, children, offset, limit)

    @app.post("/v1/runs/{run_id}/cancel")
    async def cancel_run(run_id: str) -> dict[str, Any]:
        """Cancel a run; cancelling a finished run changes nothing and answers 200 again."""
        rid = _run_id(run_id)
        await store.get_run(rid)
        await backend.driver.apply([(rid, Cancel(at_ms=now_ms()))])
        record, _ = await store.get_run(rid)
        return {"run_id": rid, "status": record.status}

    @app.post("/v1/runs/{run_id}/signals/{name}", status_code=202)
    async def signal_run(run_id: str, name: str, body: SignalBody | None = None) -> Any:
        """Deliver a signal; kept for a `wait` not yet reached. 409 once the run has ended;
        422 for a signal no `wait` of the workflow declares."""
        rid = _run_id(run_id)
        if not _NAME.match(name):
            raise InputError("name", "a signal name is letters, digits, '_' or '-'")
        record = await store.get_run_record(rid)
        ended = problem(409, f"run {rid} has ended ({record.status}); signals are refused")
        if record.status in RUN_TERMINAL:
            return ended
        _check_signal(await store.get_workflow(record.workflow_tag), name)
        payload = body.payload if body is not None else None
        applied = await backend.driver.apply([(rid, Signal(name, payload, now_ms()))])
        if applied and applied[0][1].decision.events:
            return {"run_id": rid, "signal": name, "accepted": True}
        return ended

    @app.get("/v1/runs/{run_id}/events")
    async def run_events(
        request: Request,
        run_id: str,
        after: int | None = Query(None, ge=0),
        last_event_id: str | None = Header(None),
    ) -> StreamingResponse:
        """Server-Sent Events: replay after `after` (or Last-Event-ID), then live."""
        rid = _run_id(run_id)
        await store.get_run(rid)
        start = after if after is not None else _last_event_id(last_event_id)

        async def stream() -> AsyncIterator[bytes]:
            async for event in follow_events(store, backend.hub, rid, start):
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n" if event is None else sse(event)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.websocket("/v1/runs/{run_id}/stream")
    async def run_stream(websocket: WebSocket, run_id: str, after: int = 0) -> None:
        """The same events over WebSocket: one JSON message per event, then close."""
        try:
            rid = _run_id(run_id)
            await store.get_run(rid)
        except NotFound:  # accepted first: a close before it is an HTTP 403 to the client
            await websocket.accept()
            await websocket.close(code=4404, reason="run not found")
            return
        await websocket.accept()
        try:
            async for event in follow_events(store, backend.hub, rid, after):
                if event is not None:
                    await websocket.send_text(
                        json.dumps(
                            {"seq": event.seq, "type": event.type, "data": json.loads(event.data)}
                        )
                    )
            await websocket.close()
        except WebSocketDisconnect:
            return

    return app


def _check_signal(workflow: WorkflowRecord, name: str) -> None:
    """InputError unless a `wait` node of the workflow waits for signal `name`."""
    waited = sorted({n.wait.signal for n in workflow.ir.nodes if n.wait is not None})
    if name not in waited:
        has = f"waits for: {', '.join(waited)}" if waited else "waits for no signal"
        raise InputError("name", f"no wait node of {workflow.tag} waits for {name!r}; it {has}")


def _run_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise NotFound("run", text) from None


def _last_event_id(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit():
        raise InputError("Last-Event-ID", "must be an event sequence number")
    return int(value)
