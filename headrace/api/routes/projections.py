"""The read models: where they stand (`headrace projections status`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from headrace.api import schemas
from headrace.api.backend import BackendDep
from headrace.api.openapi import doc
from headrace.projections import monitor

router = APIRouter()


@router.get("/v1/projections", **doc({200: schemas.ProjectionStatus}))
async def projection_status(backend: BackendDep) -> dict[str, Any]:
    """The flags, each projector's lag and progress, the runs in the main tables and in the
    read model, and the lag trigger's last rollback."""
    now = backend.clock.now_ms()
    limit = backend.settings.projection_lag_limit_s
    found = await monitor.status(backend.store, backend.flags, limit, now)
    return {**found, "runs": await backend.store.read_model_counts()}
