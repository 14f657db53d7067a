"""The Postgres store's SQL beside the commit's (commit.py): flags, the outbox, loads."""

from __future__ import annotations

from headrace.store import rows

FLAG_UPSERT = (
    "INSERT INTO flags (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) "
    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
FLAG_CHANGE = (
    "INSERT INTO flag_changes (name, old, new, who, why, at) VALUES ($1, $2, $3, $4, $5, $6)"
)

# Rows of dead holders (or released), oldest first; the stale job rows among them (their
# attempt is no longer open) are deleted, not returned.
PENDING_OUTBOX = f"""
WITH due AS (
    SELECT o.id, o.topic, o.key, o.payload, o.headers, o.node_id IS NULL OR EXISTS (
        SELECT 1 FROM node_states n WHERE n.run_id = o.key AND n.node_id = o.node_id
        AND n.attempt = o.attempt AND n.status IN {rows.OPEN_ATTEMPT}) AS open
    FROM outbox o WHERE o.holder IS NULL OR o.holder = ANY($1::text[])
    ORDER BY o.id LIMIT $2
), stale AS (
    DELETE FROM outbox WHERE id IN (SELECT id FROM due WHERE NOT open)
)
SELECT id, topic, key, payload, headers FROM due WHERE open ORDER BY id"""

NODES = f"SELECT run_id, {rows.NODE_SELECT} FROM node_states WHERE run_id = ANY($1)"
NODES_OF = {  # a reload to decide needs the top-level nodes and the open map children only
    "all": NODES,
    "open": f"{NODES} AND parent IS NULL UNION ALL {NODES} AND {rows.OPEN_CHILD}",
    "none": f"{NODES} AND parent IS NULL",
}
NAMED_NODES = f"""
SELECT run_id, {rows.NODE_SELECT} FROM node_states
WHERE (run_id, node_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"""

OPEN_ATTEMPTS = f"""
SELECT n.run_id, n.node_id, n.attempt
FROM unnest($1::text[], $2::text[], $3::int[]) AS k(run_id, node_id, attempt)
JOIN node_states n ON n.run_id = k.run_id AND n.node_id = k.node_id AND n.attempt = k.attempt
WHERE n.status IN {rows.OPEN_ATTEMPT}"""
