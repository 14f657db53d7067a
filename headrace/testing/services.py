"""Real Postgres and Redis for tests: each test session gets its own database and key prefix,
so the shared servers are never flushed or restarted. A server that does not answer fails
the session with a message saying how to get one; nothing is skipped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def postgres_url() -> str:
    return os.environ.get("HEADRACE_TEST_POSTGRES", DEFAULT_POSTGRES)


def redis_url() -> str:
    return os.environ.get("HEADRACE_TEST_REDIS", DEFAULT_REDIS)


class ServiceMissing(RuntimeError):
    pass


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the test server; dropped afterwards. Yields its URL."""
    name = f"headrace_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(postgres_url(), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise ServiceMissing(
            f"no Postgres at {postgres_url()} ({e}); start one (pg_ctlcluster 15 main start) or "
            "set HEADRACE_TEST_POSTGRES=postgresql://user@host:port/db"
        ) from None
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = postgres_url().rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_prefix() -> Iterator[tuple[str, str]]:
    """(url, prefix): a key prefix of its own on the test Redis; its keys are deleted after."""
    import redis  # a dev dependency, not the package's

    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        raise ServiceMissing(
            f"no Redis at {redis_url()} ({e}); start one (redis-server --port 6379) or set "
            "HEADRACE_TEST_REDIS=redis://host:port/db"
        ) from None
    prefix = f"headrace-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield redis_url(), prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
