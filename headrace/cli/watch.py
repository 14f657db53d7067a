"""`headrace runs watch` on a terminal: the node table `headrace run` shows, kept from the
run's event stream (one read of the run for its nodes, then only its events)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from headrace.cli.output import detail_of, fail
from headrace.cli.progress import REFRESH_S, TERMINAL, Board, table

RETRY_S = 1.0  # a broken stream is read again from where it stopped


async def watch_table(url: str, run_id: str, console: Console) -> dict[str, Any]:
    """Show the run's nodes live until it ends; returns its final view."""
    async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
        view = await _view(client, run_id)  # a run that does not exist fails here
        board = Board(view["nodes"])
        with Live(console=console, refresh_per_second=10) as live:

            async def redraw() -> None:  # at most ten times a second, however fast events come
                while True:
                    live.update(table(board.status, board.rows()))
                    await asyncio.sleep(REFRESH_S)

            drawer = asyncio.create_task(redraw())
            try:
                while board.status not in TERMINAL:
                    await _fold(client, run_id, board)
                    if board.status not in TERMINAL:  # the stream broke: is the API there?
                        await asyncio.sleep(RETRY_S)
                        await _view(client, run_id)
            finally:
                drawer.cancel()
                await asyncio.gather(drawer, return_exceptions=True)
            live.update(table(board.status, board.rows()))
        return await _view(client, run_id)


async def _fold(client: httpx.AsyncClient, run_id: str, board: Board) -> None:
    """Fold the events of the run's stream after `board.seq` into `board`, until the
    stream ends or breaks."""
    path = f"/v1/runs/{run_id}/events"
    seq, type_ = 0, ""
    try:
        async with client.stream("GET", path, params={"after": board.seq}, timeout=None) as r:
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("event: "):
                    type_ = line[7:]
                elif line.startswith("data: "):
                    board.apply(seq, type_, json.loads(line[6:]))
    except httpx.HTTPError:
        return


async def _view(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    try:
        response = await client.get(f"/v1/runs/{run_id}")
    except httpx.HTTPError as e:
        raise fail(f"cannot reach the API at {client.base_url}: {e}") from None
    if response.status_code >= 400:
        code = 1 if response.status_code >= 500 else 2
        raise fail(f"{response.status_code}: {detail_of(response)}", code)
    view: dict[str, Any] = response.json()
    return view
