"""Outbox rows belong to the process that wrote them, and say which attempt a job row is for.

- `processes`: every process that writes the outbox says it is alive (`alive_until`, ms,
  renewed by its heartbeat). The relay takes only rows whose holder is gone (or released
  them), so rows of a live process are never sent twice, however old they are.
- `outbox.holder`: the process that wrote the row (NULL: released to any relay); indexed, so
  a relay reads the rows of the dead, not every row of the living.
- `outbox.node_id`, `outbox.attempt`: a job row's attempt. The relay never sends a job
  whose attempt has ended, and the commit that ends an attempt deletes its job rows.
- `outbox.held_until` goes: holds are now the holder's liveness.
- SQLite: the outbox's ids are never reused (AUTOINCREMENT), so a batched delete of
  published ids can never hit a newer row.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "processes",
        sa.Column("holder", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("alive_until", sa.BigInteger, nullable=False),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(
        "outbox",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        batch.drop_column("held_until")
        batch.add_column(sa.Column("holder", sa.String(64), nullable=True))
        batch.add_column(sa.Column("node_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer, nullable=True))
    op.create_index("outbox_by_attempt", "outbox", ["key", "node_id", "attempt"])
    op.create_index("outbox_by_holder", "outbox", ["holder"])


def downgrade() -> None:
    op.drop_index("outbox_by_holder", "outbox")
    op.drop_index("outbox_by_attempt", "outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("attempt")
        batch.drop_column("node_id")
        batch.drop_column("holder")
        batch.add_column(sa.Column("held_until", sa.BigInteger, nullable=True))
    op.drop_table("processes")
