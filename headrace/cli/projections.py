"""`headrace projections`: where the read models stand (through the API), and a check of
them against the event log (on the database, as `headrace db` works)."""

from __future__ import annotations

import sys
import time

import typer

from headrace.cli.client import DEFAULT_URL, UrlOption, _call
from headrace.cli.output import UNAVAILABLE, fail, show
from headrace.config import load_settings
from headrace.errors import InfraError, InputError
from headrace.services import loop

projections_app = typer.Typer(
    help="The read models (runs_read, states_read): how far behind they are, whether right.",
    no_args_is_help=True,
)


@projections_app.command("status")
def projections_status(url: UrlOption = DEFAULT_URL) -> None:
    """The flags, each projector's lag and progress, runs projected, the last rollback."""
    show(_call("GET", url, "/v1/projections"))


@projections_app.command("verify")
def projections_verify() -> None:
    """Compare the read models of HEADRACE_DATABASE_URL with a fold of its event log, run
    by run; print every difference. Exit 1 if any."""
    from headrace.projections.verify import Report, verify
    from headrace.services.adapters import build_store

    began = time.monotonic()

    def progress(r: Report) -> None:
        if sys.stderr.isatty():
            rate = r.runs / max(time.monotonic() - began, 1e-6)
            line = f"\r{r.runs} runs, {rate:.0f}/s, {len(r.differences)} differ"
            print(line, end="", file=sys.stderr, flush=True)

    async def check() -> Report:
        store = build_store(load_settings())
        path = getattr(store, "path", None)  # SQLite: a file that is not there is no pass
        if path is not None and not path.exists():
            raise InputError("HEADRACE_DATABASE_URL", f"no database at {path}")
        await store.open()
        try:
            return await verify(store, progress=progress)
        finally:
            await store.close()

    try:
        report = loop.run(check())
    except InputError as e:
        raise fail(str(e)) from None
    except InfraError as e:
        raise fail(str(e), UNAVAILABLE) from None
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for run_id, found in report.differences.items():
        for line in found:
            print(f"{run_id}: {line}")
    print(
        f"verified {report.runs} runs: {len(report.differences)} differ from the event log, "
        f"{report.behind} not yet projected to their last event"
    )
    if report.differences:
        raise typer.Exit(1)
