"""Run an ASGI app on a free loopback port inside the test's event loop (real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

_given: set[int] = set()


def _ephemeral_low() -> int:
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return 32768


def free_port() -> int:
    """A loopback port nobody listens on, for a server started later.

    Chosen below the kernel's ephemeral range: a port the kernel numbers itself (a bind to
    port 0, an outgoing connection) can then never take it before its server binds it.
    """
    low = _ephemeral_low()
    top = low if low > 20_000 else 65_536  # no room below the range: any port will do
    pick = random.SystemRandom()
    while True:
        port = pick.randrange(10_000, top)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port


@contextlib.asynccontextmanager
async def serve(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
