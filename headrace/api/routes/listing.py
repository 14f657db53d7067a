"""Finding runs: `GET /v1/runs` (filters, keyset pages, two sorts), `GET /v1/runs/count` and
`GET /v1/stats`.

With USE_PROJECTIONS on, they read the read model (`runs_read`, kept by the projector);
off, or with `consistency=strong`, the main tables. The answers have the same shape and,
once the projector has caught up, the same content; `X-Headrace-Read-Model` says which
source answered. The read model lags the main tables by the projection lag (a run started a
moment ago may not be listed yet; a run by id is always found: it is read from the main
tables).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from headrace.api import schemas, views
from headrace.api.backend import Backend, BackendDep
from headrace.api.limits import check_tag
from headrace.api.openapi import doc, string_list
from headrace.api.schemas import CURSOR_PATTERN
from headrace.errors import InputError, NotFound
from headrace.events import RunStatus
from headrace.flags.definitions import FlagValues
from headrace.spec.labels import LABEL_FILTER, MAX_LABELS, MAX_VALUE, parse_label_filters
from headrace.store.listing import STATUSES, RunFilter, Source

READ_MODEL_HEADER = "X-Headrace-Read-Model"  # projection | primary: which source answered
FILTERS = ("status", "workflow", "label", "created_after", "created_before", "q", "consistency")
PAGING = ("sort", "cursor", "limit")
HOUR_MS = 3_600_000

LABEL = Query(
    None,
    description="`key=value`: runs with this label (several: with all of them)",
    json_schema_extra=string_list(LABEL_FILTER, MAX_LABELS),  # checked by parse_label
)
STATUS = Query(None, description="runs in this status (several: in any of them)")
WORKFLOW = Query(None, description="`name` or `name@version`")
AFTER = Query(
    None,
    description="created at or after this time (RFC 3339; UTC if no zone)",
    json_schema_extra={"format": "date-time"},
)
BEFORE = Query(
    None,
    description="created before this time (RFC 3339; UTC if no zone)",
    json_schema_extra={"format": "date-time"},
)
Q = Query(
    None,
    min_length=1,
    max_length=MAX_VALUE,
    description="a run id's first characters, or the whole value of any of its labels",
)
CONSISTENCY = Query(
    "eventual",
    description="`strong`: read the main tables, even while reads use the read models",
)

router = APIRouter()


def _known(request: Request, allowed: tuple[str, ...]) -> None:
    """A query parameter no filter has is refused: a misspelt filter must not list all."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise InputError(unknown[0], f"unknown parameter (known: {', '.join(allowed)})")


def _ms(text: str | None, field: str) -> int | None:
    """An RFC 3339 time as ms since the epoch (a number is no time here, as in the schema)."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text.upper())  # RFC 3339 allows a lowercase t and z
    except ValueError:
        raise InputError(
            field, f"expected an RFC 3339 time like 2026-12-01T00:00:00Z or a date, got {text!r}"
        ) from None
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)


async def run_filter(
    status: list[RunStatus] | None = STATUS,
    workflow: str | None = WORKFLOW,
    label: list[str] | None = LABEL,
    created_after: str | None = AFTER,
    created_before: str | None = BEFORE,
    q: str | None = Q,
) -> RunFilter | None:
    """The filter of a request (a dependency of the routes that take it); None when nothing
    can match (a version no workflow has)."""
    labels = tuple(parse_label_filters(label or []))
    after, before = _ms(created_after, "created_after"), _ms(created_before, "created_before")
    if after is not None and before is not None and before < after:
        raise InputError("created_before", "is earlier than created_after (a range backwards)")
    if workflow is not None:
        try:
            check_tag(workflow)
        except NotFound:
            return None
    statuses = tuple(dict.fromkeys(status or ()))
    return RunFilter(statuses, workflow, labels, after, before, q)


FilterDep = Annotated[RunFilter | None, Depends(run_filter)]


def source(backend: Backend, consistency: str, response: Response) -> Source:
    """Which source answers (and the header that says so)."""
    use = FlagValues(backend.flags.values).on("USE_PROJECTIONS")
    chosen: Source = "projection" if use and consistency != "strong" else "primary"
    response.headers[READ_MODEL_HEADER] = chosen
    return chosen


@router.get("/v1/runs", **doc({200: schemas.RunPage}, 422))
async def list_runs(
    request: Request,
    response: Response,
    backend: BackendDep,
    f: FilterDep,
    sort: Literal["created", "ended"] = Query(
        "created", description="`created`: newest first; `ended`: ended runs, last ended first"
    ),
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = Query(
        None,
        max_length=64,
        description=f"a `next_cursor` this API returned, with the same sort ({CURSOR_PATTERN})",
    ),
    consistency: Literal["eventual", "strong"] = CONSISTENCY,
) -> dict[str, Any]:
    """Runs matching every filter given, a page at a time."""
    _known(request, FILTERS + PAGING)
    chosen = source(backend, consistency, response)
    if f is None:
        return {"items": [], "next_cursor": None}
    items, next_cursor = await backend.store.list_runs(f, limit, cursor, sort, chosen)
    return {"items": [views.run_item(r) for r in items], "next_cursor": next_cursor}


@router.get("/v1/runs/count", **doc({200: schemas.RunCount}, 422))
async def count_runs(
    request: Request,
    response: Response,
    backend: BackendDep,
    f: FilterDep,
    consistency: Literal["eventual", "strong"] = CONSISTENCY,
) -> dict[str, Any]:
    """How many runs match the filters (those of `GET /v1/runs`), by status."""
    _known(request, FILTERS)
    chosen = source(backend, consistency, response)
    counts = {s: 0 for s in STATUSES} if f is None else await backend.store.count_runs(f, chosen)
    return {"total": sum(counts.values()), "by_status": counts}


@router.get("/v1/stats", **doc({200: schemas.Stats}, 422))
async def stats(
    request: Request,
    response: Response,
    backend: BackendDep,
    consistency: Literal["eventual", "strong"] = CONSISTENCY,
) -> dict[str, Any]:
    """A dashboard's front page: runs by status and by workflow, nodes active, and how long
    the runs that ended in the last hour took (p50, p95)."""
    _known(request, ("consistency",))
    chosen = source(backend, consistency, response)
    found = await backend.store.run_stats(backend.clock.now_ms() - HOUR_MS, chosen)
    by_status = {s: sum(w[s] for w in found.by_workflow.values()) for s in STATUSES}
    return {
        "runs": {
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_workflow": found.by_workflow,
        },
        "nodes_active": found.nodes_active,
        "last_hour": {
            "ended": found.ended_since,
            "duration_p50_ms": _rounded(found.duration_p50_ms),
            "duration_p95_ms": _rounded(found.duration_p95_ms),
        },
    }


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)
