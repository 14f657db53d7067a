"""Runs carry labels: `key: value` strings given at the start, to find runs by (issue 22).

`runs.labels` is JSON text like `inputs`; a run started before has none (`{}`). The main
tables are searched by it without an index: the read models of phase 4 index it.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("labels", sa.Text, nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("labels")
