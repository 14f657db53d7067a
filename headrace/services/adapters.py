"""Build adapters from URLs. The only place that chooses a backend; optional backends are
imported only when asked for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from headrace.bus import Bus, MemoryBus
from headrace.bus.headers import KAFKA, REDIS
from headrace.bus.topics import CANCELS
from headrace.clock import SYSTEM, Clock
from headrace.config import Settings
from headrace.errors import InputError
from headrace.flags.definitions import FlagValue
from headrace.store import Store

if TYPE_CHECKING:
    from headrace.bus.kafka import KafkaBus
    from headrace.bus.redis import RedisBus


def build_store(settings: Settings, clock: Clock = SYSTEM) -> Store:
    url = settings.database_url
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from headrace.store.sqlite import SqliteStore

        if settings.read_database_url:
            raise InputError(
                "HEADRACE_READ_DATABASE_URL", "only beside a postgresql:// HEADRACE_DATABASE_URL"
            )

        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        if not path:
            raise InputError("HEADRACE_DATABASE_URL", "give a file: sqlite:///.headrace/h.db")
        return SqliteStore(path, synchronous=settings.sqlite_synchronous, clock=clock)
    if scheme in ("postgresql", "postgres"):
        from headrace.store.postgres import PostgresStore

        read = _read_database(settings.read_database_url)
        return PostgresStore(_postgresql(url), read_url=read, clock=clock)
    raise InputError(
        "HEADRACE_DATABASE_URL",
        f"unsupported database {url!r} (sqlite:///PATH or postgresql://user@host:port/db)",
    )


def _postgresql(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def _read_database(url: str | None) -> str | None:
    if not url:
        return None
    if urlparse(url).scheme not in ("postgresql", "postgres"):
        raise InputError(
            "HEADRACE_READ_DATABASE_URL", f"expected postgresql://user@host:port/db, not {url!r}"
        )
    return _postgresql(url)


def build_bus(
    settings: Settings,
    flags: Mapping[str, FlagValue] | None = None,
    parts: Mapping[str, Bus] | None = None,
) -> Bus:
    """The bus HEADRACE_BUS names; with HEADRACE_KAFKA_URL, the migrating bus over `parts`
    (`migration_buses`), following the live `flags`."""
    if settings.kafka_url:
        from headrace.bus.migrating import MigratingBus

        if parts is None or flags is None:
            raise InputError("HEADRACE_KAFKA_URL", "the migrating bus needs its buses and flags")
        return MigratingBus(parts, flags)
    scheme = urlparse(settings.bus).scheme
    if scheme == "memory":
        return MemoryBus(visibility_ms=int(settings.lease_s * 1000))
    if scheme in ("redis", "rediss"):
        return build_redis(settings)
    if scheme == "kafka":
        return build_kafka(settings.bus, settings, "HEADRACE_BUS")
    raise InputError(
        "HEADRACE_BUS",
        f"unsupported bus {settings.bus!r} (memory://, redis://host:port/db or kafka://host:port)",
    )


def migration_buses(settings: Settings) -> dict[str, Bus]:
    """The two buses of the Redis → Kafka migration, by name (none without
    HEADRACE_KAFKA_URL): the migrating bus steers them, the shadow reads them."""
    if not settings.kafka_url:
        return {}
    if urlparse(settings.bus).scheme not in ("redis", "rediss"):
        raise InputError("HEADRACE_KAFKA_URL", "the migrating bus needs HEADRACE_BUS=redis://...")
    return {REDIS: build_redis(settings), KAFKA: build_kafka(settings.kafka_url, settings)}


def build_redis(settings: Settings) -> RedisBus:
    from headrace.bus.redis import RedisBus
    from headrace.migration.shadow import GROUP as SHADOW

    try:
        return RedisBus(
            settings.bus,
            prefix=settings.bus_prefix,
            visibility_ms=int(settings.lease_s * 1000),
            capped=[CANCELS],  # a group per worker: one that left must not hold trimming back
            observers=[SHADOW],  # a shadow that stopped must not either
        )
    except ValueError as e:  # the URL
        raise InputError("HEADRACE_BUS", str(e)) from None


def build_kafka(url: str, settings: Settings, field: str = "HEADRACE_KAFKA_URL") -> KafkaBus:
    try:
        from headrace.bus.kafka import KafkaBus
    except ModuleNotFoundError as e:  # confluent-kafka: an extra
        raise InputError(
            field, f"the Kafka bus needs the kafka extra: pip install 'headrace[kafka]' ({e})"
        ) from None

    bootstrap = url.removeprefix("kafka://").strip("/")
    if not url.startswith("kafka://") or not bootstrap:
        raise InputError(field, f"give the brokers: kafka://host:port, not {url!r}")
    return KafkaBus(
        bootstrap,
        prefix=settings.bus_prefix,
        visibility_ms=int(settings.lease_s * 1000),
        partitions=settings.kafka_partitions,
        replication=settings.kafka_replication,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        fetch_wait_ms=settings.kafka_fetch_wait_ms,
    )
