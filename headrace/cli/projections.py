"""`headrace projections`: where the read models stand (through the API), and a check of
them against the event log (on the database, as `headrace db` works)."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from headrace.cli.client import DEFAULT_URL, UrlOption, _call
from headrace.cli.output import UNAVAILABLE, fail, show
from headrace.config import load_settings
from headrace.errors import Conflict, InfraError, InputError
from headrace.services import loop

if TYPE_CHECKING:
    from headrace.projections.verify import Report
    from headrace.store import Store

T = TypeVar("T")

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
    _report(_on_store(_verify))


@projections_app.command("rebuild")
def projections_rebuild(
    check: Annotated[
        bool, typer.Option("--verify", help="Then compare them with the event log (as verify).")
    ] = False,
    page: Annotated[int, typer.Option(min=1, max=10_000, help="Runs per transaction.")] = 500,
) -> None:
    """Build the read models of HEADRACE_DATABASE_URL again from its event log, into fresh
    tables while the live ones serve, then swap them in (one transaction). A rebuild that
    was stopped resumes where it was."""
    from headrace.projections.rebuild import Progress, rebuild
    from headrace.runtime.crash import CrashPoints

    def progress(p: Progress) -> None:
        if sys.stderr.isatty():
            eta = "" if p.eta_s is None else f", ETA {p.eta_s:.0f} s"
            done = p.held + p.done
            line = f"\r{p.phase}: {done}/{p.total} runs, {p.events} events, "
            rate = f"{p.events_per_s:.0f} events/s{eta}\033[K"
            print(line + rate, end="", file=sys.stderr, flush=True)

    async def run(store: Store) -> Report | None:
        crash = CrashPoints(load_settings().crash_at)
        p = await rebuild(store, page, progress, crash)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if p.resumed_after:
            print(f"resumed after run {p.resumed_after} ({p.held} runs were rebuilt before)")
        print(
            f"rebuilt the read models of {p.held + p.done} runs from the event log: "
            f"{p.events} events in {p.seconds:.1f} s ({p.events_per_s:.0f} events/s), "
            f"{p.caught_up} brought up again as they moved on; swapped in"
        )
        return await _verify(store) if check else None

    _report(_on_store(run))


def _on_store(work: Callable[[Store], Awaitable[T]]) -> T:
    """`work` on the store of HEADRACE_DATABASE_URL (as `headrace db` works, no API)."""
    from headrace.services.adapters import build_store

    async def go() -> T:
        store = build_store(load_settings())
        await store.open(migrate=False)  # a check changes nothing, nor makes a database
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return loop.run(go())
    except (InputError, Conflict) as e:
        raise fail(str(e)) from None
    except InfraError as e:
        raise fail(str(e), UNAVAILABLE) from None


async def _verify(store: Store) -> Report:
    from headrace.projections.verify import verify

    began = time.monotonic()

    def progress(r: Report) -> None:
        if sys.stderr.isatty():
            rate = r.runs / max(time.monotonic() - began, 1e-6)
            line = f"\r{r.runs} runs, {rate:.0f}/s, {len(r.differences)} differ"
            print(line, end="", file=sys.stderr, flush=True)

    report = await verify(store, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return report


def _report(report: Report | None) -> None:
    """Print a verify's differences and its summary; exit 1 if any."""
    if report is None:
        return
    for run_id, found in report.differences.items():
        for line in found:
            print(f"{run_id}: {line}")
    print(
        f"verified {report.runs} runs: {len(report.differences)} differ from the event log, "
        f"{report.behind} not yet projected to their last event"
    )
    if report.differences:
        raise typer.Exit(1)
