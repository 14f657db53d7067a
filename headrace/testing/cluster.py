"""A cluster of `headrace serve` processes on real Postgres and Redis (or Kafka), for crash
tests: api, 2 coordinators, 2 workers and a relay, each logging to its own file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from headrace.store.postgres import PostgresStore
from headrace.testing.replay import replay_diff
from headrace.testing.servers import free_port

if TYPE_CHECKING:
    import redis

HEADRACE = str(Path(sys.executable).parent / "headrace")
ROLES = {
    "api": "api",
    "coordinator-1": "coordinator",
    "coordinator-2": "coordinator",
    "worker-1": "worker",
    "worker-2": "worker",
    "relay": "relay",
}


class ProcessCluster:
    def __init__(
        self,
        tmp: Path,
        db_url: str,
        bus_url: str,
        prefix: str,
        roles: dict[str, str] | None = None,
        **env: str,
    ) -> None:
        """`bus_url`: HEADRACE_BUS (redis:// or kafka://); `roles`: process name -> role
        (default: ROLES); `env`: more variables for all."""
        self.tmp = tmp
        self.roles = roles or ROLES
        self.env = {
            **os.environ,
            "HEADRACE_DATABASE_URL": db_url,
            "HEADRACE_BUS": bus_url,
            "HEADRACE_BUS_PREFIX": prefix,
            "HEADRACE_TASKS": "headrace.testing.tasks",
            "HEADRACE_LEASE_S": "2",
            "HEADRACE_HEARTBEAT_S": "0.5",
            **env,
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.old: list[subprocess.Popen[bytes]] = []  # replaced by a restart
        self.hung: list[str] = []  # processes SIGTERM did not stop

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start (or restart) process `name` as `headrace serve ARGS`."""
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [HEADRACE, "serve", *args],
                env={**self.env, "HEADRACE_PROCESS_NAME": name, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if name in self.procs:
            self.old.append(self.procs[name])
        self.procs[name] = proc
        return proc

    def start_api(self) -> None:
        self.start("api", "api", "--port", str(self.port))
        self.wait_healthy()

    def up(self, env: dict[str, dict[str, str]] | None = None) -> None:
        """Every process; `env` adds variables to some of them, by name."""
        for name, role in self.roles.items():
            extra = ["--port", str(self.port)] if role == "api" else []
            self.start(name, role, *extra, **(env or {}).get(name, {}))
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"the API did not start: {self.logs()}")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def assert_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"processes exited: {dead}\n{self.logs()}"

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log")
        )

    def redis(self) -> redis.Redis:
        import redis  # a dev dependency, not the package's

        return redis.Redis.from_url(self.env["HEADRACE_BUS"])

    def key(self, topic: str) -> str:
        return self.env["HEADRACE_BUS_PREFIX"] + topic

    def down(self) -> None:
        """SIGTERM everything; SIGKILL what has not stopped 20 s later (noted in `hung`)."""
        procs = [*self.procs.items(), *((f"old {p.pid}", p) for p in self.old)]
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                self.hung.append(name)
                proc.kill()
                proc.wait(10)


def run_status(client: httpx.Client, run_id: str) -> str | None:
    """The run's status through the API; None while the API does not answer."""
    try:
        r = client.get(f"/v1/runs/{run_id}")
    except httpx.HTTPError:
        return None
    return r.json().get("status") if r.status_code == 200 else None


def wait_all(
    client: httpx.Client, run_ids: list[str], cluster: ProcessCluster, timeout_s: float = 90
) -> None:
    """Until every run ended (fails after `timeout_s`, with the processes' logs)."""
    deadline = time.monotonic() + timeout_s
    for run_id in run_ids:
        while run_status(client, run_id) not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"run {run_id} did not end\n{cluster.logs()}"
            time.sleep(0.1)


async def check_runs(db_url: str, run_ids: list[str], outputs: dict[str, object]) -> None:
    """Every run completed with `outputs`, and its events replay to its stored state."""
    store = PostgresStore(db_url)
    await store.open()
    try:
        for run_id in run_ids:
            record = await store.get_run_record(run_id)
            assert record.status == "completed", (run_id, record.error)
            assert record.outputs == outputs, (run_id, record.outputs)
            assert await replay_diff(store, run_id) == {}, run_id
    finally:
        await store.close()
