"""Runs: start, read (a map node's children a page at a time), cancel, signal.

Start, cancel and signal check the run by its head (`Store.get_run_head`: its row without
inputs and outputs), which costs the same for a run with a 100,000-wide map as for a one-node
run. Cancel asks the driver (which reloads the run's top-level nodes and open map children,
unless it holds the run in memory) only while the run can still change. Lists and counts
are in listing.py.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import JSONResponse

from headrace.api import schemas, views
from headrace.api.backend import BackendDep
from headrace.api.limits import check_signal, plan_off_loop
from headrace.api.openapi import BODY, doc
from headrace.api.problems import problem
from headrace.api.routes.listing import READ_MODEL_HEADER
from headrace.api.schemas import SIGNAL_NAME
from headrace.engine import Cancel, Signal
from headrace.errors import InputError, NotFound
from headrace.events import RUN_TERMINAL
from headrace.store import WorkflowRecord

SEQ_HEADER = "X-Headrace-Seq"  # the run's last event in the answer
RUN_ID = Path(json_schema_extra={"format": "uuid"}, description="a run id (UUID)")
STARTED = {201: schemas.RunStarted, 200: schemas.RunStarted}
router = APIRouter()


def parse_run_id(text: str) -> str:
    """The run id in its canonical form; NotFound for text that is no UUID."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise NotFound("run", text) from None


@router.post("/v1/runs", status_code=201, **doc(STARTED, 404, 409, *BODY))
async def start_run(
    body: schemas.StartRun,
    backend: BackendDep,
    idempotency_key: str | None = Header(
        None, max_length=200, description="the same key and request: the same run (200)"
    ),
) -> Any:
    """Start a run. The same Idempotency-Key with the same request gives the same run
    (200), never a second; with another workflow or other inputs, 422."""
    store = backend.store
    tag = body.workflow_tag
    if idempotency_key is not None:
        existing = await store.run_for_key(idempotency_key)
        if existing is not None:  # "name" alone still means the key's run's version
            stored = (await store.get_run_head(existing)).workflow_tag
            tag = stored if stored.partition("@")[0] == tag else tag
    plan = await plan_off_loop(store, tag)
    run_id, created = await backend.start_or_reuse(plan, body.inputs, idempotency_key, body.labels)
    head = await store.get_run_head(run_id)
    view = {"run_id": run_id, "status": head.status}
    return view if created else JSONResponse(view)  # the key's run: 200


@router.get("/v1/runs/{run_id}", **doc({200: schemas.Run}, 404))
async def get_run(backend: BackendDep, response: Response, run_id: str = RUN_ID) -> dict[str, Any]:
    """A run, its nodes and outputs, from the main tables (never behind: a run just started
    is found), whatever USE_PROJECTIONS says."""
    record, nodes = await backend.store.get_run(parse_run_id(run_id))
    response.headers[READ_MODEL_HEADER] = "primary"
    response.headers[SEQ_HEADER] = str(record.seq)
    pin = (await backend.store.pins([record.run_id])).get(record.run_id)
    return views.run_view(record, nodes, pin)


@router.get(
    "/v1/runs/{run_id}/nodes/{node_id}",
    **doc({200: schemas.NodeAnswer | schemas.MapPage}, 404, 422),
)
async def get_node(
    backend: BackendDep,
    run_id: str = RUN_ID,
    node_id: str = Path(),
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """One node; for a map node, its children one page at a time (each with its output)
    instead of the map's whole output."""
    record, nodes = await backend.store.get_run(parse_run_id(run_id))
    node = next((n for n in nodes if n.node_id == node_id), None)
    if node is None:
        raise NotFound("node", node_id)
    if node.width is None:
        return {"node_id": node_id, **views.node_view(node)}
    children = await backend.store.list_children(record.run_id, node_id, offset, limit)
    return views.map_page_view(node, children, offset, limit)


@router.post("/v1/runs/{run_id}/cancel", **doc({200: schemas.RunStarted}, 404))
async def cancel_run(backend: BackendDep, run_id: str = RUN_ID) -> dict[str, Any]:
    """Cancel a run; cancelling a finished run changes nothing and answers 200 again."""
    rid = parse_run_id(run_id)
    head = await backend.store.get_run_head(rid)
    if head.status not in RUN_TERMINAL:  # the driver loads the run: only when it can change
        await backend.driver.apply([(rid, Cancel(at_ms=backend.clock.now_ms()))])
        head = await backend.store.get_run_head(rid)
    return {"run_id": rid, "status": head.status}


@router.post(
    "/v1/runs/{run_id}/signals/{name}",
    status_code=202,
    **doc({202: schemas.SignalAccepted}, 404, 409, *BODY),
)
async def signal_run(
    backend: BackendDep,
    run_id: str = RUN_ID,
    name: str = Path(pattern=SIGNAL_NAME, description="a signal a `wait` node waits for"),
    body: schemas.SignalBody | None = None,
) -> Any:
    """Deliver a signal; kept for a `wait` not yet reached. 409 once the run has ended;
    422 for a signal no `wait` of the workflow declares."""
    store = backend.store
    rid = parse_run_id(run_id)
    payload = body.payload if body is not None else None
    check_signal(name, payload)
    head = await store.get_run_head(rid)
    if head.status not in RUN_TERMINAL:
        _check_signal(await store.get_workflow(head.workflow_tag), name)
        applied = await backend.driver.apply([(rid, Signal(name, payload, backend.clock.now_ms()))])
        if applied and applied[0][1].decision.events:
            return {"run_id": rid, "signal": name, "accepted": True}
        head = await store.get_run_head(rid)
    return problem(409, f"run {rid} has ended ({head.status}); signals are refused")


def _check_signal(workflow: WorkflowRecord, name: str) -> None:
    """InputError unless a `wait` node of the workflow waits for signal `name`."""
    waited = sorted({n.wait.signal for n in workflow.ir.nodes if n.wait is not None})
    if name not in waited:
        has = f"waits for: {', '.join(waited)}" if waited else "waits for no signal"
        raise InputError("name", f"no wait node of {workflow.tag} waits for {name!r}; it {has}")
