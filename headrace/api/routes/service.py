"""Health and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from headrace.api import schemas
from headrace.api.backend import BackendDep
from headrace.api.openapi import doc, text

PROMETHEUS = "text/plain"

router = APIRouter()


@router.get("/healthz", **doc({200: schemas.Health}, store=False))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", **text(PROMETHEUS, "Prometheus text format"))
async def metrics(backend: BackendDep) -> Response:
    return Response(generate_latest(backend.metrics.registry), media_type=CONTENT_TYPE_LATEST)
