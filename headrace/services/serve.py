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
from headrace.errors import InputError
from headrace.services.runtime import Runtime

log = logging.getLogger(__name__)


def listen(host: str, port: int, option: str) -> socket.socket:
    """A socket bound to host:port now (0: a port the kernel picks), before anything starts
    or is announced: a port in use is a clear error on `option`, and port 0 is never handed
    to another process between its choice and its use."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(option, f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


# An idle connection is kept longer than clients keep theirs (httpx: 5 s, most pools less
# than a minute), so a client never sends on a connection the server is closing (at
# uvicorn's default of 5 s the two timers raced: a ReadError now and then).
KEEP_ALIVE_S = 75


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S
    )
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
    # The API's port first: a health port of 0 can then never be the API's own.
    api_sock = listen(host, port, "--port") if "api" in roles else None
    health_sock = listen(host, health_port, "--health-port")
    async with Runtime(settings, roles) as rt:
        sockets = {health_sock: _server(health_app(rt))}
        if api_sock is not None:
            from headrace.api.app import create_app

            sockets[api_sock] = _server(create_app(rt))
        tasks = [asyncio.create_task(s.serve(sockets=[sock])) for sock, s in sockets.items()]
        announce(
            f"headrace serve {' '.join(roles)}: health on http://{host}:{bound_port(health_sock)}"
            + (f", API on http://{host}:{bound_port(api_sock)}" if api_sock else "")
        )
        await stop.wait()
        log.info("stopping: %s", " ".join(roles))
        for server in sockets.values():
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        if "worker" in roles:
            await rt.worker.drain(settings.shutdown_grace_s)
