"""`headrace serve ROLE...`: one cluster process. Its roles' loops, the API when asked, and a
health server (`/healthz`, `/readyz`, `/metrics`) on `--health-port` (0 = a free port).

SIGTERM or SIGINT stops it gracefully: the API stops accepting, the worker stops taking jobs
and gives running ones `shutdown_grace_s` to finish (what is still running after that is not
acknowledged, so the bus hands it to another worker), then the loops stop and the adapters
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from headrace.config import Settings
from headrace.services.runtime import Runtime

log = logging.getLogger(__name__)


def _server(app: Any, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    return server


def health_app(rt: Runtime) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        dead = [loop.name for loop in rt.loops if loop.failures and loop.last_error]
        return JSONResponse({"status": "ok", "roles": list(rt.roles), "restarted_loops": dead})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await rt.store.next_timer_at()
        except Exception as e:  # not ready: say why
            return JSONResponse({"status": "unavailable", "reason": str(e)}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def serve(
    settings: Settings,
    roles: tuple[str, ...],
    *,
    host: str,
    port: int,
    health_port: int,
    announce: Any = print,
) -> None:
    """Run `roles` until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health_port = health_port or free_port(host)
    async with Runtime(settings, roles) as rt:
        servers = [_server(health_app(rt), host, health_port)]
        if "api" in roles:
            from headrace.api.app import create_app

            servers.append(_server(create_app(rt), host, port))
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        announce(
            f"headrace serve {' '.join(roles)}: health on http://{host}:{health_port}"
            + (f", API on http://{host}:{port}" if "api" in roles else "")
        )
        await stop.wait()
        log.info("stopping: %s", " ".join(roles))
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        if "worker" in roles:
            await rt.worker.drain(settings.shutdown_grace_s)
