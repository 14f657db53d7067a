"""The SQLite commit's writes, inside the transaction `SqliteStore.commit` holds: the run rows
(version-checked), then their events, nodes, timers and outbox rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from headrace.events import RUN_TERMINAL, encode
from headrace.store import rows
from headrace.store.base import Transition

_NODE_UPSERT = (
    f"INSERT INTO node_states ({', '.join(rows.NODE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(rows.NODE_COLUMNS))}) ON CONFLICT (run_id, node_id) DO UPDATE "
    "SET " + ", ".join(f"{c} = excluded.{c}" for c in rows.NODE_COLUMNS[4:])
)
# the job rows of an attempt that ended: never to be sent again
_DELETE_JOBS = "DELETE FROM outbox WHERE key = ? AND node_id = ? AND attempt = ?"
_RUN_UPDATE = (
    "UPDATE runs SET "
    + ", ".join(f"{c} = ?" for c in rows.RUN_COLUMNS)
    + " WHERE run_id = ? AND version = ?"
)


def write(
    db: sqlite3.Connection,
    transitions: list[Transition],
    sent: Sequence[int],
    holder: str | None,
    now: int,
) -> tuple[list[Transition], list[int], list[int]]:
    """The transitions applied (their version check passed) and the ids of their outbox
    rows: messages, then local jobs. Deletes the `sent` rows too."""
    applied = _write_runs(db, transitions)
    _write_details(db, applied)
    pins = [(t.state.run_id, t.pin, now) for t in applied if t.new and t.pin is not None]
    if pins:
        db.executemany(
            "INSERT INTO run_pins (run_id, bus, at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", pins
        )
    outbox_ids = _write_outbox(db, applied, "messages", holder, now)
    local_ids = _write_outbox(db, applied, "local", holder, now)
    if sent:
        db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", ranges(sent))
    return applied, outbox_ids, local_ids


def _write_runs(db: sqlite3.Connection, transitions: list[Transition]) -> list[Transition]:
    """Write the run rows; the transitions whose version check passed."""
    updates = [t for t in transitions if not t.new]
    if len(updates) > 1:  # fast path: one statement for all, if no version has moved
        db.execute("SAVEPOINT runs")
        rows_ = [(*_update_values(t)[:-2], t.state.run_id, t.state.version) for t in updates]
        if db.executemany(_RUN_UPDATE, rows_).rowcount == len(updates):
            db.execute("RELEASE runs")
            return [t for t in transitions if not t.new or _write_run(db, t)]
        db.execute("ROLLBACK TO runs")
        db.execute("RELEASE runs")
    return [t for t in transitions if _write_run(db, t)]


def _write_run(db: sqlite3.Connection, t: Transition) -> bool:
    if t.new:
        try:
            db.execute(
                "INSERT INTO runs (run_id, workflow_name, workflow_version, ir_hash, inputs, "
                "vars, created_at, idempotency_key, labels, " + ", ".join(rows.RUN_COLUMNS) + ") "
                f"VALUES ({', '.join('?' * (9 + len(rows.RUN_COLUMNS)))})",
                rows.new_run_values(t),
            )
        except sqlite3.IntegrityError:
            return False
        return True
    cur = db.execute(_RUN_UPDATE, _update_values(t))
    return cur.rowcount == 1


def _write_details(db: sqlite3.Connection, applied: list[Transition]) -> None:
    events, nodes, timers, fired, ended = [], [], [], [], []
    for t in applied:
        s = t.state
        events += [
            (s.run_id, e.seq, type(e).__name__, e.at_ms, encode(e).decode()) for e in t.events
        ]
        nodes += [rows.node_values(s.run_id, nid, s.nodes[nid]) for nid in rows.touched(t.events)]
        timers += [(s.run_id, tm.timer_id, tm.due_at_ms, encode(tm).decode()) for tm in t.timers]
        fired += [(s.run_id, tm.timer_id) for tm in t.fired]
        if s.status in RUN_TERMINAL:
            ended.append((s.run_id,))
    jobs_ended = [a for t in applied for a in rows.ended_attempts(t)]
    for sql, values in (
        ("INSERT INTO events (run_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)", events),
        (_NODE_UPSERT, nodes),
        ("DELETE FROM timers WHERE run_id = ? AND timer_id = ?", fired),
        (
            "INSERT OR REPLACE INTO timers (run_id, timer_id, due_at, data) VALUES (?, ?, ?, ?)",
            timers,
        ),
        ("DELETE FROM timers WHERE run_id = ?", ended),
        (_DELETE_JOBS, jobs_ended),
    ):
        if values:  # an empty executemany still prepares its statement
            db.executemany(sql, values)


def _write_outbox(
    db: sqlite3.Connection, applied: list[Transition], which: str, holder: str | None, now: int
) -> list[int]:
    """Write the `messages` (or `local` jobs) of the transitions; their ids. Ids come from
    the table's AUTOINCREMENT sequence (never reused), so they are known without a read
    back: this transaction holds the write lock."""
    values = [
        rows.outbox_values(t.state.run_id, m, holder, now)
        for t in applied
        for m in getattr(t, which)
    ]
    if not values:
        return []
    first = db.execute(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) + 1"
    ).fetchone()[0]
    db.executemany(
        "INSERT INTO outbox (id, topic, key, payload, headers, holder, node_id, attempt, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(first + i, *v) for i, v in enumerate(values)],
    )
    return list(range(first, first + len(values)))


def _update_values(t: Transition) -> tuple[Any, ...]:
    s = t.state
    values = rows.run_values(s)
    return (*values[:1], s.version + 1, *values[2:], s.run_id, s.version)


def ranges(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous id ranges (a commit writes contiguous ids, so usually one)."""
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out
