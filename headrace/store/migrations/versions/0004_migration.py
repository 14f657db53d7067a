"""The Redis → Kafka migration: which bus each run is pinned to, the figures every process
reports each second, and the notes of the migration (the latency baseline).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_pins",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("bus", sa.String(10), nullable=False),  # redis | kafka
        sa.Column("at", sa.BigInteger, nullable=False),  # pinned (or re-pinned) at, ms
    )
    op.create_index("run_pins_by_at", "run_pins", ["at"])
    op.create_table(
        "process_figures",
        sa.Column("process", sa.String(200), primary_key=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("figures", sa.Text, nullable=False),  # JSON: the last second's counters
    )
    op.create_table(
        "migration_notes",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),  # JSON
        sa.Column("at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("migration_notes")
    op.drop_table("process_figures")
    op.drop_table("run_pins")
