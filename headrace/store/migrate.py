"""Apply the schema migrations (Alembic) to a database URL."""

from __future__ import annotations

import threading

from alembic import command
from alembic.config import Config

# Alembic keeps the running migration in module globals (`alembic.context`, `alembic.op`), so
# two upgrades in one process must not overlap; across processes the database serialises them.
_lock = threading.Lock()


def upgrade(sqlalchemy_url: str) -> None:
    """Bring the schema to the newest revision; safe to run from several processes and
    threads at once (Postgres: under an advisory lock, see migrations/env.py)."""
    config = Config()
    config.set_main_option("script_location", "headrace.store:migrations")
    # The config is an INI parser: a literal % (URL escapes, passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url.replace("%", "%%"))
    with _lock:
        command.upgrade(config, "head")
