"""Workflows: register, list, read."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from headrace.api import openapi, schemas, views
from headrace.api.backend import BackendDep
from headrace.api.limits import check_tag, parse_off_loop
from headrace.api.openapi import doc
from headrace.api.problems import problem

router = APIRouter()


@router.post(
    "/v1/workflows",
    status_code=201,
    openapi_extra=openapi.WORKFLOW_BODY,
    **doc({201: schemas.Workflow, 200: schemas.Workflow}, 400, 409, 413, 422),
)
async def register_workflow(request: Request, backend: BackendDep) -> JSONResponse:
    """Register a workflow (YAML or JSON body). Identical content again: 200."""
    raw = await request.body()
    try:
        source = raw.decode()
    except UnicodeDecodeError:
        return problem(400, "the body must be UTF-8 YAML or JSON")
    ir = await parse_off_loop(source)
    record, created = await backend.register(ir, source)
    return JSONResponse(views.workflow_view(record), status_code=201 if created else 200)


@router.get("/v1/workflows", **doc({200: schemas.WorkflowList}))
async def list_workflows(backend: BackendDep) -> dict[str, Any]:
    return {"items": [views.workflow_view(w) for w in await backend.store.list_workflows()]}


@router.get("/v1/workflows/{tag}", **doc({200: schemas.WorkflowDetail}, 404))
async def get_workflow(
    backend: BackendDep, tag: str = Path(description="`name@version`, or `name`")
) -> Any:
    check_tag(tag)
    record = await backend.store.get_workflow(tag)
    return {**views.workflow_view(record), "ir": msgspec.to_builtins(record.ir)}
