"""The `headrace` command end to end: real processes, each on its own SQLite file.

Every command runs as a subprocess with a timeout, so a hang fails the test instead of the
suite. Commands that do not depend on each other run concurrently to keep the file fast.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from headrace.store.listing import RunFilter
from headrace.store.sqlite import SqliteStore
from headrace.testing.servers import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HEADRACE = Path(sys.executable).parent / "headrace"
TIMEOUT_S = 60.0

NODES = ["validate", "price", "total", "fraud_check", "approve", "ship"]

PERMANENT = """
name: permanent
version: 1
nodes:
  a:
    task: headrace.testing.tasks.permanent
    with: {message: gone for good}
"""

BROKEN_YAML = """name: broken
version: 1
nodes:
  a:
    task: headrace.testing.tasks.noop
    with: {x: [1, 2}
"""

CYCLE = """
name: cycle
version: 1
nodes:
  a: {task: headrace.testing.tasks.noop, needs: [b]}
  b: {task: headrace.testing.tasks.noop, needs: [a]}
"""

NUMBER = """
name: number
version: 1
inputs:
  n: {type: number}
nodes:
  a: {task: headrace.testing.tasks.add, with: {a: "${{ inputs.n }}", b: 1}}
outputs:
  sum: "${{ nodes.a.output.sum }}"
"""


@dataclass
class Result:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"headrace {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bytecode cache shared by the commands of this module, outside the repository.

    Without it (PYTHONDONTWRITEBYTECODE, or a read-only tree) every command compiles its
    imports again: seconds per command instead of well under one."""
    prefix = tmp_path_factory.mktemp("pycache")
    env = {**_inherited(), "PYTHONPYCACHEPREFIX": str(prefix)}
    modules = (
        "headrace.cli, headrace.api.app, headrace.testing.tasks, typer.rich_utils, uvicorn.main"
    )
    warm = [sys.executable, "-c", f"import {modules}"]
    subprocess.run(warm, env=env, check=True, timeout=TIMEOUT_S, capture_output=True)
    return prefix


def _inherited() -> dict[str, str]:
    """The test's environment without what would change how a command behaves."""
    drop = ("HEADRACE_", "FORCE_COLOR", "TTY_", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def make_env(tmp: Path, pycache: Path, *, shop: bool = False, **headrace: str) -> dict[str, str]:
    """The environment of a command: nothing inherited from HEADRACE_*, a database in `tmp`,
    and `examples/` importable when the example's `shop` tasks are needed."""
    env = _inherited()
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["HEADRACE_DATABASE_URL"] = f"sqlite:///{tmp}/h.db"
    env.update({f"HEADRACE_{k.upper()}": v for k, v in headrace.items()})
    if shop:
        env["PYTHONPATH"] = str(EXAMPLES)
    return env


def spawn(args: Sequence[str], *, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(HEADRACE), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], args: Sequence[str]) -> Result:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"headrace {' '.join(args)} hung for {TIMEOUT_S}s\n{out}\n{err}")
    return Result(args, proc.returncode, out, err)


def cli(*args: str, env: dict[str, str], cwd: Path) -> Result:
    return finish(spawn(args, env=env, cwd=cwd), args)


def cli_many(commands: Sequence[Sequence[str]], *, env: dict[str, str], cwd: Path) -> list[Result]:
    """Run independent commands at the same time; results in the order given."""
    procs = [spawn(args, env=env, cwd=cwd) for args in commands]
    return [finish(p, args) for p, args in zip(procs, commands, strict=True)]


def clean_error(r: Result, code: int = 2) -> str:
    """Assert a failure by exit code with a message on stderr and no traceback."""
    assert r.returncode == code, r
    assert r.stderr.startswith("error: "), r
    assert "Traceback" not in r.stderr, r
    return " ".join(r.stderr.split())


# --- headrace run -----------------------------------------------------------------------


def test_run_small_order_json(tmp_path: Path, pycache: Path) -> None:
    args = [
        "run",
        "examples/order-fulfilment.yaml",
        "--tasks",
        "shop",
        "-i",
        "order_id=A-1",
        "--input-file",
        "examples/small-order.json",
        "--json",
    ]
    r = cli(*args, env=make_env(tmp_path, pycache, shop=True), cwd=REPO)
    assert r.returncode == 0, r
    summary = r.json()  # the whole of stdout is one JSON document
    assert isinstance(summary, dict), r
    assert set(summary) == {"run_id", "status", "outputs", "nodes"}, r
    run_id = summary["run_id"]
    assert str(uuid.UUID(run_id)) == run_id
    assert summary["status"] == "completed"

    outputs = summary["outputs"]
    assert outputs["amount"] == 18.0
    assert outputs["shipment"]["carrier"] == "parcel-post"
    assert outputs["shipment"]["tracking"] == f"PP-{run_id[:8]}"

    nodes = summary["nodes"]
    assert set(nodes) == set(NODES)
    for node_id, node in nodes.items():
        assert isinstance(node["status"], str), node_id
        assert isinstance(node["attempts"], int), node_id
    for skipped in ("fraud_check", "approve"):  # 18.0 is under both thresholds
        assert nodes[skipped]["status"] == "skipped"
        assert nodes[skipped]["output"] is None
        assert nodes[skipped]["attempts"] == 0
    for done in ("validate", "price", "total", "ship"):
        assert nodes[done]["status"] == "completed", done
        assert nodes[done]["attempts"] == 1, done
    assert nodes["validate"]["output"] == {"order_id": "A-1", "valid": True}
    assert nodes["price"]["output"] == [
        {"sku": "apple", "qty": 3, "amount": 3.6},
        {"sku": "pear", "qty": 2, "amount": 1.9},
        {"sku": "cable", "qty": 1, "amount": 12.5},
    ]
    assert nodes["price"]["children"] == {"total": 3, "completed": 3}
    assert nodes["total"]["output"] == {"amount": 18.0}
    assert nodes["ship"]["output"] == outputs["shipment"]
    assert (tmp_path / "h.db").exists()


def test_run_prints_progress_lines_without_a_terminal(tmp_path: Path, pycache: Path) -> None:
    r = cli(
        "run",
        "examples/order-fulfilment.yaml",
        "--tasks",
        "shop",
        "-i",
        "order_id=A-1",
        "--input-file",
        "examples/small-order.json",
        env=make_env(tmp_path, pycache, shop=True),
        cwd=REPO,
    )
    assert r.returncode == 0, r
    assert "\x1b[" not in r.stdout, "no terminal codes when stdout is not a TTY"
    lines = r.stdout.splitlines()
    header = re.fullmatch(r"run ([0-9a-f-]{36}) of order-fulfilment@1", lines[0])
    assert header, r
    for line in [
        "validate: completed",
        "price: completed",
        "total: completed",
        "fraud_check: skipped",
        "approve: skipped",
        "ship: completed",
    ]:
        assert line in lines, f"{line!r} missing\n{r}"
    # progress comes in the order things happen
    assert lines.index("validate: completed") < lines.index("price: completed")
    assert lines.index("total: completed") < lines.index("ship: completed")
    # then the status, then the outputs as JSON
    start = lines.index("{")
    assert lines[start - 1] == "completed", r
    outputs = json.loads("\n".join(lines[start:]))
    assert outputs["amount"] == 18.0
    assert outputs["shipment"]["tracking"] == f"PP-{header.group(1)[:8]}"


def test_run_exit_codes_and_messages(tmp_path: Path, pycache: Path) -> None:
    (tmp_path / "permanent.yaml").write_text(PERMANENT)
    (tmp_path / "broken.yaml").write_text(BROKEN_YAML)
    (tmp_path / "cycle.yaml").write_text(CYCLE)
    (tmp_path / "number.yaml").write_text(NUMBER)
    tasks = ["--tasks", "headrace.testing.tasks"]
    failed, broken, cycle, wrong_type, missing, no_module = cli_many(
        [
            ["run", "permanent.yaml", *tasks, "--json"],
            ["run", "broken.yaml", *tasks],
            ["run", "cycle.yaml", *tasks],
            ["run", "number.yaml", *tasks, "-i", "n=abc"],
            ["run", "no-such-file.yaml", *tasks],
            ["run", "number.yaml", "--tasks", "no_such_module_xyz", "-i", "n=1"],
        ],
        env=make_env(tmp_path, pycache),
        cwd=tmp_path,
    )

    # a task that fails for good: the run fails, exit 1, the node carries the error
    assert failed.returncode == 1, failed
    summary = failed.json()
    assert summary["status"] == "failed"
    assert summary["outputs"] is None
    node = summary["nodes"]["a"]
    assert node["status"] == "failed" and node["attempts"] == 1, node
    assert node["error"] == {"type": "permanent", "message": "gone for good", "retryable": False}
    assert "output" not in node
    assert summary["error"]["type"] == "permanent"
    assert summary["error"]["retryable"] is False
    assert "gone for good" in summary["error"]["message"]

    # bad input: exit 2, nothing on stdout, one line on stderr naming what is wrong
    for r in (broken, cycle, wrong_type, missing, no_module):
        assert r.stdout == "", r
    message = clean_error(broken)
    assert "YAML" in message and "line 6" in message, broken
    message = clean_error(cycle)
    assert re.search(r"nodes\.[ab]\.needs", message) and "cycle" in message, cycle
    message = clean_error(wrong_type)
    assert "inputs.n" in message and "abc" in message, wrong_type
    message = clean_error(missing)
    assert "no-such-file.yaml" in message, missing
    message = clean_error(no_module)
    assert "no_such_module_xyz" in message, no_module


# --- headrace dev and the API commands ----------------------------------------------------


@contextmanager
def server(
    argv: Sequence[str], *, env: dict[str, str], log: Path, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, up once `ready_url` answers 200; stopped on the way out."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
        try:
            wait_ready(proc, ready_url, log)
            yield proc
        finally:
            stop(proc)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{proc.args!r} not ready after {TIMEOUT_S}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM, then SIGKILL after 5 s; returns how long it took to exit."""
    began = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return time.monotonic() - began


class LineReader:
    """Collects a process's stdout lines in a thread, so a test can wait for one."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = TIMEOUT_S) -> None:
        def seen() -> bool:
            return any(text in line for line in self.lines)

        with self._changed:
            self._changed.wait_for(lambda: seen() or self._eof, timeout)
            if not seen():
                pytest.fail(f"{text!r} not printed (in {timeout}s): {self.lines}")

    def join(self) -> list[str]:
        self._thread.join(TIMEOUT_S)
        return self.lines


def test_large_order_against_headrace_dev(tmp_path: Path, pycache: Path) -> None:
    fraud_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    url = ["--url", api]
    env = make_env(
        tmp_path,
        pycache,
        shop=True,
        vars=json.dumps({"fraud_url": f"http://127.0.0.1:{fraud_port}"}),
        secrets=json.dumps({"fraud_token": "s3cret"}),
    )

    def run(*args: str) -> Result:
        return cli(*args, *url, env=env, cwd=REPO)

    fraud_argv = [sys.executable, "examples/fraud_service.py"]
    fraud_argv += ["--port", str(fraud_port), "--token", "s3cret"]
    dev_argv = [str(HEADRACE), "dev", "--port", str(api_port), "--tasks", "shop"]
    with (
        server(
            fraud_argv,
            env=env,
            log=tmp_path / "fraud.log",
            ready_url=f"http://127.0.0.1:{fraud_port}/openapi.json",
        ),
        server(dev_argv, env=env, log=tmp_path / "dev.log", ready_url=f"{api}/healthz") as dev,
    ):
        banner = (tmp_path / "dev.log").read_text()
        assert f"headrace dev: API on {api}" in banner and "tasks shop" in banner, banner

        registered = run("workflows", "register", "examples/order-fulfilment.yaml")
        assert registered.returncode == 0, registered
        workflow = registered.json()
        assert workflow["tag"] == "order-fulfilment@1"
        assert workflow["name"] == "order-fulfilment" and workflow["version"] == 1
        assert workflow["ir_hash"].startswith("sha256:")

        listed, shown = cli_many(
            [["workflows", "list", *url], ["workflows", "show", "order-fulfilment", *url]],
            env=env,
            cwd=REPO,
        )
        assert listed.returncode == 0, listed
        assert [w["tag"] for w in listed.json()["items"]] == ["order-fulfilment@1"]
        assert shown.returncode == 0, shown
        assert shown.json()["tag"] == "order-fulfilment@1"
        assert {n["id"] for n in shown.json()["ir"]["nodes"]} == set(NODES)

        started = run(
            "runs",
            "start",
            "order-fulfilment",
            "-i",
            "order_id=B-2",
            "--input-file",
            "examples/large-order.json",
        )
        assert started.returncode == 0, started
        run_id = started.json()["run_id"]
        assert str(uuid.UUID(run_id)) == run_id

        # 1324.0 > 1000: the fraud service approves, then the run waits for a person
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            got = run("runs", "get", run_id)
            assert got.returncode == 0, got
            view = got.json()
            assert view["status"] in ("pending", "running"), got
            if view["nodes"]["approve"]["status"] == "waiting":
                break
            assert time.monotonic() < deadline, f"approve never waited\n{got}"
            time.sleep(0.2)
        assert view["nodes"]["fraud_check"]["status"] == "completed"
        assert view["nodes"]["fraud_check"]["output"]["status"] == 200
        assert view["nodes"]["fraud_check"]["output"]["body"]["approved"] is True
        assert view["nodes"]["ship"]["status"] == "pending"

        watch = spawn(["runs", "watch", run_id, *url], env=env, cwd=REPO)
        assert watch.stdout is not None and watch.stderr is not None
        watched = LineReader(watch.stdout)
        try:
            watched.wait_for('"NodeWaiting"')  # replayed; from here on it follows live

            signalled = run("runs", "signal", run_id, "approval", "--payload", '{"by": "ops"}')
            assert signalled.returncode == 0, signalled
            assert signalled.json() == {"run_id": run_id, "signal": "approval", "accepted": True}

            watch.wait(TIMEOUT_S)
        finally:
            if watch.poll() is None:
                watch.kill()
            watch.wait()
            watch_lines = watched.join()
            watch_err = watch.stderr.read()
            watch.stdout.close()
            watch.stderr.close()
        assert watch.returncode == 0, (watch_lines, watch_err)
        assert json.loads(watch_lines[-1])["type"] == "RunCompleted", watch_lines

        got, events, completed, resignal, cancelled, unknown = cli_many(
            [
                ["runs", "get", run_id, *url],
                ["runs", "events", run_id, *url],
                ["runs", "list", "--status", "completed", *url],
                ["runs", "signal", run_id, "approval", "--payload", '{"by": "ops"}', *url],
                ["runs", "cancel", run_id, *url],
                ["runs", "get", str(uuid.uuid4()), *url],
            ],
            env=env,
            cwd=REPO,
        )
        assert got.returncode == 0, got
        view = got.json()
        assert view["status"] == "completed"
        assert view["outputs"]["amount"] == 1324.0
        assert view["outputs"]["shipment"]["carrier"] == "parcel-post"
        assert view["nodes"]["approve"]["status"] == "completed"
        assert view["nodes"]["approve"]["output"] == {"by": "ops"}
        assert view["nodes"]["ship"]["status"] == "completed"
        assert view["inputs"]["order_id"] == "B-2"
        assert view["ended_at"] is not None and view["error"] is None
        assert "s3cret" not in got.stdout

        assert events.returncode == 0, events
        lines = events.json_lines()
        assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1)), events
        assert lines[0]["type"] == "RunStarted"
        assert lines[-1]["type"] == "RunCompleted"
        assert lines[-1]["outputs"] == view["outputs"]
        signals = [e for e in lines if e["type"] == "SignalReceived"]
        assert [(s["name"], s["payload"]) for s in signals] == [("approval", {"by": "ops"})]
        assert "s3cret" not in events.stdout, "a secret leaked into the event log"
        assert watch_lines == events.stdout.splitlines(), "watch and events disagree"

        assert completed.returncode == 0, completed
        assert [i["run_id"] for i in completed.json()["items"]] == [run_id]
        assert completed.json()["items"][0]["status"] == "completed"

        assert "409" in clean_error(resignal), resignal
        assert resignal.stdout == ""

        cancelled_again = run("runs", "cancel", run_id)
        for r in (cancelled, cancelled_again):
            assert r.returncode == 0, r
            assert r.json() == {"run_id": run_id, "status": "completed"}

        assert "404" in clean_error(unknown), unknown
        assert unknown.stdout == ""

        small = ["runs", "start", "order-fulfilment", "-i", "order_id=S-1"]
        small += ["--input-file", "examples/small-order.json", "--idempotency-key", "small-1"]
        first, again = run(*small), run(*small)  # one after the other: the same run
        assert first.returncode == again.returncode == 0, (first, again)
        assert first.json()["run_id"] == again.json()["run_id"] != run_id
        page = run("runs", "list", "--workflow", "order-fulfilment", "--limit", "1")
        assert page.returncode == 0, page
        assert [i["run_id"] for i in page.json()["items"]] == [first.json()["run_id"]]
        rest = run("runs", "list", "--workflow", "order-fulfilment@1", "--cursor",
                   page.json()["next_cursor"])  # fmt: skip
        assert [i["run_id"] for i in rest.json()["items"]] == [run_id]
        assert rest.json()["next_cursor"] is None
        none = run("runs", "list", "--workflow", "no-such-workflow")
        assert none.json() == {"items": [], "next_cursor": None}

        took = stop(dev)
        assert took < 10, f"headrace dev took {took:.1f}s to exit on SIGTERM"
        # 0, or killed by the SIGTERM that uvicorn re-raises once it has shut down
        assert dev.returncode in (0, -signal.SIGTERM), dev.returncode


# --- help and db upgrade -----------------------------------------------------------------

COMMANDS = [
    [],
    ["run"],
    ["dev"],
    ["db"],
    ["db", "upgrade"],
    ["workflows"],
    ["workflows", "register"],
    ["workflows", "list"],
    ["workflows", "show"],
    ["runs"],
    ["runs", "start"],
    ["runs", "get"],
    ["runs", "list"],
    ["runs", "cancel"],
    ["runs", "signal"],
    ["runs", "watch"],
    ["runs", "events"],
]


def test_help_of_every_command_and_db_upgrade(tmp_path: Path, pycache: Path) -> None:
    env = make_env(tmp_path, pycache)
    results = cli_many(
        [*([*cmd, "--help"] for cmd in COMMANDS), ["db", "upgrade"]], env=env, cwd=tmp_path
    )
    *helps, upgraded = results
    for cmd, r in zip(COMMANDS, helps, strict=True):
        assert r.returncode == 0, r
        text = " ".join(r.stdout.split())
        assert f"Usage: headrace {' '.join(cmd)}".rstrip() in text, r
        assert "--help" in text, r
        assert "Traceback" not in r.stderr, r
    assert "run" in helps[0].stdout and "runs" in helps[0].stdout

    assert upgraded.returncode == 0, upgraded
    assert "schema is up to date" in upgraded.stdout, upgraded
    assert (tmp_path / "h.db").stat().st_size > 0


def test_a_port_in_use_stops_the_server_before_it_touches_anything(
    tmp_path: Path, pycache: Path
) -> None:
    env = make_env(tmp_path, pycache)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        dev, serve_all, health = cli_many(
            [
                ["dev", "--port", port],
                ["serve", "all", "--port", port],
                ["serve", "all", "--port", "0", "--health-port", port],
            ],
            env=env,
            cwd=tmp_path,
        )
    for r, option in ((dev, "--port"), (serve_all, "--port"), (health, "--health-port")):
        message = clean_error(r)
        assert f"{option}: cannot listen on 127.0.0.1:{port}" in message, r
        assert "in use" in message, r
    assert not (tmp_path / "h.db").exists()  # refused before the store was opened


def test_a_database_that_does_not_answer_is_a_one_line_error(tmp_path: Path, pycache: Path) -> None:
    """Exit 3 (the store or the bus could not be reached), the reason, no traceback."""
    missing = "postgresql://postgres@127.0.0.1:5432/headrace_no_such_database"
    env = make_env(tmp_path, pycache, database_url=missing, bus="redis://127.0.0.1:6379/0")
    upgrade, serve = cli_many(
        [["db", "upgrade"], ["serve", "api", "--port", "0"]], env=env, cwd=tmp_path
    )
    for r in (upgrade, serve):
        message = clean_error(r, 3)
        assert 'database "headrace_no_such_database" does not exist' in message, r


def test_port_0_serves_on_the_port_the_kernel_picked(tmp_path: Path, pycache: Path) -> None:
    log = tmp_path / "serve.log"
    argv = [str(HEADRACE), "serve", "all", "--port", "0", "--health-port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=make_env(tmp_path, pycache), stderr=out)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (found := re.search(r"health on (\S+), API on (\S+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        health, api = found.groups()
        assert health != api
        wait_ready(proc, f"{health}/healthz", log)
        assert httpx.get(f"{api}/v1/runs", trust_env=False).json()["items"] == []
    finally:
        stop(proc)


# --- feature flags ------------------------------------------------------------------------


def test_flags_from_the_command_line_and_across_processes(tmp_path: Path, pycache: Path) -> None:
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = {**make_env(tmp_path, pycache), "ENABLE_KAFKA_WRITE": "on"}  # an initial value
    dev_argv = [str(HEADRACE), "dev", "--port", str(api_port)]

    bad_env = cli("dev", "--port", str(api_port), env={**env, "ENABLE_KAFKA": "maybe"}, cwd=REPO)
    assert "ENABLE_KAFKA: expected true or false" in clean_error(bad_env)

    def run(*args: str) -> Result:
        return cli("flags", *args, "--url", api, env=env, cwd=REPO)

    with server(dev_argv, env=env, log=tmp_path / "dev.log", ready_url=f"{api}/healthz"):
        shown = run("get", "ENABLE_KAFKA_WRITE")
        assert shown.returncode == 0, shown
        assert shown.json()["value"] is True and shown.json()["source"] == "initial"

        assert "0 to 100" in clean_error(run("set", "KAFKA_TRAFFIC_PERCENT", "101", "--why", "x"))
        assert "not found" in clean_error(run("set", "NO_SUCH_FLAG", "1", "--why", "x")).lower()
        assert run("history").json()["items"] == []  # refused input stored nothing

        done = run("set", "KAFKA_TRAFFIC_PERCENT", "30", "--why", "canary", "--who", "alice")
        assert done.returncode == 0, done
        assert done.json()["value"] == 30 and done.json()["source"] == "store"
        assert {k: done.json()["change"][k] for k in ("old", "new", "who", "why")} == {
            "old": None,
            "new": 30,
            "who": "alice",
            "why": "canary",
        }

        # another process sets a flag in the store: this one applies it without a restart
        async def set_elsewhere() -> None:
            store = SqliteStore(tmp_path / "h.db")
            await store.open()
            try:
                await store.set_flag("ENABLE_KAFKA", True, "drill", "phase 3", 1)
            finally:
                await store.close()

        asyncio.run(set_elsewhere())
        began = time.monotonic()
        applied = 'headrace_flag_value{flag="ENABLE_KAFKA"} 1.0'
        while applied not in httpx.get(f"{api}/metrics", trust_env=False).text:
            assert time.monotonic() - began < TIMEOUT_S, "the flag change was never applied"
            time.sleep(0.05)
        print(f"applied by another process after {time.monotonic() - began:.2f}s")

        history = run("history").json()["items"]
        assert [(c["name"], c["new"], c["who"]) for c in history] == [
            ("ENABLE_KAFKA", True, "drill"),
            ("KAFKA_TRAFFIC_PERCENT", 30, "alice"),
        ]
        assert len(run("history", "KAFKA_TRAFFIC_PERCENT").json()["items"]) == 1


def test_dev_keeps_its_database_under_dot_headrace_by_default(
    tmp_path: Path, pycache: Path
) -> None:
    env = make_env(tmp_path, pycache)
    del env["HEADRACE_DATABASE_URL"]  # the default: .headrace/headrace.db in the directory
    port = free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(HEADRACE), "dev", "--port", str(port)],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/healthz", log)
        assert (tmp_path / ".headrace" / "headrace.db").is_file(), log.read_text()
    finally:
        stop(proc)


# --- waits: the hint, --signal, and `runs watch` on a terminal ----------------------------

WAITER = """
name: waiter
version: 1
inputs:
  marks: {type: string}
nodes:
  first: {task: headrace.testing.tasks.echo, with: {x: 1}}
  approve:
    needs: [first]
    wait: {signal: approval, timeout: 1h}
  after:
    needs: [approve]
    task: headrace.testing.tasks.marked_sleep
    with: {marks: "${{ inputs.marks }}", name: after, seconds: 0}
outputs:
  got: "${{ nodes.approve.output }}"
"""
TASKS = "headrace.testing.tasks"


def test_run_says_how_to_signal_a_wait_and_dev_on_its_database_delivers_it(
    tmp_path: Path, pycache: Path
) -> None:
    """The hint names the run and the commands; running them as written (plus a free port)
    completes the run in the `headrace run` process that waits for it."""
    (tmp_path / "waiter.yaml").write_text(WAITER)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = make_env(tmp_path, pycache)
    args = ["run", "waiter.yaml", "--tasks", TASKS, "-i", f"marks={marks}"]
    waiting = spawn(args, env=env, cwd=tmp_path)
    assert waiting.stdout is not None and waiting.stderr is not None
    out, errors = LineReader(waiting.stdout), LineReader(waiting.stderr)
    try:
        errors.wait_for("headrace runs signal")
        header = re.fullmatch(r"run ([0-9a-f-]{36}) of waiter@1", out.lines[0])
        assert header, out.lines
        run_id = header.group(1)
        hint = "\n".join(errors.lines)
        assert f"approve waits for the signal 'approval' (run {run_id})" in hint, hint
        assert f"sqlite:///{tmp_path}/h.db" in hint, hint
        dev_command = f"headrace dev --tasks {TASKS}"
        signal_command = f"headrace runs signal {run_id} approval --payload '<JSON>'"
        assert f"\n  {dev_command}\n  {signal_command}\n" in hint, hint
        assert "--signal approval='<JSON>'" in hint, hint

        port = free_port()
        dev_argv = [str(HEADRACE), *dev_command.split()[1:], "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        with server(dev_argv, env=env, log=tmp_path / "dev.log", ready_url=f"{url}/healthz") as dev:
            send = shlex.split(signal_command.replace("<JSON>", '{"by": "ops"}'))[1:]
            sent = cli(*send, "--url", url, env=env, cwd=tmp_path)
            assert sent.returncode == 0, sent
            waiting.wait(TIMEOUT_S)
            dev_pid = dev.pid
    finally:
        if waiting.poll() is None:
            waiting.kill()
        waiting.wait()
    lines, said = out.join(), errors.join()
    waiting.stdout.close()
    waiting.stderr.close()
    assert waiting.returncode == 0, (lines, said)
    assert "approve: completed" in lines, lines
    start = lines.index("{")
    assert lines[start - 1] == "completed", lines
    assert json.loads("\n".join(lines[start:])) == {"got": {"by": "ops"}}
    assert [m.name for m in marks.iterdir()] == [f"after.{dev_pid}"]  # as the hint says
    assert sum("waits for the signal" in line for line in said) == 1  # said once


def test_run_with_signal_completes_a_wait_in_one_command(tmp_path: Path, pycache: Path) -> None:
    (tmp_path / "waiter.yaml").write_text(WAITER)
    marks = tmp_path / "marks"
    marks.mkdir()
    base = ["run", "waiter.yaml", "--tasks", TASKS, "-i", f"marks={marks}"]
    done, unknown, not_json, no_value = cli_many(
        [
            [*base, "--signal", 'approval={"by": "cli"}', "--json"],
            [*base, "--signal", "aproval=1"],
            [*base, "--signal", "approval={oops"],
            [*base, "--signal", "approval"],
        ],
        env=make_env(tmp_path, pycache),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done
    summary = done.json()  # stdout stays one JSON document
    assert summary["status"] == "completed"
    assert summary["outputs"] == {"got": {"by": "cli"}}
    assert summary["nodes"]["approve"]["output"] == {"by": "cli"}
    assert "waits for the signal" not in done.stderr, done
    message = clean_error(unknown)
    assert "--signal" in message and "waits for approval, not 'aproval'" in message, unknown
    message = clean_error(not_json)
    assert "--signal: approval: the payload is not JSON" in message, not_json
    assert "--signal: expected NAME=JSON, got 'approval'" in clean_error(no_value), no_value
    for r in (unknown, not_json, no_value):
        assert r.stdout == "", r

    async def runs_stored() -> int:
        store = SqliteStore(tmp_path / "h.db")
        await store.open()
        try:
            return len((await store.list_runs(RunFilter(), 10))[0])
        finally:
            await store.close()

    assert asyncio.run(runs_stored()) == 1  # refused input started nothing


class Pty:
    """A command whose output goes to a pseudo-terminal (120 columns), read in a thread."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str], cwd: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        self.proc = subprocess.Popen(
            [str(HEADRACE), *args],
            cwd=cwd,
            env={**env, "TERM": "xterm-256color"},
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        self.chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(master,), daemon=True)
        self._thread.start()

    def _read(self, master: int) -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            self.chunks.append(chunk)
        os.close(master)

    def text(self) -> str:
        """What was written so far, without terminal codes."""
        raw = b"".join(self.chunks).decode(errors="replace")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r", "")

    def wait_for_row(self, node: str, status: str) -> None:
        """Until the last table drawn shows `node` with `status`."""
        deadline = time.monotonic() + TIMEOUT_S
        while table_rows(self.text()).get(node, [""])[0] != status:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(self.text())
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            code = self.proc.wait(TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self._thread.join(TIMEOUT_S)
        return code


def table_rows(text: str) -> dict[str, list[str]]:
    """node -> its cells, from the last whole table drawn (`run: ...`, rows, `└───┘`)."""
    end = text.rfind("└")
    start = text.rfind("run: ", 0, end)
    rows = {}
    for line in text[start:end].splitlines() if start >= 0 else []:
        line = line.strip()
        if line[:1] in ("│", "┃") and len(cells := line[1:-1].split(line[0])) == 4:
            rows[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return rows


def test_runs_watch_draws_the_node_table_on_a_terminal(tmp_path: Path, pycache: Path) -> None:
    (tmp_path / "waiter.yaml").write_text(WAITER)
    (tmp_path / "permanent.yaml").write_text(PERMANENT)
    marks = tmp_path / "marks"
    marks.mkdir()
    port = free_port()
    url = ["--url", f"http://127.0.0.1:{port}"]
    env = make_env(tmp_path, pycache)
    dev_argv = [str(HEADRACE), "dev", "--port", str(port), "--tasks", TASKS]
    ready = f"http://127.0.0.1:{port}/healthz"
    with server(dev_argv, env=env, log=tmp_path / "dev.log", ready_url=ready):

        def run(*args: str) -> Any:
            r = cli(*args, *url, env=env, cwd=tmp_path)
            assert r.returncode == 0, r
            return r.json()

        run("workflows", "register", "waiter.yaml")
        run("workflows", "register", "permanent.yaml")
        waiter = run("runs", "start", "waiter", "-i", f"marks={marks}")["run_id"]
        doomed = run("runs", "start", "permanent")["run_id"]

        table = Pty(["runs", "watch", waiter, *url], env=env, cwd=tmp_path)
        table.wait_for_row("approve", "waiting")
        run("runs", "signal", waiter, "approval", "--payload", '{"by": "ops"}')
        assert table.finish() == 0, table.text()
        text = table.text()
        assert "run: completed" in text, text
        assert table_rows(text) == {
            "node": ["status", "attempts", "detail"],
            "first": ["completed", "1", ""],
            "approve": ["completed", "1", ""],
            "after": ["completed", "1", ""],
        }, text
        assert "{" not in text, "no JSON lines on a terminal"

        failed = Pty(["runs", "watch", doomed, *url], env=env, cwd=tmp_path)
        assert failed.finish() == 1, failed.text()
        assert table_rows(failed.text())["a"] == ["failed", "1", "gone for good"], failed.text()
        assert "error: node a failed: gone for good" in failed.text()

        as_json = Pty(["runs", "watch", waiter, "--json", *url], env=env, cwd=tmp_path)
        assert as_json.finish() == 0, as_json.text()
        events = [json.loads(line) for line in as_json.text().splitlines() if line]
        assert events[0]["type"] == "RunStarted" and events[-1]["type"] == "RunCompleted"

        piped = cli("runs", "watch", doomed, *url, env=env, cwd=tmp_path)
        assert piped.returncode == 1, piped
        assert [e["type"] for e in piped.json_lines()][-1] == "RunFailed", piped
