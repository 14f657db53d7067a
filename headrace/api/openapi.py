"""The OpenAPI document's details the framework cannot infer, and the interactive docs served
from the package (Swagger UI and ReDoc from `fastapi-offline`'s copies: no CDN, so `/docs`
works offline)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic.config import JsonDict

from headrace.api.problems import PROBLEM
from headrace.api.schemas import Problem, WorkflowSpec
from headrace.events import Event

ASSETS = "/docs/assets"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_WHY = {
    400: "the body cannot be read (not UTF-8)",
    404: "an unknown workflow tag, run id, node id or flag",
    409: "the request contradicts what is stored",
    413: "the body is over HEADRACE_MAX_BODY_BYTES",
    415: "the body is not sent as application/json",
    422: "a field is invalid: `path` names it",
    503: "the store or the bus cannot be reached",
}
BODY = (413, 415, 422)  # what any JSON body may be answered with


def answers(ok: dict[int, Any], *problems: int, store: bool = True) -> dict[int | str, Any]:
    """FastAPI `responses`: the models of the success statuses, then each problem status
    (plus 503 where the store is read) as application/problem+json."""
    out: dict[int | str, Any] = {status: {"model": model} for status, model in ok.items()}
    for status in sorted({*problems, *([503] if store else [])}):
        out[status] = {"description": _WHY[status], "content": {PROBLEM: {"schema": _PROBLEM_REF}}}
    return out


def doc(ok: dict[int, Any], *problems: int, store: bool = True) -> dict[str, Any]:
    """A route's documentation: its answers, described by the models (which the route does
    not validate against: it builds its answer with `views`)."""
    return {"response_model": None, "responses": answers(ok, *problems, store=store)}


def text(
    media_type: str, description: str, *problems: int, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A route whose 200 is text, not JSON (metrics; event streams, `schema` per event)."""
    content = {media_type: {"schema": schema or {"type": "string"}}}
    responses: dict[int | str, Any] = {200: {"description": description, "content": content}}
    if problems:
        responses |= answers({}, *problems)
    return {"response_model": None, "response_class": Response, "responses": responses}


SSE_EVENT = {
    "type": "object",
    "description": "one stored event of the run (the stream ends after RunCompleted, "
    "RunFailed or RunCancelled; `: keep-alive` comments come while nothing happens)",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "its sequence number"},
        "event": {"type": "string", "enum": [t.__name__ for t in get_args(Event)]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def only_string(pattern: str) -> Callable[[JsonDict], None]:
    """A header's schema as the string it is on the wire (no `null` alternative)."""

    def edit(schema: JsonDict) -> None:
        schema.pop("anyOf", None)
        schema.update(type="string", pattern=pattern)

    return edit


def string_list(pattern: str, max_items: int) -> Callable[[JsonDict], None]:
    """A repeatable query parameter's schema: at most `max_items` strings of `pattern`."""

    def edit(schema: JsonDict) -> None:
        schema.pop("anyOf", None)
        items: JsonDict = {"type": "string", "pattern": pattern}
        schema.update(type="array", maxItems=max_items, items=items)

    return edit


EXAMPLE_WORKFLOW = {
    "name": "greet",
    "version": 1,
    "inputs": {"name": {"type": "string"}},
    "nodes": {"hello": {"task": "greetings.hello", "with": {"name": "${{ inputs.name }}"}}},
    "outputs": {"text": "${{ nodes.hello.output.text }}"},
}
WORKFLOW_BODY = {
    "requestBody": {
        "required": True,
        "description": "the workflow as YAML or JSON (README: the workflow format)",
        "content": {
            "application/yaml": {"schema": {"$ref": "#/components/schemas/WorkflowSpec"}},
            "application/json": {
                "schema": {"$ref": "#/components/schemas/WorkflowSpec"},
                "example": EXAMPLE_WORKFLOW,
            },
        },
    }
}


def install(app: FastAPI) -> None:
    """Serve /docs and /redoc from the package, and complete the document: the Problem and
    WorkflowSpec schemas the answers and the raw workflow body refer to."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _complete(build())
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _complete(doc: dict[str, Any]) -> None:
    """Add the schemas referred to by hand; drop the framework's own 422 (HTTPValidationError,
    which this API never answers: its 422 is a Problem, listed where it can happen)."""
    for operations in doc["paths"].values():
        for operation in operations.values():
            answer = operation["responses"].get("422", {})
            if "HTTPValidationError" in str(answer.get("content", "")):
                del operation["responses"]["422"]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    for model in (Problem, WorkflowSpec):
        schemas[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
