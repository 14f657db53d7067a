"""Outbox rows held by the process that runs their job itself (a local job): the relay
leaves a row alone until its `held_until` (ms) has passed; heartbeats push it on.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("held_until", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("held_until")
