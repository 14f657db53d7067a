"""Feature flags: their live values, and every change with who, when, old, new and why.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flags",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),  # JSON
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "flag_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("old", sa.Text),  # JSON; null: never set in the store before
        sa.Column("new", sa.Text, nullable=False),
        sa.Column("who", sa.String(100), nullable=False),
        sa.Column("why", sa.Text, nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
    )
    op.create_index("flag_changes_by_name", "flag_changes", ["name", "id"])


def downgrade() -> None:
    op.drop_table("flag_changes")
    op.drop_table("flags")
