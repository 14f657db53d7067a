"""Build adapters from URLs. The only place that chooses a backend; optional backends are
imported only when asked for."""

from __future__ import annotations

from urllib.parse import urlparse

from headrace.bus import Bus, MemoryBus
from headrace.bus.topics import CANCELS
from headrace.config import Settings
from headrace.errors import InputError
from headrace.store import Store


def build_store(settings: Settings) -> Store:
    url = settings.database_url
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from headrace.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        if not path:
            raise InputError("HEADRACE_DATABASE_URL", "give a file: sqlite:///.headrace/h.db")
        return SqliteStore(path, synchronous=settings.sqlite_synchronous)
    if scheme in ("postgresql", "postgres"):
        from headrace.store.postgres import PostgresStore

        return PostgresStore(url.replace("postgres://", "postgresql://", 1))
    raise InputError(
        "HEADRACE_DATABASE_URL",
        f"unsupported database {url!r} (sqlite:///PATH or postgresql://user@host:port/db)",
    )


def build_bus(settings: Settings) -> Bus:
    scheme = urlparse(settings.bus).scheme
    visibility_ms = int(settings.lease_s * 1000)
    if scheme == "memory":
        return MemoryBus(visibility_ms=visibility_ms)
    if scheme in ("redis", "rediss"):
        from headrace.bus.redis import RedisBus

        return RedisBus(
            settings.bus,
            prefix=settings.bus_prefix,
            visibility_ms=visibility_ms,
            capped=[CANCELS],  # a group per worker: one that left must not hold trimming back
        )
    if scheme == "kafka":
        return build_kafka(settings.bus, settings)
    raise InputError(
        "HEADRACE_BUS",
        f"unsupported bus {settings.bus!r} (memory://, redis://host:port/db or kafka://host:port)",
    )


def build_kafka(url: str, settings: Settings) -> Bus:
    from headrace.bus.kafka import KafkaBus

    bootstrap = url.removeprefix("kafka://").strip("/")
    if not bootstrap:
        raise InputError("HEADRACE_BUS", f"give the brokers: kafka://host:port, not {url!r}")
    return KafkaBus(
        bootstrap,
        prefix=settings.bus_prefix,
        visibility_ms=int(settings.lease_s * 1000),
        partitions=settings.kafka_partitions,
        replication=settings.kafka_replication,
        session_timeout_ms=settings.kafka_session_timeout_ms,
    )
