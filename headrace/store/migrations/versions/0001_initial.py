"""The first schema: workflows, runs, node states, events, outbox, timers.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ms = sa.BigInteger  # times are integer milliseconds since the epoch
json_text = sa.Text  # JSON documents, encoded by the store


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("ir_hash", sa.String(80), nullable=False),
        sa.Column("ir", json_text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", ms, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("workflow_name", sa.String(100), nullable=False),
        sa.Column("workflow_version", sa.Integer, nullable=False),
        sa.Column("ir_hash", sa.String(80), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("inputs", json_text, nullable=False),
        sa.Column("vars", json_text, nullable=False),
        sa.Column("signals", json_text, nullable=False),
        sa.Column("outputs", json_text),
        sa.Column("error", json_text),
        sa.Column("failed_node", sa.String(200)),
        sa.Column("cost_cents", sa.BigInteger, nullable=False),
        sa.Column("created_at", ms, nullable=False),
        sa.Column("started_at", ms),
        sa.Column("ended_at", ms),
        sa.Column("idempotency_key", sa.String(200), unique=True),
    )
    op.create_index("runs_by_status", "runs", ["status", "created_at"])
    op.create_index("runs_by_workflow", "runs", ["workflow_name", "created_at"])
    op.create_index("runs_by_created", "runs", ["created_at", "run_id"])
    op.create_table(
        "node_states",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(200), primary_key=True),
        sa.Column("parent", sa.String(100)),
        sa.Column("idx", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("output", json_text),
        sa.Column("error", json_text),
        sa.Column("scheduled_at", ms),
        sa.Column("started_at", ms),
        sa.Column("ended_at", ms),
        sa.Column("cost_cents", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("launched", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
    )
    op.create_index("node_states_children", "node_states", ["run_id", "parent", "idx"])
    op.create_table(
        "events",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("at", ms, nullable=False),
        sa.Column("data", json_text, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(100), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("headers", json_text, nullable=False),
        sa.Column("created_at", ms, nullable=False),
    )
    op.create_table(
        "timers",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("timer_id", sa.String(250), primary_key=True),
        sa.Column("due_at", ms, nullable=False),
        sa.Column("data", json_text, nullable=False),
    )
    op.create_index("timers_by_due", "timers", ["due_at"])


def downgrade() -> None:
    for table in ("timers", "outbox", "events", "node_states", "runs", "workflows"):
        op.drop_table(table)
