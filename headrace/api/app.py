"""The REST API (FastAPI): workflows, runs, signals, event streams, health and metrics.

`create_app` builds the app around one process (`Backend`): the error handlers, the body
limit, the docs, and the routers of `headrace.api.routes`, one per resource.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from headrace.api import openapi
from headrace.api.backend import Backend
from headrace.api.limits import BodyLimit
from headrace.api.problems import on_headrace_error, on_http_error, on_validation_error
from headrace.api.routes import ROUTERS
from headrace.errors import HeadraceError

__all__ = ["Backend", "create_app"]


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(
        title="headrace",
        version="0.1.0",
        description="Durable workflows: register, run, signal, watch. Every error is "
        "application/problem+json (the Problem schema).",
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId: the function
    )
    app.state.backend = backend  # what the routes' BackendDep returns
    app.add_exception_handler(HeadraceError, on_headrace_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_middleware(BodyLimit, max_bytes=backend.settings.max_body_bytes)
    openapi.install(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
