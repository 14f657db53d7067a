"""What the API needs from the process it runs in, and how a route reaches it.

`create_app` keeps the process on `app.state.backend`; a route takes a `BackendDep`
parameter (a FastAPI dependency), so routes are plain functions of a router rather than
closures over the process.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import Depends
from starlette.requests import HTTPConnection

from headrace.clock import Clock
from headrace.config import Settings
from headrace.flags import FlagWatcher
from headrace.migration.steps import Migration
from headrace.runtime.driver import Driver
from headrace.runtime.hub import Hub
from headrace.runtime.metrics import Metrics
from headrace.spec import Plan, WorkflowIR
from headrace.store import Store, WorkflowRecord


class Backend(Protocol):
    """What the API needs from the process it runs in."""

    settings: Settings
    clock: Clock
    store: Store
    driver: Driver
    hub: Hub
    metrics: Metrics
    flags: FlagWatcher
    migration: Migration

    async def register(self, ir: WorkflowIR, source: str) -> tuple[WorkflowRecord, bool]: ...

    async def start_or_reuse(
        self,
        plan: Plan,
        inputs: dict[str, Any],
        idempotency_key: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> tuple[str, bool]: ...

    async def plan(self, tag: str) -> Plan: ...


async def _backend(connection: HTTPConnection) -> Backend:
    # async: FastAPI runs a plain `def` dependency on a worker thread, a hop per request.
    # HTTPConnection, not Request: the WebSocket route asks for it too.
    backend: Backend = connection.app.state.backend
    return backend


BackendDep = Annotated[Backend, Depends(_backend)]
