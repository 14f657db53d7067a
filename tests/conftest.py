"""Shared test settings (a pinned hypothesis profile so CI is deterministic) and servers."""

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings

from headrace.testing.kafka import Tansu, external_broker

settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci")


# --- servers: the configured ones, or throwaway ones started from the installed binaries ---

_throwaways: list[object] = []


def _answers_postgres(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def _answers_redis(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def pytest_sessionstart(session: object) -> None:
    """Where no Postgres or Redis answers at the configured address, start a throwaway one;
    if that fails too, the tests that need it fail saying how to get one (never skip)."""
    import os
    import tempfile
    from pathlib import Path

    from headrace.testing import services, throwaway

    if not _answers_postgres(services.postgres_url()):
        try:
            pg = throwaway.ThrowawayPostgres()
            pg.init()
            pg.start()
            _throwaways.append(pg)
            os.environ["HEADRACE_TEST_POSTGRES"] = pg.url
        except Exception as e:  # the tests will say what is missing
            print(f"could not start a throwaway Postgres: {e}")
    if not _answers_redis(services.redis_url()):
        try:
            rd = throwaway.ThrowawayRedis(Path(tempfile.mkdtemp(prefix="headrace-redis-")))
            rd.start()
            _throwaways.append(rd)
            os.environ["HEADRACE_TEST_REDIS"] = rd.url
        except Exception as e:
            print(f"could not start a throwaway Redis: {e}")


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    import signal

    from headrace.testing import throwaway

    for server in _throwaways:
        if isinstance(server, throwaway.ThrowawayPostgres):
            server.remove()
        elif isinstance(server, throwaway.ThrowawayRedis):
            server.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka-protocol broker for the module: HEADRACE_TEST_KAFKA, or the test broker."""
    external = external_broker()
    if external:
        yield external
        return
    with Tansu(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker.bootstrap


# --- nothing blocks the event loop ----------------------------------------------------------

SLOW_CALLBACK_S = 0.5  # a callback holding the loop this long is a blocking call (a busy host)


@pytest.fixture
async def never_blocks_the_loop(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Run the test with asyncio's debug mode: a callback that holds the event loop longer
    than SLOW_CALLBACK_S during the test (not its setup: store migrations run there, before
    anything else) fails it. Use it with `pytest.mark.usefixtures`."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_S
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        yield
    logged = caplog.get_records("call")
    slow = [r.getMessage() for r in logged if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, slow
