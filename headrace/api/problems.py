"""Errors as application/problem+json (RFC 9457), with the field path where there is one."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from headrace.errors import Conflict, HeadraceError, InfraError, InputError, NotFound, SpecError

PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}


def problem(status: int, detail: str, path: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if path is not None:
        body["path"] = path
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def from_error(e: HeadraceError) -> JSONResponse:
    if isinstance(e, SpecError | InputError):
        return problem(422, str(e), e.path or None)
    if isinstance(e, NotFound):
        return problem(404, str(e))
    if isinstance(e, Conflict):
        return problem(409, str(e))
    if isinstance(e, InfraError):
        return problem(503, str(e))
    return problem(400, str(e))


async def on_headrace_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HeadraceError)
    return from_error(e)


async def on_validation_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    path = ".".join(loc) or None
    return problem(422, f"{path}: {first.get('msg')}" if path else str(first.get("msg")), path)


async def on_http_error(request: Request, e: Exception) -> JSONResponse:
    """The framework's own errors (an unknown route, a method a route does not take)."""
    assert isinstance(e, HTTPException)
    detail = e.detail if isinstance(e.detail, str) else str(e.detail)
    if e.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif e.status_code == 405:
        detail = f"{request.url.path} does not take {request.method}"
    response = problem(e.status_code, detail)
    response.headers.update(e.headers or {})  # 405 says what it takes (Allow)
    return response
