"""Printing and failing, the same way in every command."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import httpx

err = Console(stderr=True, soft_wrap=True)


UNAVAILABLE = 3  # exit code: the store or the bus could not be reached (2: bad input)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` on stderr; the caller raises the returned Exit."""
    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def show(value: Any) -> None:
    print(json.dumps(value, indent=2))


def detail_of(response: httpx.Response) -> str:
    """What an error answer of the API says (its problem's `detail`)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail")) if isinstance(body, dict) else str(body)
