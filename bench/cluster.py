"""The cluster shape of the bench (`WORKERS=N`, with BACKEND=postgres+redis): `COORDINATORS`
(default 1) `headrace serve coordinator` and N `headrace serve worker` processes, each on its own
health port; the bench process itself only starts runs and reads them (role `api`).

Each process's peak resident memory (VmHWM) is read from /proc before it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from headrace.config import Settings
from headrace.testing.servers import free_port

HEADRACE = str(Path(sys.executable).parent / "headrace")


def coordinators() -> int:
    return int(os.environ.get("COORDINATORS", "1"))


def workers() -> int:
    """0: every role in the bench process (Embedded), else that many worker processes."""
    return int(os.environ.get("WORKERS", "0"))


@contextmanager
def processes(settings: Settings, n_workers: int, peaks: dict[str, float]) -> Iterator[None]:
    """The coordinator and `n_workers` workers, ready; `peaks` gets their peak RSS in MB."""
    env = {
        **os.environ,
        "HEADRACE_DATABASE_URL": settings.database_url,
        "HEADRACE_BUS": settings.bus,
        "HEADRACE_BUS_PREFIX": settings.bus_prefix,
        "HEADRACE_TASKS": settings.tasks,
        **({"HEADRACE_KAFKA_URL": settings.kafka_url} if settings.kafka_url else {}),
    }
    names = [f"coordinator-{i + 1}" for i in range(coordinators())]
    names += [f"worker-{i + 1}" for i in range(n_workers)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in names:
            port = free_port()
            role = name.partition("-")[0]
            procs[name] = subprocess.Popen(
                [HEADRACE, "serve", role, "--health-port", str(port)],
                env={**env, "HEADRACE_PROCESS_NAME": name},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_ready(port, procs[name])
        yield
        for name, proc in procs.items():
            peaks[name] = _peak_mb(proc.pid)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a bench process exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit("a bench process did not get ready in 60 s")


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0
