"""Errors as application/problem+json (RFC 9457), with the field path where there is one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from headrace.errors import Conflict, HeadraceError, InfraError, InputError, NotFound, SpecError

PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}


class ProblemResponse(JSONResponse):
    """problem+json, escaped to ASCII: a detail may quote what the client sent, lone
    surrogates included, which UTF-8 cannot carry."""

    media_type = PROBLEM

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


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
    return ProblemResponse(body, status_code=status)


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
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return problem(422, _json_error(e.body, loc[-1], first.get("ctx", {}).get("error")))
    if loc == ("body",):  # the body as a whole: not JSON, absent, or not an object
        return _body_problem(request, first.get("type"))
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    path = ".".join(parts) or None
    return problem(422, f"{path}: {first.get('msg')}" if path else str(first.get("msg")), path)


def _json_error(doc: Any, pos: Any, why: Any) -> str:
    """Where the body stops being JSON, as line and column (1-based) rather than an offset."""
    text = doc if isinstance(doc, str) else ""
    at = pos if isinstance(pos, int) else 0
    line = text.count("\n", 0, at) + 1
    column = at - text.rfind("\n", 0, at)
    return f"the body is not valid JSON: {why or 'cannot parse'} at line {line}, column {column}"


def _body_problem(request: Request, kind: Any) -> JSONResponse:
    if kind == "missing":
        return problem(422, "the body is empty: send a JSON object")
    content_type = request.headers.get("content-type")
    if content_type is None or not is_json(content_type):
        got = f"got {content_type!r}" if content_type else "it had no Content-Type"
        return problem(415, f"send the body as JSON with Content-Type: application/json ({got})")
    return problem(422, "the body must be a JSON object")


def is_json(content_type: str) -> bool:
    """application/json, or any application/*+json (as the framework parses them)."""
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


async def on_http_error(request: Request, e: Exception) -> JSONResponse:
    """The framework's own errors (an unknown route, a method a route does not take)."""
    assert isinstance(e, HTTPException)
    detail = e.detail if isinstance(e.detail, str) else str(e.detail)
    if e.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif e.status_code == 400 and isinstance(e.__cause__, ValueError):  # as other bad JSON
        return problem(422, f"the body is not valid JSON: it is not UTF-8 text ({e.__cause__})")
    elif e.status_code == 405:
        allow = ", ".join(allowed_methods(request))
        response = problem(405, f"{request.url.path} does not take {request.method}")
        response.headers["Allow"] = allow
        return response
    response = problem(e.status_code, detail)
    response.headers.update(e.headers or {})
    return response


def allowed_methods(request: Request) -> list[str]:
    """Every method the routes of this path take (the framework's 405 names only the first
    matching route's, and a path is often several routes: GET and POST /v1/workflows)."""
    methods: set[str] = set()
    for route in _every_route(request.app.router.routes):
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _every_route(routes: Iterable[Any]) -> Iterator[Any]:
    """The routes, those of included routers among them: FastAPI (since 0.16x) keeps an
    included router as one route that holds it (`original_router`), not as its routes."""
    for route in routes:
        router = getattr(route, "original_router", None)
        if router is None:
            yield route
        else:
            yield from _every_route(router.routes)
