"""Feature flags: read, set (with an audit record), and their history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query
from starlette.convertors import StringConvertor, register_url_convertor

from headrace.api import schemas, views
from headrace.api.backend import Backend, BackendDep
from headrace.api.openapi import BODY, doc
from headrace.flags import FLAGS, Flag
from headrace.flags import parse as parse_flag
from headrace.flags.definitions import flag


class _FlagName(StringConvertor):
    """Any one segment but `history`, so `/v1/flags/history` is never taken for a flag (a
    PUT to it is a 405), and a misspelt name is a flag not found, listing the flags."""

    regex = "(?!history$)[^/]+"


register_url_convertor("flag", _FlagName())  # before the routes below use it

NAMES = schemas.FLAG_NAMES
router = APIRouter()


def _flag(backend: Backend, f: Flag, stored: dict[str, bool | int]) -> dict[str, Any]:
    value = stored.get(f.name, backend.flags.initial[f.name])
    return views.flag_view(f, value, f.name in stored)


@router.get("/v1/flags", **doc({200: schemas.FlagList}))
async def list_flags(backend: BackendDep) -> dict[str, Any]:
    stored = await backend.store.stored_flags()
    return {"items": [_flag(backend, f, stored) for f in FLAGS.values()]}


@router.get("/v1/flags/history", **doc({200: schemas.FlagHistory}, 404, 422))
async def flag_history(
    backend: BackendDep,
    name: str | None = Query(None, json_schema_extra=NAMES),
    limit: int = Query(50, ge=1, le=1000),
) -> dict[str, Any]:
    """Changes, newest first: of flag `name`, or of every flag."""
    if name is not None:
        flag(name)
    changes = await backend.store.flag_history(name, limit)
    return {"items": [views.flag_change_view(c) for c in changes]}


@router.get("/v1/flags/{name:flag}", **doc({200: schemas.Flag}, 404))
async def get_flag(backend: BackendDep, name: str = Path(json_schema_extra=NAMES)) -> Any:
    return _flag(backend, flag(name), await backend.store.stored_flags())


@router.put("/v1/flags/{name:flag}", **doc({200: schemas.FlagSet}, 404, *BODY))
async def set_flag(
    body: schemas.SetFlag, backend: BackendDep, name: str = Path(json_schema_extra=NAMES)
) -> Any:
    """Set a flag (every process applies it within about a second), with an audit record."""
    store = backend.store
    value = parse_flag(name, body.value)
    change = await store.set_flag(name, value, body.who, body.why, backend.clock.now_ms())
    await backend.flags.refresh()
    view = _flag(backend, flag(name), await store.stored_flags())
    return {**view, "change": views.flag_change_view(change)}
