"""Build adapters from URLs. The only place that chooses a backend."""

from __future__ import annotations

from urllib.parse import urlparse

from headrace.bus import Bus, MemoryBus
from headrace.config import Settings
from headrace.errors import InputError
from headrace.store import Store
from headrace.store.sqlite import SqliteStore


def build_store(settings: Settings) -> Store:
    url = settings.database_url
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        if not path:
            raise InputError("HEADRACE_DATABASE_URL", "give a file: sqlite:///.headrace/h.db")
        return SqliteStore(path, synchronous=settings.sqlite_synchronous)
    raise InputError(
        "HEADRACE_DATABASE_URL", f"unsupported database {url!r} (this build has sqlite:///PATH)"
    )


def build_bus(settings: Settings) -> Bus:
    scheme = urlparse(settings.bus).scheme
    if scheme == "memory":
        return MemoryBus()
    raise InputError("HEADRACE_BUS", f"unsupported bus {settings.bus!r} (this build has memory://)")
