"""`headrace dev-broker` as the README runs it: the bundled broker on a loopback port says
where it is and where its binary is, takes and serves messages, refuses a port in use, and
stops on SIGTERM or SIGINT (Ctrl-C)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from headrace.testing.kafka import tansu_binary
from headrace.testing.servers import free_port

pytestmark = pytest.mark.integration

HEADRACE = str(Path(sys.executable).parent / "headrace")
TIMEOUT_S = 60.0


def start(port: int) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """The broker, its stderr lines as they come, and the thread reading them."""
    proc = subprocess.Popen(
        [HEADRACE, "dev-broker", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not any("headrace dev-broker:" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, lines
        time.sleep(0.05)
    return proc, lines, reader


def round_trip(bootstrap: str) -> list[bytes]:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(TIMEOUT_S)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        producer.produce(topic, f"m{i}".encode())
    assert producer.flush(TIMEOUT_S) == 0
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(got) < 3 and time.monotonic() < deadline:
            got += [m.value() or b"" for m in consumer.consume(10, 0.5) if not m.error()]
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_dev_broker_serves_kafka_on_loopback_and_stops(stop: signal.Signals) -> None:
    port = free_port()
    proc, lines, reader = start(port)
    try:
        said = lines[0]
        assert f"Kafka protocol on 127.0.0.1:{port}" in said, said
        assert f"HEADRACE_KAFKA_URL=kafka://127.0.0.1:{port}" in said, said
        assert f"the broker is tansu, at {tansu_binary()}" in said, said
        assert round_trip(f"127.0.0.1:{port}") == [b"m0", b"m1", b"m2"]

        again = subprocess.run(
            [HEADRACE, "dev-broker", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert again.returncode == 2, again
        assert f"--port: cannot listen on 127.0.0.1:{port}" in again.stderr, again
    finally:
        proc.send_signal(stop)
        code = proc.wait(TIMEOUT_S)
        reader.join(TIMEOUT_S)
        assert proc.stderr is not None
        proc.stderr.close()
    assert code == 0, lines
    with socket.socket() as sock:  # the broker is gone with it
        sock.bind(("127.0.0.1", port))
