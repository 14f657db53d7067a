"""The API against its OpenAPI document: schemathesis fuzzes a live `headrace dev` and finds
nothing; the document types every answer; the docs pages need no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.testing.servers import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CONFIG = Path(__file__).with_name("schemathesis.toml")
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def test_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    """Every check (schemathesis.toml says which one is off where, and why), a fixed seed
    and a bounded number of examples per operation: about a minute here."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env |= {"HEADRACE_DATABASE_URL": f"sqlite:///{tmp_path}/h.db"}
    env |= {"HEADRACE_TASKS": "headrace.testing.tasks"}
    log = (tmp_path / "dev.log").open("w")
    dev = subprocess.Popen(
        [str(BIN / "headrace"), "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, dev)
        command = [str(BIN / "schemathesis"), "--no-color", "--config-file", str(CONFIG)]
        command += ["run", f"{url}/openapi.json", "--seed", "1", "--max-examples", "20"]
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        dev.terminate()
        dev.wait(timeout=30)
        log.close()
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-20_000:] + (tmp_path / "dev.log").read_text()[-5_000:]
    assert "Tested: 22" in report, report  # every operation of the document
    assert re.search(r"\d+ generated, \d+ passed", report), report


def _wait_healthy(url: str, dev: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert dev.poll() is None, "headrace dev stopped"
        try:
            if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("headrace dev did not answer within 60 s")


async def test_docs_pages_load_their_assets_from_the_server(api: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        r = await api.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        urls = re.findall(r'(?:src|href)="([^"]+)"', r.text) + re.findall(
            r"(?:url|src|href): ?'([^']+)'", r.text
        )
        assert urls, r.text
        assert not [u for u in urls if "//" in u], f"{page} loads from elsewhere: {urls}"
        scripts = [u for u in urls if u.endswith(".js")]
        assert scripts, urls
        for url in urls:
            asset = await api.get(url)
            assert asset.status_code == 200, url
            if url.endswith(".js"):
                assert len(asset.content) > 100_000, url  # the bundle, not a stub


async def test_the_document_types_every_request_and_answer(api: httpx.AsyncClient) -> None:
    doc: dict[str, Any] = (await api.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert {"Problem", "WorkflowSpec", "Run", "MapPage"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            for status, answer in operation["responses"].items():
                content = answer.get("content")
                assert content, (where, status)
                for media_type, body in content.items():
                    assert body.get("schema"), (where, status, media_type)  # never `{}`
                if status.startswith(("4", "5")):
                    assert content == {"application/problem+json": {"schema": PROBLEM_REF}}
            if method in ("post", "put") and not path.endswith("/cancel"):
                assert operation.get("requestBody", {}).get("content"), where
    register = doc["paths"]["/v1/workflows"]["post"]
    assert set(register["requestBody"]["content"]) == {"application/yaml", "application/json"}
    assert {"400", "409", "413", "422"} <= set(register["responses"])
    start = doc["paths"]["/v1/runs"]["post"]["responses"]
    assert {"200", "201", "404", "413", "415", "422"} <= set(start)
    node = doc["paths"]["/v1/runs/{run_id}/nodes/{node_id}"]["get"]["responses"]["200"]
    refs = str(node["content"]["application/json"]["schema"])
    assert "MapPage" in refs and "NodeAnswer" in refs
    assert "output" not in schemas["MapPage"]["properties"]
