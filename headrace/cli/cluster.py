"""`headrace cluster up`: a local cluster for a newcomer — api, coordinators, workers and a
relay as separate `headrace serve` processes (plus the monitor and the shadow validator
with the migrating bus), their output prefixed, stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def plan(coordinators: int, workers: int, migrating: bool = False) -> list[tuple[str, list[str]]]:
    """(name, serve arguments) of every process."""
    procs = [("api", ["api"])]
    procs += [(f"coordinator-{i}", ["coordinator"]) for i in range(1, coordinators + 1)]
    procs += [(f"worker-{i}", ["worker"]) for i in range(1, workers + 1)]
    procs.append(("relay", ["relay"]))
    if migrating:
        procs += [("monitor", ["monitor"]), ("shadow", ["shadow"])]
    return procs


async def _pipe(name: str, stream: asyncio.StreamReader) -> None:
    width = 14
    async for line in stream:
        sys.stdout.write(f"{name:<{width}}| {line.decode(errors='replace')}")
        sys.stdout.flush()


async def up(
    port: int, coordinators: int, workers: int, extra: Sequence[str], migrating: bool = False
) -> int:
    """Start the processes; on SIGINT/SIGTERM stop them all (SIGTERM: graceful)."""
    exe = str(Path(sys.executable).parent / "headrace")
    children: list[asyncio.subprocess.Process] = []
    pipes = []
    for name, args in plan(coordinators, workers, migrating):
        argv = [exe, "serve", *args, *extra]
        if args == ["api"]:
            argv += ["--port", str(port)]
        env = {**os.environ, "HEADRACE_PROCESS_NAME": name}
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert proc.stdout is not None
        children.append(proc)
        pipes.append(asyncio.create_task(_pipe(name, proc.stdout)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exits = [asyncio.create_task(p.wait()) for p in children]
    first_exit = asyncio.create_task(asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED))
    await asyncio.wait(
        [first_exit, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    for proc in children:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*exits)
    await asyncio.gather(*pipes, return_exceptions=True)
    return 0 if stop.is_set() and all(c == 0 for c in codes) else 1
