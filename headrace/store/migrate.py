"""Apply the schema migrations (Alembic) to a database URL.

Alembic is imported only when it is used: its import costs about a second, which a store
whose schema is already at `HEAD` need not pay on every start.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from headrace.errors import InfraError

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0009"  # the newest revision (a test checks it against the migrations)

# Alembic keeps the running migration in module globals (`alembic.context`, `alembic.op`), so
# two upgrades in one process must not overlap; across processes the database serialises them.
_lock = threading.Lock()


def not_at_head(which: str, revision: str | None) -> str:
    """Why a store that must not be migrated (a check of it) cannot be opened."""
    if revision is None:
        return f"{which} holds no headrace database (headrace db upgrade makes one)"
    return f"{which} is at schema revision {revision}, not {HEAD} (headrace db upgrade)"


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "headrace.store:migrations")
    return config


def head() -> str:
    """The newest revision, as Alembic finds it."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_config()).get_current_head())


def upgrade(sqlalchemy_url: str) -> None:
    """Bring the schema to the newest revision; safe to run from several processes and
    threads at once (Postgres: under an advisory lock, see migrations/env.py)."""
    import sqlalchemy.exc
    from alembic import command

    config = _config()
    # The config is an INI parser: a literal % (URL escapes, passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url.replace("%", "%%"))
    with _lock:
        try:
            command.upgrade(config, "head")
        except sqlalchemy.exc.DBAPIError as e:
            dialect = sqlalchemy_url.partition(":")[0].partition("+")[0]
            raise InfraError(f"{dialect}: migrations failed: {e.orig}") from e
