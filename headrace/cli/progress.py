"""Live progress of a run: a node table on a terminal (rich), one line per change elsewhere,
and a hint on stderr when a `wait` node is reached.

The table is drawn from rows, so `headrace run` (store records) and `headrace runs watch`
(the API's run view) show the same thing."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.console import Console
from rich.live import Live
from rich.table import Table

from headrace.cli.output import err

if TYPE_CHECKING:
    from headrace.services.runtime import Embedded
    from headrace.store import NodeRecord, RunRecord

TERMINAL = ("completed", "failed", "cancelled")

_STYLE = {
    "completed": "green",
    "failed": "red",
    "running": "cyan",
    "waiting": "yellow",
    "retrying": "magenta",
    "skipped": "dim",
    "cancelled": "dim red",
    "scheduled": "blue",
}


class Row(NamedTuple):
    node_id: str
    status: str
    attempts: int
    detail: str


def on_terminal() -> bool:
    """Whether stdout is a terminal (a live table), not a pipe or a file (plain lines)."""
    return sys.stdout.isatty()


def table(run_status: str, rows: Iterable[Row]) -> Table:
    grid = Table(title=f"run: {run_status}", title_justify="left")
    for col in ("node", "status", "attempts", "detail"):
        grid.add_column(col)
    for row in rows:
        style = _STYLE.get(row.status, "")
        status = f"[{style}]{row.status}[/]" if style else row.status
        grid.add_row(row.node_id, status, str(row.attempts), row.detail)
    return grid


def rows_of_records(nodes: list[NodeRecord]) -> list[Row]:
    return [
        Row(
            n.node_id,
            n.status,
            n.attempt,
            _detail(n.status, n.width, n.children, n.error.message if n.error else None),
        )
        for n in nodes
    ]


def rows_of_view(view: dict[str, Any]) -> list[Row]:
    """Rows from `GET /v1/runs/{id}` (the `--json` summary's `nodes`)."""
    rows = []
    for node_id, n in view["nodes"].items():
        children = n.get("children")
        width = children.get("total") if children else None
        message = (n.get("error") or {}).get("message")
        detail = _detail(n["status"], width, children, message)
        rows.append(Row(node_id, n["status"], n["attempts"], detail))
    return rows


def _detail(status: str, width: int | None, children: Any, error: str | None) -> str:
    if error is not None and status in ("failed", "retrying"):
        return error[:80]
    if width is not None:
        return f"{(children or {}).get('completed', 0)}/{width} items"
    return ""


class WaitHints:
    """Says once per `wait` node, on stderr (above the live table on a terminal), how to
    deliver the signal it waits for: through `headrace dev` on the same database (tested:
    the signal is committed there, and the nodes after the wait run in that process), or
    `--signal` on the next `headrace run`."""

    def __init__(self, run_id: str, signals: dict[str, str], database_url: str, tasks: str):
        self.run_id = run_id
        self.signals = signals  # wait node id -> signal name
        self.database_url = database_url
        self.tasks = tasks
        self.said: set[str] = set()
        self.out = err  # the live table's console while it is drawn: printed above it

    def check(self, rows: Iterable[Row]) -> None:
        for row in rows:
            if row.status == "waiting" and row.node_id not in self.said:
                self.said.add(row.node_id)
                self.out.print(self.text(row.node_id), highlight=False, markup=False)

    def text(self, node_id: str) -> str:
        name = self.signals.get(node_id, node_id)
        dev = "headrace dev" + (f" --tasks {shlex.quote(self.tasks)}" if self.tasks else "")
        return (
            f"{node_id} waits for the signal {name!r} (run {self.run_id}). To send it, in\n"
            f"another terminal in this directory with this environment (the same database,\n"
            f"{self.database_url}), start `headrace dev` and signal the run through it:\n"
            f"  {dev}\n"
            f"  headrace runs signal {self.run_id} {name} --payload '<JSON>'\n"
            f"(the nodes after the wait then run in the dev process). Or give the signal when\n"
            f"the run starts: headrace run ... --signal {name}='<JSON>'"
        )


async def follow(
    rt: Embedded, run_id: str, console: Console, *, show: bool, hints: WaitHints
) -> RunRecord:
    """Until the run ends: a live table (on a terminal) or lines when `show`, and wait
    hints either way. Polls the store, so changes made by other processes show too."""
    if show and on_terminal():
        with Live(console=console, refresh_per_second=10, transient=False) as live:
            hints.out = console

            def draw(status: str, rows: list[Row]) -> None:
                live.update(table(status, rows))

            return await _poll(rt, run_id, 0.1, draw, hints)
    seen: dict[str, str] = {}

    def lines(status: str, rows: list[Row]) -> None:
        for row in rows:
            if show and seen.get(row.node_id) != row.status:
                seen[row.node_id] = row.status
                console.print(f"{row.node_id}: {row.status}", highlight=False)

    return await _poll(rt, run_id, 0.5, lines, hints)


async def _poll(
    rt: Embedded,
    run_id: str,
    interval_s: float,
    draw: Callable[[str, list[Row]], None],
    hints: WaitHints,
) -> RunRecord:
    while True:
        record, nodes = await rt.store.get_run(run_id)
        rows = rows_of_records(nodes)
        draw(record.status, rows)
        if record.status in TERMINAL:
            return record
        hints.check(rows)
        rt.check_failed()
        await rt.hub.wait(run_id, record.seq, interval_s)
