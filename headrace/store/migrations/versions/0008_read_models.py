"""The read models (issue 22): `runs_read` and `states_read`, kept by the projector from
`workflow.events` (headrace/projections/, headrace/runtime/projector.py). Nothing on the
write path reads or writes them.

- `runs_read`: one row per run; `last_seq` is the last event applied (the projector's
  position for the run, committed with the row). Indexed for the list queries: newest
  first, by status, by workflow and status, by end time. Postgres keeps `labels` as jsonb
  with a GIN index for label filters, and `label_values` (every label's value, GIN) and a
  pattern index on `run_id` for `q`.
- `run_counts`: runs and their open nodes by workflow and status, kept with the rows (what
  a count or a dashboard asks without a filter, without a scan).
- `states_read`: one row per node with an event (map children included);
  `output_ref` is the seq of the event that holds the node's output.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    json = postgresql.JSONB if postgres else sa.Text
    op.create_table(
        "runs_read",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("workflow_name", sa.String(200), nullable=False, server_default=""),
        sa.Column("workflow_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("created_at", sa.BigInteger, nullable=True),
        sa.Column("started_at", sa.BigInteger, nullable=True),
        sa.Column("ended_at", sa.BigInteger, nullable=True),
        sa.Column("active_nodes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost_cents", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("labels", json, nullable=False, server_default="{}"),
        sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_event_at", sa.BigInteger, nullable=True),
        sa.Column("error_type", sa.String(200), nullable=True),
    )
    op.create_index("runs_read_newest", "runs_read", ["created_at", "run_id"])
    op.create_index("runs_read_by_status", "runs_read", ["status", "created_at", "run_id"])
    op.create_index(
        "runs_read_by_workflow", "runs_read", ["workflow_name", "status", "created_at", "run_id"]
    )
    op.create_index("runs_read_by_end", "runs_read", ["ended_at", "run_id"])
    if postgres:  # label filters (labels @> ...), `q` (a run id's start, a label's value)
        op.execute("CREATE INDEX runs_read_by_label ON runs_read USING gin (labels jsonb_path_ops)")
        values = postgresql.ARRAY(sa.Text)
        op.add_column(
            "runs_read", sa.Column("label_values", values, nullable=False, server_default="{}")
        )
        op.execute("CREATE INDEX runs_read_by_label_value ON runs_read USING gin (label_values)")
        op.execute("CREATE INDEX runs_read_by_id_prefix ON runs_read (run_id text_pattern_ops)")
    op.create_table(
        "states_read",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=True),
        sa.Column("ended_at", sa.BigInteger, nullable=True),
        sa.Column("output_ref", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )

    op.create_table(
        "run_counts",
        sa.Column("workflow_name", sa.String(200), primary_key=True),
        sa.Column("workflow_version", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("runs", sa.BigInteger, nullable=False),
        sa.Column("active_nodes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_counts")
    op.drop_table("states_read")
    op.drop_table("runs_read")
