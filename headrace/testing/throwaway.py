"""Throwaway Redis and Postgres servers from the installed binaries, on free loopback ports:
for restart drills, and for `make test` on a machine where no server answers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from headrace.testing.servers import free_port


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian layout)."""
    return Path("/usr/lib/postgresql") / sorted(os.listdir("/usr/lib/postgresql"))[-1] / "bin"


class ThrowawayRedis:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis  # a dev dependency, not the package's

        with (self.dir / "redis-server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    str(self.dir),
                    "--save",
                    "",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.RedisError:
                    pass
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class ThrowawayPostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="headrace-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.dir = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> None:
        self._as_postgres("mkdir", "-p", str(self.dir))
        self._as_postgres(
            str(pg_bin() / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres"
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            str(pg_bin() / "pg_ctl"),
            "-D",
            str(self.dir),
            "-o",
            opts,
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "start",
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=1):
                    return
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "postgres did not accept connections"
                time.sleep(0.1)

    def stop(self) -> None:
        self._as_postgres(str(pg_bin() / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "stop")

    def remove(self) -> None:
        try:
            if (self.dir / "postmaster.pid").exists():
                self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
