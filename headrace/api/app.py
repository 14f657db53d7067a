"""The REST API (FastAPI): workflows, runs, signals, event streams, health and metrics."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec
from fastapi import (
    FastAPI,
    Header,
    Path,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException

from headrace.api import openapi, schemas, views
from headrace.api.limits import BodyLimit, check_signal, check_tag, parse_off_loop, plan_off_loop
from headrace.api.openapi import BODY, doc, text
from headrace.api.problems import on_headrace_error, on_http_error, on_validation_error, problem
from headrace.api.schemas import CURSOR_PATTERN, SIGNAL_NAME
from headrace.api.streams import follow_events, sse
from headrace.config import Settings
from headrace.engine import Cancel, Signal
from headrace.errors import HeadraceError, InputError, NotFound
from headrace.events import RUN_TERMINAL, RunStatus
from headrace.flags import FLAGS, Flag, FlagWatcher
from headrace.flags import parse as parse_flag
from headrace.flags.definitions import flag
from headrace.migration.steps import Migration
from headrace.runtime.clock import now_ms
from headrace.runtime.driver import Driver
from headrace.runtime.hub import Hub
from headrace.runtime.metrics import Metrics
from headrace.spec import Plan, WorkflowIR
from headrace.store import Store, WorkflowRecord

PROMETHEUS = "text/plain"
SSE = "text/event-stream"


class _FlagName(StringConvertor):
    """Flag names are upper case, so `/v1/flags/history` is never taken for one (a PUT to
    it is a 405, not a flag named "history")."""

    regex = "[A-Z][A-Z0-9_]*"


register_url_convertor("flag", _FlagName())


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


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(
        title="headrace",
        version="0.1.0",
        description="Durable workflows: register, run, signal, watch. Every error is "
        "application/problem+json (the Problem schema).",
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId: the function
    )
    app.add_exception_handler(HeadraceError, on_headrace_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_middleware(BodyLimit, max_bytes=backend.settings.max_body_bytes)
    openapi.install(app)
    _service_routes(app, backend)
    _workflow_routes(app, backend)
    _flag_routes(app, backend)
    _migration_routes(app, backend)
    _run_routes(app, backend)
    _signal_routes(app, backend)
    _stream_routes(app, backend)
    return app


def _service_routes(app: FastAPI, backend: Backend) -> None:
    @app.get("/healthz", **doc({200: schemas.Health}, store=False))
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", **text(PROMETHEUS, "Prometheus text format"))
    async def metrics() -> Response:
        return Response(generate_latest(backend.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _workflow_routes(app: FastAPI, backend: Backend) -> None:
    store = backend.store

    @app.post(
        "/v1/workflows",
        status_code=201,
        openapi_extra=openapi.WORKFLOW_BODY,
        **doc({201: schemas.Workflow, 200: schemas.Workflow}, 400, 409, 413, 422),
    )
    async def register_workflow(request: Request) -> JSONResponse:
        """Register a workflow (YAML or JSON body). Identical content again: 200."""
        raw = await request.body()
        try:
            source = raw.decode()
        except UnicodeDecodeError:
            return problem(400, "the body must be UTF-8 YAML or JSON")
        ir = await parse_off_loop(source)
        record, created = await backend.register(ir, source)
        return JSONResponse(views.workflow_view(record), status_code=201 if created else 200)

    @app.get("/v1/workflows", **doc({200: schemas.WorkflowList}))
    async def list_workflows() -> dict[str, Any]:
        return {"items": [views.workflow_view(w) for w in await store.list_workflows()]}

    @app.get("/v1/workflows/{tag}", **doc({200: schemas.WorkflowDetail}, 404))
    async def get_workflow(tag: str = Path(description="`name@version`, or `name`")) -> Any:
        check_tag(tag)
        record = await store.get_workflow(tag)
        return {**views.workflow_view(record), "ir": msgspec.to_builtins(record.ir)}


def _flag_routes(app: FastAPI, backend: Backend) -> None:
    store = backend.store
    names = schemas.FLAG_NAMES

    def _flag(f: Flag, stored: dict[str, bool | int]) -> dict[str, Any]:
        value = stored.get(f.name, backend.flags.initial[f.name])
        return views.flag_view(f, value, f.name in stored)

    @app.get("/v1/flags", **doc({200: schemas.FlagList}))
    async def list_flags() -> dict[str, Any]:
        stored = await store.stored_flags()
        return {"items": [_flag(f, stored) for f in FLAGS.values()]}

    @app.get("/v1/flags/history", **doc({200: schemas.FlagHistory}, 404, 422))
    async def flag_history(
        name: str | None = Query(None, json_schema_extra=names),
        limit: int = Query(50, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Changes, newest first: of flag `name`, or of every flag."""
        if name is not None:
            flag(name)
        changes = await store.flag_history(name, limit)
        return {"items": [views.flag_change_view(c) for c in changes]}

    @app.get("/v1/flags/{name:flag}", **doc({200: schemas.Flag}, 404))
    async def get_flag(name: str = Path(json_schema_extra=names)) -> dict[str, Any]:
        return _flag(flag(name), await store.stored_flags())

    @app.put("/v1/flags/{name:flag}", **doc({200: schemas.FlagSet}, 404, *BODY))
    async def set_flag(body: schemas.SetFlag, name: str = Path(json_schema_extra=names)) -> Any:
        """Set a flag (every process applies it within about a second), with an audit record."""
        value = parse_flag(name, body.value)
        change = await store.set_flag(name, value, body.who, body.why, now_ms())
        await backend.flags.refresh()
        view = _flag(flag(name), await store.stored_flags())
        return {**view, "change": views.flag_change_view(change)}


def _migration_routes(app: FastAPI, backend: Backend) -> None:
    migration = backend.migration

    @app.get("/v1/migration", **doc({200: schemas.MigrationStatus}))
    async def migration_status() -> dict[str, Any]:
        """The Redis → Kafka step the flags are at, and its checklist from live figures."""
        return await migration.status()

    @app.post("/v1/migration/advance", **doc({200: schemas.MigrationMoved}, 409, *BODY))
    async def migration_advance(body: schemas.MigrationAdvance) -> dict[str, Any]:
        """One step forward from `from`; refused (409) while a check fails, unless `force`,
        and when the migration is no longer at `from`."""
        moved = await migration.advance(body.who, body.why, expect=body.from_, force=body.force)
        return {**moved, "status": await migration.status()}

    @app.post("/v1/migration/rollback", **doc({200: schemas.MigrationMoved}, 409, *BODY))
    async def migration_rollback(body: schemas.MigrationRollback) -> dict[str, Any]:
        """One step back from `from` (or back `to` a step); Kafka runs are re-pinned to
        Redis. 409 when the migration is no longer at `from`."""
        moved = await migration.rollback(body.who, body.why, expect=body.from_, to=body.to)
        return {**moved, "status": await migration.status()}


RUN_ID = Path(json_schema_extra={"format": "uuid"}, description="a run id (UUID)")


def _run_routes(app: FastAPI, backend: Backend) -> None:
    store = backend.store
    started = {201: schemas.RunStarted, 200: schemas.RunStarted}

    @app.post("/v1/runs", status_code=201, **doc(started, 404, 409, *BODY))
    async def start_run(
        body: schemas.StartRun,
        idempotency_key: str | None = Header(
            None, max_length=200, description="the same key and request: the same run (200)"
        ),
    ) -> Any:
        """Start a run. The same Idempotency-Key with the same request gives the same run
        (200), never a second; with another workflow or other inputs, 422."""
        tag = body.workflow_tag
        if idempotency_key is not None:
            existing = await store.run_for_key(idempotency_key)
            if existing is not None:  # "name" alone still means the key's run's version
                stored = (await store.get_run_record(existing)).workflow_tag
                tag = stored if stored.partition("@")[0] == tag else tag
        plan = await plan_off_loop(store, tag)
        run_id, created = await backend.begin(plan, body.inputs, idempotency_key)
        record = await store.get_run_record(run_id)
        view = {"run_id": run_id, "status": record.status}
        return view if created else JSONResponse(view)  # the key's run: 200

    @app.get("/v1/runs", **doc({200: schemas.RunPage}, 422))
    async def list_runs(
        status: RunStatus | None = None,
        workflow: str | None = Query(None, description="`name` or `name@version`"),
        limit: int = Query(50, ge=1, le=1000),
        cursor: str | None = Query(
            None, pattern=CURSOR_PATTERN, description="a `next_cursor` this API returned"
        ),
    ) -> dict[str, Any]:
        if workflow is not None:
            try:
                check_tag(workflow)
            except NotFound:  # a version no workflow can have: nothing matches
                return {"items": [], "next_cursor": None}
        items, next_cursor = await store.list_runs(status, workflow, limit, cursor)
        return {"items": [views.run_item(r) for r in items], "next_cursor": next_cursor}

    @app.get("/v1/runs/{run_id}", **doc({200: schemas.Run}, 404))
    async def get_run(run_id: str = RUN_ID) -> dict[str, Any]:
        record, nodes = await store.get_run(_run_id(run_id))
        pin = (await store.pins([record.run_id])).get(record.run_id)
        return views.run_view(record, nodes, pin)

    @app.get(
        "/v1/runs/{run_id}/nodes/{node_id}",
        **doc({200: schemas.NodeAnswer | schemas.MapPage}, 404, 422),
    )
    async def get_node(
        run_id: str = RUN_ID,
        node_id: str = Path(),
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

    @app.post("/v1/runs/{run_id}/cancel", **doc({200: schemas.RunStarted}, 404))
    async def cancel_run(run_id: str = RUN_ID) -> dict[str, Any]:
        """Cancel a run; cancelling a finished run changes nothing and answers 200 again."""
        rid = _run_id(run_id)
        await store.get_run_record(rid)
        await backend.driver.apply([(rid, Cancel(at_ms=now_ms()))])
        return {"run_id": rid, "status": (await store.get_run_record(rid)).status}


def _signal_routes(app: FastAPI, backend: Backend) -> None:
    store = backend.store

    @app.post(
        "/v1/runs/{run_id}/signals/{name}",
        status_code=202,
        **doc({202: schemas.SignalAccepted}, 404, 409, *BODY),
    )
    async def signal_run(
        run_id: str = RUN_ID,
        name: str = Path(pattern=SIGNAL_NAME, description="a signal a `wait` node waits for"),
        body: schemas.SignalBody | None = None,
    ) -> Any:
        """Deliver a signal; kept for a `wait` not yet reached. 409 once the run has ended;
        422 for a signal no `wait` of the workflow declares."""
        rid = _run_id(run_id)
        payload = body.payload if body is not None else None
        check_signal(name, payload)
        record = await store.get_run_record(rid)
        if record.status not in RUN_TERMINAL:
            _check_signal(await store.get_workflow(record.workflow_tag), name)
            applied = await backend.driver.apply([(rid, Signal(name, payload, now_ms()))])
            if applied and applied[0][1].decision.events:
                return {"run_id": rid, "signal": name, "accepted": True}
            record = await store.get_run_record(rid)
        return problem(409, f"run {rid} has ended ({record.status}); signals are refused")


def _stream_routes(app: FastAPI, backend: Backend) -> None:
    store = backend.store

    @app.get(
        "/v1/runs/{run_id}/events",
        **text(SSE, "Server-Sent Events", 404, 422, schema=openapi.SSE_EVENT),
    )
    async def run_events(
        run_id: str = RUN_ID,
        after: int | None = Query(None, ge=0),
        last_event_id: str | None = Header(
            None, json_schema_extra=openapi.only_string("^[0-9]+$"), description="resume after it"
        ),
    ) -> StreamingResponse:
        """Server-Sent Events: replay after `after` (or Last-Event-ID), then live."""
        rid = _run_id(run_id)
        await store.get_run_record(rid)
        resume = _last_event_id(last_event_id)  # checked even when `after` wins
        start = after if after is not None else resume

        async def stream() -> AsyncIterator[bytes]:  # Starlette stops it on a disconnect
            async for batch in follow_events(store, backend.hub, rid, start):
                yield sse(batch)

        return StreamingResponse(stream(), media_type=SSE, headers={"Cache-Control": "no-cache"})

    @app.websocket("/v1/runs/{run_id}/stream")
    async def run_stream(websocket: WebSocket, run_id: str, after: int = 0) -> None:
        """The same events over WebSocket: one JSON message per event, then close."""
        try:
            rid = _run_id(run_id)
            await store.get_run_record(rid)
        except NotFound:  # accepted first: a close before it is an HTTP 403 to the client
            await websocket.accept()
            await websocket.close(code=4404, reason="run not found")
            return
        await websocket.accept()
        try:
            async for batch in follow_events(store, backend.hub, rid, after):
                for event in batch:
                    await websocket.send_text(
                        json.dumps(
                            {"seq": event.seq, "type": event.type, "data": json.loads(event.data)}
                        )
                    )
            await websocket.close()
        except WebSocketDisconnect:
            return


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
