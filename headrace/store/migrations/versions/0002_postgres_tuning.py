"""Postgres only: 64-bit outbox ids, byte-order run ids and workflow names, room for updates.

- A serial outbox id runs out after 2^31 messages (days at cluster rates).
- Listing orders by run id and workflow name: the "C" collation orders them as SQLite does,
  whatever the database's locale, and compares faster.
- Every transition rewrites its run row and node rows: with free room on each page the new
  row version stays on it and no index is touched (a HOT update). Measured on a commit of
  500 single-event transitions: 24k -> 37k transitions/s.

SQLite needs none of it (its integer keys are 64-bit, its text compares as bytes).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPDATED_TABLES = ("runs", "node_states")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE outbox ALTER COLUMN id TYPE bigint")
    op.execute("ALTER SEQUENCE outbox_id_seq AS bigint")
    op.execute('ALTER TABLE runs ALTER COLUMN run_id TYPE varchar(36) COLLATE "C"')
    op.execute('ALTER TABLE workflows ALTER COLUMN name TYPE varchar(100) COLLATE "C"')
    for table in UPDATED_TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in UPDATED_TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    op.execute('ALTER TABLE workflows ALTER COLUMN name TYPE varchar(100) COLLATE "default"')
    op.execute('ALTER TABLE runs ALTER COLUMN run_id TYPE varchar(36) COLLATE "default"')
    op.execute("ALTER SEQUENCE outbox_id_seq AS integer")
    op.execute("ALTER TABLE outbox ALTER COLUMN id TYPE integer")
