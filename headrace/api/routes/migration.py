"""The Redis → Kafka migration: where it is, one step forward, one step back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from headrace.api import schemas
from headrace.api.backend import BackendDep
from headrace.api.openapi import BODY, doc

router = APIRouter()


@router.get("/v1/migration", **doc({200: schemas.MigrationStatus}))
async def migration_status(backend: BackendDep) -> dict[str, Any]:
    """The Redis → Kafka step the flags are at, and its checklist from live figures."""
    return await backend.migration.status()


@router.post("/v1/migration/advance", **doc({200: schemas.MigrationMoved}, 409, *BODY))
async def migration_advance(body: schemas.MigrationAdvance, backend: BackendDep) -> dict[str, Any]:
    """One step forward from `from`; refused (409) while a check fails, unless `force`,
    and when the migration is no longer at `from`."""
    migration = backend.migration
    moved = await migration.advance(body.who, body.why, expect=body.from_, force=body.force)
    return {**moved, "status": await migration.status()}


@router.post("/v1/migration/rollback", **doc({200: schemas.MigrationMoved}, 409, *BODY))
async def migration_rollback(
    body: schemas.MigrationRollback, backend: BackendDep
) -> dict[str, Any]:
    """One step back from `from` (or back `to` a step); Kafka runs are re-pinned to
    Redis. 409 when the migration is no longer at `from`."""
    migration = backend.migration
    moved = await migration.rollback(body.who, body.why, expect=body.from_, to=body.to)
    return {**moved, "status": await migration.status()}
