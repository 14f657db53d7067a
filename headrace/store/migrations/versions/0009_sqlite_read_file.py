"""SQLite keeps its read models in a file of their own (issue 22): `runs_read`,
`states_read` and `run_counts` leave the store's file. The store attaches
`<name>.read.db` and makes them there (store/sqlite/read_models.py); a projector's catch-up
fills them from the event log. Postgres is unchanged (HEADRACE_READ_DATABASE_URL moves its
read models).

Revision ID: 0009
Revises: 0008
"""

import importlib

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = ("run_counts", "states_read", "runs_read")
_0008 = "headrace.store.migrations.versions.0008_read_models"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            op.drop_table(table)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # back in the store's file, empty:
        importlib.import_module(_0008).upgrade()  # a catch-up fills them
