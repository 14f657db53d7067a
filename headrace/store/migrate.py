"""Apply the schema migrations (Alembic) to a database URL."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config


def upgrade(sqlalchemy_url: str) -> None:
    """Bring the schema to the newest revision; safe to run from several processes at once."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per step is noise
    config = Config()
    config.set_main_option("script_location", "headrace.store:migrations")
    config.set_main_option("sqlalchemy.url", sqlalchemy_url)
    command.upgrade(config, "head")
