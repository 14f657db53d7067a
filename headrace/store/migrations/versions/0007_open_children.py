"""A partial index of the map children not yet ended, so a run is reloaded to decide
without reading the children that are done: a coordinator that applies one child's result
of a 100,000-wide map reads the open ones only (`load_run(children="open")`).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# as headrace/store/rows.py's OPEN_CHILD: a query uses the index only on the same terms
OPEN_CHILD = (
    "parent IS NOT NULL AND status IN ('pending', 'retrying', 'running', 'scheduled', 'waiting')"
)


def upgrade() -> None:
    where = sa.text(OPEN_CHILD)
    op.create_index(
        "node_states_open", "node_states", ["run_id"], postgresql_where=where, sqlite_where=where
    )


def downgrade() -> None:
    op.drop_index("node_states_open", "node_states")
