"""Connecting to Postgres: the URL's arguments, the schema's revision, the pool's
connections, and the driver's errors as InfraError."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from headrace.errors import InfraError, InputError

Row = asyncpg.Record
if TYPE_CHECKING:  # the stubs' generic; at run time the class takes no parameter
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[Row]
# what the driver raises for a server that refused, vanished or did not answer
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

POOL_TIMEOUT_S = 10.0  # waiting for a connection longer than this raises InfraError
CONNECT_TIMEOUT_S = 10.0
# The commit's plan is the same for every batch; a custom plan per execute (Postgres's choice
# for a statement's first five) cost 1.5 ms against 0.4 ms for the generic one.
_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


def connect_args(url: str) -> dict[str, Any]:
    """asyncpg's `connect` arguments for a libpq-style URL: `connect_timeout` and
    `options=-cname=value ...` are libpq's, which asyncpg would send as server settings."""
    u = urlsplit(url)
    query = dict(parse_qsl(u.query))
    settings = dict(_SERVER_SETTINGS)
    try:
        timeout = float(query.pop("connect_timeout", CONNECT_TIMEOUT_S))
    except ValueError:
        raise InputError("database_url", "connect_timeout: expected seconds") from None
    for option in unquote(query.pop("options", "")).split():
        name, _, value = option.removeprefix("-c").partition("=")
        if not value:
            raise InputError("database_url", f"options: expected -cname=value, not {option!r}")
        settings[name] = value
    dsn = urlunsplit((u.scheme, u.netloc, u.path, urlencode(query), u.fragment))
    return {"dsn": dsn, "timeout": timeout, "server_settings": settings}


async def schema_revision(url: str, which: str) -> str | None:
    """The schema's revision, read without Alembic; None when there is no schema yet.
    InfraError, naming `which` database, when it does not answer."""
    try:
        conn = await asyncpg.connect(**connect_args(url))
    except DRIVER_ERRORS as e:
        raise InfraError(f"postgres ({which}): {type(e).__name__}: {e}") from e
    try:
        row = await conn.fetchrow("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return None
    except DRIVER_ERRORS as e:
        raise InfraError(f"postgres ({which}): {type(e).__name__}: {e}") from e
    finally:
        await conn.close()
    return str(row[0]) if row else None


def sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise InputError("database_url", "expected postgresql://user@host:port/database")
    return f"postgresql+psycopg://{rest}"


async def keep_session(conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is: the store never changes a pooled
    connection's session (no SET, LISTEN, session advisory lock or cursor), and asyncpg rolls back
    a transaction left open before calling this. Its default reset (RESET ALL, UNLISTEN *,
    ...) cost a round trip on every release."""


def infra(e: BaseException) -> InfraError:
    return InfraError(f"postgres: {type(e).__name__}: {e}")


@asynccontextmanager
async def acquire(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    try:
        async with pool.acquire(timeout=POOL_TIMEOUT_S) as conn:
            yield conn
    except DRIVER_ERRORS as e:
        raise infra(e) from e
