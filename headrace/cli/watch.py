"""`headrace runs watch` on a terminal: the node table `headrace run` shows, drawn from the
API's run view each time the run's event stream says something changed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from headrace.cli.output import detail_of, fail
from headrace.cli.progress import TERMINAL, rows_of_view, table

REFRESH_S = 0.1  # at most ten views a second, however fast events come
IDLE_S = 1.0  # and one a second without events (a read that failed, a missed wake-up)


async def watch_table(url: str, run_id: str, console: Console) -> dict[str, Any]:
    """Show the run's nodes live until it ends; returns its final view."""
    news = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
        view = await _view(client, run_id)  # a run that does not exist fails here
        reader = asyncio.create_task(_wake_on_events(client, run_id, news))
        try:
            with Live(console=console, refresh_per_second=10) as live:
                while True:
                    live.update(table(view["status"], rows_of_view(view)))
                    if view["status"] in TERMINAL:
                        return view
                    news.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(news.wait(), IDLE_S)
                    await asyncio.sleep(REFRESH_S)
                    view = await _view(client, run_id)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


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


async def _wake_on_events(client: httpx.AsyncClient, run_id: str, news: asyncio.Event) -> None:
    """Set `news` on every event of the run's stream (from its start: the first view may
    predate some). A broken stream is read again; the views go on either way."""
    after = 0
    while True:
        try:
            path = f"/v1/runs/{run_id}/events"
            async with client.stream("GET", path, params={"after": after}, timeout=None) as r:
                async for line in r.aiter_lines():
                    if line.startswith("id: "):
                        after = int(line[4:])
                        news.set()
        except httpx.HTTPError:
            pass
        await asyncio.sleep(IDLE_S)
