"""Live progress of a run: a node table on a terminal (rich), one line per change elsewhere,
and a hint on stderr when a `wait` node is reached.

The table is kept from the run's events (`Board`), so `headrace run` (the store's events)
and `headrace runs watch` (the API's event stream) show the same thing, and following a
run of 20,000 nodes costs what its events cost, not a read of every node per change."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.console import Console
from rich.live import Live
from rich.table import Table

from headrace.cli.output import err
from headrace.spec import plan_of

if TYPE_CHECKING:
    from headrace.services.runtime import Embedded

TERMINAL = ("completed", "failed", "cancelled")
REFRESH_S = 0.1  # at most ten reads (and redraws) a second, however fast events come

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


MAX_ROWS = 30  # a larger run shows its active nodes, and counts the others


def on_terminal() -> bool:
    """Whether stdout is a terminal (a live table), not a pipe or a file (plain lines)."""
    return sys.stdout.isatty()


def table(run_status: str, rows: Iterable[Row]) -> Table:
    grid = Table(title=f"run: {run_status}", title_justify="left")
    for col in ("node", "status", "attempts", "detail"):
        grid.add_column(col)
    shown, hidden = _fit(list(rows))
    for row in shown:
        style = _STYLE.get(row.status, "")
        status = f"[{style}]{row.status}[/]" if style else row.status
        grid.add_row(row.node_id, status, str(row.attempts), row.detail)
    if hidden:
        counts = Counter(r.status for r in hidden)
        grid.add_row(
            f"... {len(hidden)} more", "", "", ", ".join(f"{n} {s}" for s, n in counts.items())
        )
    return grid


def _fit(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """(rows to show, rows to count): all of a small run; else its active nodes first."""
    if len(rows) <= MAX_ROWS:
        return rows, []
    active = [r for r in rows if r.status not in _QUIET][: MAX_ROWS - 1]
    keep = {r.node_id for r in active}
    return active, [r for r in rows if r.node_id not in keep]


_QUIET = frozenset({"pending", "completed", "skipped"})
_NODE_STATUS = {
    "NodeScheduled": "scheduled",
    "NodeStarted": "running",
    "NodeWaiting": "waiting",
    "NodeCompleted": "completed",
    "NodeRetrying": "retrying",
    "NodeFailed": "failed",
    "NodeSkipped": "skipped",
    "NodeCancelled": "cancelled",
}
_RUN_STATUS = {
    "RunStarted": "running",
    "RunCompleted": "completed",
    "RunFailed": "failed",
    "RunCancelled": "cancelled",
}


@dataclass
class _Node:
    status: str = "pending"
    attempts: int = 0
    error: str | None = None
    width: int | None = None
    done: int = 0  # a map node's completed children


class Board:
    """A run's node table kept from its events, so following a run costs what its events
    cost, whatever its size (not a read of every node per change)."""

    def __init__(self, node_ids: Iterable[str]) -> None:
        self.status = "pending"
        self.seq = 0
        self.nodes = {node_id: _Node() for node_id in node_ids}
        self.waiting: set[str] = set()  # the nodes waiting for a signal now

    def apply(self, seq: int, type_: str, data: dict[str, Any]) -> str | None:
        """Take one event; the top-level node whose status it changed, if any."""
        self.seq = max(self.seq, seq)
        self.status = _RUN_STATUS.get(type_, self.status)
        node_id, status = data.get("node_id"), _NODE_STATUS.get(type_)
        if not isinstance(node_id, str) or status is None:
            return None
        parent, _, _ = node_id.partition("[")
        node = self.nodes.setdefault(parent, _Node())
        if parent != node_id:  # a map child
            node.done += status == "completed"
            return None
        node.status = status
        if status == "waiting":
            self.waiting.add(node_id)
        else:
            self.waiting.discard(node_id)
        node.attempts = data.get("attempt", node.attempts)
        node.width = data.get("width") or node.width
        node.error = (data.get("error") or {}).get("message", node.error)
        return node_id

    def rows(self) -> list[Row]:
        return [
            Row(node_id, n.status, n.attempts, _detail(n.status, n.width, n.done, n.error))
            for node_id, n in self.nodes.items()
        ]


def _detail(status: str, width: int | None, done: int, error: str | None) -> str:
    if error is not None and status in ("failed", "retrying"):
        return error[:80]
    if width is not None:
        return f"{done}/{width} items"
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

    def check(self, waiting: Iterable[str]) -> None:
        """Say how to signal each of the `waiting` nodes not yet told about."""
        for node_id in waiting:
            if node_id not in self.said:
                self.said.add(node_id)
                self.out.print(self.text(node_id), highlight=False, markup=False)

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
) -> None:
    """Until the run ends: a live table (on a terminal) or a line per change when `show`,
    and wait hints either way. Reads the store's events, so changes made by other processes
    show too."""
    record = await rt.store.get_run_record(run_id)
    plan = plan_of((await rt.store.get_workflow(record.workflow_tag)).ir)
    board = Board(plan.order)
    if show and on_terminal():
        with Live(console=console, refresh_per_second=10, transient=False) as live:
            hints.out = console
            await _follow(
                rt, board, lambda _: live.update(table(board.status, board.rows())), hints
            )
            return

    def line(node_id: str | None) -> None:  # plain text: no terminal to style for
        if show and node_id is not None:
            print(f"{node_id}: {board.nodes[node_id].status}", flush=False)

    await _follow(rt, board, line, hints, per_change=True)


async def _follow(
    rt: Embedded,
    board: Board,
    draw: Callable[[str | None], None],
    hints: WaitHints,
    *,
    per_change: bool = False,
) -> None:
    """Fold the run's events into `board` as they come, at most every REFRESH_S; `draw`
    once per read (or, `per_change`, once per changed node)."""
    run_id = hints.run_id
    while True:
        while events := await rt.store.read_events(run_id, board.seq, 1000):
            for e in events:
                changed = board.apply(e.seq, e.type, json.loads(e.data))
                if per_change and changed is not None:
                    draw(changed)
        if not per_change:
            draw(None)
        if board.status in TERMINAL:
            return
        hints.check(board.waiting)
        rt.check_failed()
        await asyncio.sleep(REFRESH_S)
        await rt.hub.wait(run_id, board.seq, 1.0)
