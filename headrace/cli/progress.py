"""Live progress of a run on a terminal (rich), or one line per change elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from headrace.services.runtime import Embedded
from headrace.store import NodeRecord

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


def _table(run_status: str, nodes: list[NodeRecord]) -> Table:
    table = Table(title=f"run: {run_status}", title_justify="left")
    for col in ("node", "status", "attempts", "detail"):
        table.add_column(col)
    for n in nodes:
        detail = ""
        if n.width is not None:
            done = (n.children or {}).get("completed", 0)
            detail = f"{done}/{n.width} items"
        if n.error is not None and n.status in ("failed", "retrying"):
            detail = n.error.message[:80]
        style = _STYLE.get(n.status, "")
        table.add_row(
            n.node_id, f"[{style}]{n.status}[/]" if style else n.status, str(n.attempt), detail
        )
    return table


async def follow(rt: Embedded, run_id: str, console: Console) -> Any:
    """Show progress until the run ends; return its record."""
    if sys.stdout.isatty():
        with Live(console=console, refresh_per_second=10, transient=False) as live:
            while True:
                record, nodes = await rt.store.get_run(run_id)
                live.update(_table(record.status, nodes))
                if record.status in ("completed", "failed", "cancelled"):
                    return record
                rt.check_failed()
                await rt.hub.wait(run_id, record.seq, 0.1)
    seen: dict[str, str] = {}
    while True:
        record, nodes = await rt.store.get_run(run_id)
        for n in nodes:
            if seen.get(n.node_id) != n.status:
                seen[n.node_id] = n.status
                console.print(f"{n.node_id}: {n.status}", highlight=False)
        if record.status in ("completed", "failed", "cancelled"):
            return record
        rt.check_failed()
        await rt.hub.wait(run_id, record.seq, 0.5)
