"""Fixtures: an embedded runtime on a fresh SQLite file, and its API over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from headrace.api.app import create_app
from headrace.config import Settings
from headrace.services.runtime import Embedded, Runtime
from headrace.testing.servers import serve

SECRET = "tok-7f3a9c-very-secret"


def make_settings(tmp_path: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path}/headrace.db",
        "tasks": "headrace.testing.tasks",
        "vars": {"base": "http://127.0.0.1:9"},
        "secrets": {"token": SECRET},
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Embedded]:
    async with Embedded(make_settings(tmp_path)) as rt:
        yield rt


@pytest.fixture
async def api(runtime: Embedded) -> AsyncIterator[httpx.AsyncClient]:
    async with api_of(runtime) as client:
        yield client


@contextlib.asynccontextmanager
async def api_of(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `rt`'s API, served on a loopback port."""
    async with (
        serve(create_app(rt)) as url,
        httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client,
    ):
        yield client
