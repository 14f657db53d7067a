"""One heavy request must not freeze `headrace dev` (API, coordinator and worker share its
event loop): while a 20,000-node workflow is registered and started, while 900 KB of inputs
are checked against their schema, and while a pattern meets its catastrophic input, a real
`headrace dev` process keeps answering /healthz. Each slow case took seconds to minutes of
one blocked loop before; the ceiling on a health check is generous (it catches a block)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.testing.servers import free_port

pytestmark = pytest.mark.integration

HEADRACE = Path(sys.executable).parent / "headrace"
HEALTH_CEILING_S = 1.0
REQUEST_TIMEOUT_S = 300.0
NOOP = "headrace.testing.tasks.noop"


def chain_yaml(n: int) -> str:
    lines = ["name: big", "version: 1", "nodes:", f"  n0: {{task: {NOOP}}}"]
    lines += [f"  n{i}: {{task: {NOOP}, needs: [n{i - 1}]}}" for i in range(1, n)]
    return "\n".join(lines) + "\n"


ITEMS = """
name: items
version: 1
inputs:
  items:
    type: array
    items:
      type: object
      properties: {sku: {type: string, pattern: "^[A-Z]+-[0-9]+$"}, qty: {type: integer}}
      required: [sku, qty]
  code: {type: string, pattern: "^(a+)+$", default: a}
nodes:
  a: {task: headrace.testing.tasks.noop}
"""


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `headrace dev` process on its own SQLite file; yields its URL."""
    tmp = tmp_path_factory.mktemp("dev")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env["HEADRACE_DATABASE_URL"] = f"sqlite:///{tmp}/h.db"
    env["HEADRACE_MAX_BODY_BYTES"] = str(4 * 1024 * 1024)
    log = tmp / "dev.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(HEADRACE), "dev", "--port", str(port), "--tasks", "headrace.testing.tasks"],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def while_polling_health(
    url: str, request: Callable[[httpx.Client], httpx.Response]
) -> tuple[httpx.Response, list[float]]:
    """Send `request` on a thread and time /healthz until it is answered: (answer, latencies
    of the health checks sent while it was in flight)."""
    answer: list[Any] = []

    def send() -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            try:
                answer.append(request(client))
            except Exception as e:  # reported below
                answer.append(e)

    thread = threading.Thread(target=send)
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as health:
        thread.start()
        time.sleep(0.05)  # the request is on its way
        while thread.is_alive():
            began = time.monotonic()
            assert health.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - began)
            time.sleep(0.02)
    thread.join()
    assert isinstance(answer[0], httpx.Response), answer[0]
    return answer[0], latencies


def test_registering_and_starting_a_20000_node_workflow(dev: str) -> None:
    text = chain_yaml(20_000)
    assert len(text) > 1_000_000
    r, latencies = while_polling_health(dev, lambda c: c.post("/v1/workflows", content=text))
    assert r.status_code == 201, r.text
    assert len(latencies) >= 3, latencies  # it took a while: the loop served meanwhile
    assert max(latencies) < HEALTH_CEILING_S, latencies
    r, latencies = while_polling_health(
        dev, lambda c: c.post("/v1/runs", json={"workflow_tag": "big"})
    )
    assert r.status_code == 201, r.text
    assert max(latencies, default=0) < HEALTH_CEILING_S, latencies
    httpx.post(f"{dev}/v1/runs/{r.json()['run_id']}/cancel", trust_env=False, timeout=60)


def test_checking_900_kb_of_inputs(dev: str) -> None:
    assert httpx.post(f"{dev}/v1/workflows", content=ITEMS, trust_env=False).status_code == 201
    items = [{"sku": f"AB-{i}", "qty": i} for i in range(30_000)]
    items[-1]["sku"] = "ab-1"  # the last one is wrong: every item is checked
    body = {"workflow_tag": "items", "inputs": {"items": items}}
    r, latencies = while_polling_health(dev, lambda c: c.post("/v1/runs", json=body))
    assert r.status_code == 422 and r.json()["path"] == "inputs.items.29999.sku", r.text
    assert max(latencies, default=0) < HEALTH_CEILING_S, latencies


def test_a_catastrophic_pattern(dev: str) -> None:
    httpx.post(f"{dev}/v1/workflows", content=ITEMS, trust_env=False)
    body = {"workflow_tag": "items", "inputs": {"items": [], "code": "a" * 28 + "!"}}
    r, latencies = while_polling_health(dev, lambda c: c.post("/v1/runs", json=body))
    assert r.status_code == 422 and r.json()["path"] == "inputs.code", r.text
    assert max(latencies, default=0) < HEALTH_CEILING_S, latencies
