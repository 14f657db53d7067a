"""Apply the schema migrations (Alembic) to a database URL."""

from __future__ import annotations

import threading

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

# Alembic keeps the running migration in module globals (`alembic.context`, `alembic.op`), so
# two upgrades in one process must not overlap; across processes the database serialises them.
_lock = threading.Lock()


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", "headrace.store:migrations")
    return config


def head() -> str:
    """The newest revision."""
    return str(ScriptDirectory.from_config(_config()).get_current_head())


def upgrade(sqlalchemy_url: str) -> None:
    """Bring the schema to the newest revision; safe to run from several processes and
    threads at once (Postgres: under an advisory lock, see migrations/env.py)."""
    config = _config()
    # The config is an INI parser: a literal % (URL escapes, passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url.replace("%", "%%"))
    with _lock:
        command.upgrade(config, "head")
