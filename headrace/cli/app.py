"""`headrace`: run workflows, serve the API, and talk to it.

Exit codes: 0 the run completed (or the command succeeded), 1 the run failed or was
cancelled, 2 bad input (the message names the field).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from headrace.cli.broker import dev_broker
from headrace.cli.client import (
    LabelOption,
    flags_app,
    migrate_app,
    parse_labels,
    runs_app,
    workflows_app,
)
from headrace.cli.output import UNAVAILABLE, err, fail
from headrace.cli.projections import projections_app
from headrace.config import load_settings
from headrace.errors import Conflict, InfraError, InputError, NotFound, SpecError
from headrace.services import loop

# The runtime (store, server, executors) is imported by the commands that run it, so the
# API client commands start quickly.

app = typer.Typer(
    help="headrace: durable workflows, from one laptop to a cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(workflows_app, name="workflows")
app.add_typer(runs_app, name="runs")
app.add_typer(flags_app, name="flags")
app.add_typer(migrate_app, name="migrate")
app.add_typer(projections_app, name="projections")

TasksOption = Annotated[
    str | None,
    typer.Option(
        "--tasks", help="Comma-separated modules task nodes may name (or HEADRACE_TASKS)."
    ),
]


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="The workflow (YAML or JSON).")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "-i", "--input", help="An input as key=value (JSON unless the input is a string)."
        ),
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input-file", help="A JSON or YAML object of inputs.")
    ] = None,
    tasks: TasksOption = None,
    signal: Annotated[
        list[str] | None,
        typer.Option(
            "--signal",
            help="A signal for a wait node as NAME=JSON, delivered as the run starts (repeatable).",
        ),
    ] = None,
    label: LabelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a workflow to completion in this process (on HEADRACE_DATABASE_URL and
    HEADRACE_BUS: by default SQLite and an in-process bus)."""
    from headrace.cli.inputs import parse_inputs
    from headrace.spec import parse_workflow, plan_of

    try:
        source = file.read_text()
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror}") from None
    try:
        settings = load_settings(tasks=tasks)
        ir = parse_workflow(source)
        plan = plan_of(ir)
        inputs = parse_inputs(ir.inputs, input or [], input_file, max_bytes=settings.max_body_bytes)
        plan.validate_inputs(inputs)
        signals = parse_signals(_waits(ir), signal or [])
        labels = parse_labels(label or [])
        summary = loop.run(_run(settings, ir, source, (inputs, labels), signals, as_json))
    except (SpecError, InputError, Conflict, NotFound) as e:
        raise fail(str(e)) from None
    except InfraError as e:
        raise fail(str(e), UNAVAILABLE) from None
    if as_json:
        print(json.dumps(summary, indent=2))
    raise typer.Exit(0 if summary["status"] == "completed" else 1)


def _waits(ir: Any) -> dict[str, str]:
    """Wait node id -> the signal it waits for."""
    return {n.id: n.wait.signal for n in ir.nodes if n.wait is not None}


def parse_signals(waits: dict[str, str], pairs: list[str]) -> list[tuple[str, Any]]:
    """`--signal NAME=JSON` values as (name, payload); InputError names what is wrong."""
    known = sorted(set(waits.values()))
    signals = []
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise InputError("--signal", f"expected NAME=JSON, got {pair!r}")
        if name not in known:
            waits_for = ", ".join(known) or "no signal: it has no wait node"
            raise InputError("--signal", f"the workflow waits for {waits_for}, not {name!r}")
        try:
            signals.append((name, json.loads(raw)))
        except ValueError as e:
            raise InputError("--signal", f"{name}: the payload is not JSON ({e})") from None
    return signals


async def _run(
    settings: Any,
    ir: Any,
    source: str,
    start: tuple[dict[str, Any], dict[str, str]],
    signals: list[tuple[str, Any]],
    as_json: bool,
) -> dict[str, Any]:
    """Run it; `start`: the inputs and labels."""
    from headrace.api.views import run_summary
    from headrace.cli.progress import WaitHints, follow
    from headrace.engine import Signal
    from headrace.services.runtime import Embedded
    from headrace.spec import plan_of

    console = Console()
    async with Embedded(settings) as rt:
        await rt.register(ir, source)
        run_id = await rt.start_run(plan_of(ir), start[0], labels=start[1])
        if signals:  # kept by the run until its wait is reached
            await rt.driver.apply([(run_id, Signal(n, p, rt.clock.now_ms())) for n, p in signals])
        if not as_json:
            console.print(f"run {run_id} of {ir.tag}", highlight=False)
        hints = WaitHints(run_id, _waits(ir), settings.database_url, settings.tasks)
        await follow(rt, run_id, console, show=not as_json, hints=hints)
        record, nodes = await rt.store.get_run(run_id)
    summary = run_summary(record, nodes)
    if not as_json:
        _print_result(console, summary)
    return summary


def _print_result(console: Console, summary: dict[str, Any]) -> None:
    style = "green" if summary["status"] == "completed" else "red"
    console.print(f"[{style}]{summary['status']}[/]")
    if summary.get("error"):
        console.print(f"error: {escape(summary['error']['message'])}", highlight=False)
    if summary["outputs"] is not None:
        console.print_json(json.dumps(summary["outputs"]))


@app.command()
def dev(
    port: Annotated[int, typer.Option("--port", help="HTTP port of the API.")] = 8080,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    tasks: TasksOption = None,
) -> None:
    """The API and every loop in one process, on SQLite (HEADRACE_DATABASE_URL)."""
    try:
        settings = load_settings(tasks=tasks)
        loop.run(_dev(settings, host, port))
    except InputError as e:
        raise fail(str(e)) from None
    except InfraError as e:
        raise fail(str(e), UNAVAILABLE) from None


def log_to_stderr() -> None:
    """INFO and up to stderr, without alembic's notes on the plugins it loads."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


async def _dev(settings: Any, host: str, port: int) -> None:
    import signal

    import uvicorn

    from headrace.api.app import create_app
    from headrace.services.runtime import Embedded
    from headrace.services.serve import KEEP_ALIVE_S, bound_port, listen

    sock = listen(host, port, "--port")
    log_to_stderr()
    async with Embedded(settings) as rt:
        config = uvicorn.Config(
            create_app(rt), log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S
        )
        server = uvicorn.Server(config)
        err.print(
            f"headrace dev: API on http://{host}:{bound_port(sock)} (docs: /docs), "
            f"store {settings.database_url}, tasks {settings.tasks or '-'}",
            highlight=False,
        )
        # uvicorn re-raises the SIGTERM it handled once it has stopped; with this no-op
        # handler that reaches nothing, so the runtime still shuts down cleanly (exit 0). Set
        # here, not earlier, so a SIGTERM while starting still stops the process.
        signal.signal(signal.SIGTERM, lambda *_: None)
        await server.serve(sockets=[sock])


@app.command()
def serve(
    roles: Annotated[
        list[str],
        typer.Argument(
            help="api, coordinator, worker, relay, projector, or all; monitor and shadow "
            "with the migrating bus (HEADRACE_KAFKA_URL).",
            metavar="ROLE...",
        ),
    ],
    port: Annotated[int, typer.Option("--port", help="HTTP port of the API.")] = 8080,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    health_port: Annotated[
        int, typer.Option("--health-port", help="/healthz, /readyz, /metrics; 0 = a free port.")
    ] = 0,
    tasks: TasksOption = None,
) -> None:
    """Run cluster processes: any of api, coordinator, worker, relay, projector (or all),
    monitor, shadow."""

    from headrace.services.runtime import MIGRATION_ROLES, ROLES
    from headrace.services.serve import serve as run_serve

    known = (*ROLES, *MIGRATION_ROLES)
    chosen = ROLES if "all" in roles else tuple(dict.fromkeys(roles))
    unknown = [r for r in chosen if r not in known]
    if unknown:
        raise fail(f"ROLE: unknown role {unknown[0]!r} (roles: {', '.join(known)}, all)")
    try:
        settings = load_settings(tasks=tasks)
        if set(chosen) != set(ROLES) and settings.bus.startswith("memory"):
            raise InputError(
                "HEADRACE_BUS",
                "a memory bus is seen by one process only; give "
                "separate processes a shared bus (redis://...)",
            )
        log_to_stderr()
        loop.run(
            run_serve(
                settings,
                chosen,
                host=host,
                port=port,
                health_port=health_port,
                announce=lambda text: err.print(text, highlight=False),
            )
        )
    except InputError as e:
        raise fail(str(e)) from None
    except InfraError as e:
        raise fail(str(e), UNAVAILABLE) from None


app.command("dev-broker")(dev_broker)

cluster_app = typer.Typer(help="A local cluster of separate processes.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("up")
def cluster_up(
    port: Annotated[int, typer.Option("--port", help="HTTP port of the API.")] = 8080,
    coordinators: Annotated[int, typer.Option("--coordinators", min=1)] = 2,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 2,
    tasks: TasksOption = None,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="KEY=VALUE lines laid over this environment for every process; read again "
            "on SIGHUP, which restarts the processes one at a time.",
        ),
    ] = None,
) -> None:
    """Start api, coordinators, workers and a relay as processes (needs a shared bus and
    database: HEADRACE_BUS=redis://..., HEADRACE_DATABASE_URL=postgresql://...); with
    HEADRACE_KAFKA_URL also the migration's monitor and shadow validator. A process that
    dies is restarted; SIGHUP restarts them all in turn with the environment read again."""
    import os

    from headrace.cli.cluster import Cluster

    def check(env: dict[str, str]) -> bool:
        return _check_cluster_env(env, tasks)

    try:
        cluster = Cluster(
            port=port,
            coordinators=coordinators,
            workers=workers,
            extra=["--tasks", tasks] if tasks else [],
            environ=os.environ,
            env_file=env_file,
            check=check,
        )
    except InputError as e:
        raise fail(str(e)) from None
    raise typer.Exit(loop.run(cluster.run()))


def _check_cluster_env(env: dict[str, str], tasks: str | None) -> bool:
    """Whether `env` suits a cluster (InputError naming the variable if not); True when it
    asks for the migrating bus (HEADRACE_KAFKA_URL)."""
    import os

    from headrace.flags import initial as initial_flags

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        settings = load_settings(tasks=tasks)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    initial_flags(env)
    if settings.bus.startswith("memory"):
        raise InputError("HEADRACE_BUS", "the cluster needs a shared bus (redis://...)")
    if settings.database_url.startswith("sqlite"):
        raise InputError(
            "HEADRACE_DATABASE_URL", "the cluster needs a shared database (postgresql://...)"
        )
    return settings.kafka_url is not None


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations to HEADRACE_DATABASE_URL."""
    try:
        settings = load_settings()
        from headrace.services.adapters import build_store

        store = build_store(settings)
        loop.run(_open_close(store))
    except InputError as e:
        raise fail(str(e)) from None
    except InfraError as e:
        raise fail(str(e), UNAVAILABLE) from None
    print(f"schema is up to date ({settings.database_url})")


async def _open_close(store: Any) -> None:
    await store.open()
    await store.close()


def main() -> None:
    sys.exit(app())
