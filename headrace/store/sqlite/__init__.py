"""SQLite store (embedded mode): WAL, one connection, called on the event loop.

SQLite calls are short and local, so they run inline: a thread hop would cost more than the
call. Durability is PRAGMA synchronous: NORMAL (default; survives a process crash, may lose
the last commits on power loss) or FULL.
"""

from headrace.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
