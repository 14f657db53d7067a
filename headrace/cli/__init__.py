"""The `headrace` command."""

from headrace.cli.app import app, main

__all__ = ["app", "main"]
