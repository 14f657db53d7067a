"""The Postgres commit: one statement of data-modifying CTEs over JSON-encoded rows, built
for the parts a batch needs (`commit_statement`) with its parameters (`commit_params`).
Why one statement: see headrace/store/postgres/__init__.py."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from headrace.events import RUN_TERMINAL, Message, encode
from headrace.store import rows
from headrace.store.base import Transition

_TEXT, _INT, _BIGINT = "text", "int", "bigint"
# Column -> array element type, per table, in the order of the row values in rows.py.
_RUN_TYPES = dict(
    zip(
        rows.RUN_COLUMNS,
        [_TEXT, _INT, _INT, _TEXT, _TEXT, _TEXT, _TEXT] + [_BIGINT] * 3,
        strict=True,
    )
)
_UPDATE_TYPES = {"run_id": _TEXT, **_RUN_TYPES}  # version: the one the writer read
_INSERT_TYPES = {
    "run_id": _TEXT,
    "workflow_name": _TEXT,
    "workflow_version": _INT,
    "ir_hash": _TEXT,
    "inputs": _TEXT,
    "vars": _TEXT,
    "created_at": _BIGINT,
    "idempotency_key": _TEXT,
    "labels": _TEXT,
    **_RUN_TYPES,
}
_EVENT_TYPES = {"run_id": _TEXT, "seq": _INT, "type": _TEXT, "at": _BIGINT, "data": _TEXT}
_NODE_TYPES = dict(
    zip(
        rows.NODE_COLUMNS,
        [_TEXT, _TEXT, _TEXT, _INT, _TEXT, _INT, _TEXT, _TEXT] + [_BIGINT] * 4 + [_INT, _INT, _INT],
        strict=True,
    )
)
_TIMER_TYPES = {"run_id": _TEXT, "timer_id": _TEXT, "due_at": _BIGINT, "data": _TEXT}
_FIRED_TYPES = {"run_id": _TEXT, "timer_id": _TEXT}
_OUTBOX_TYPES = {
    "run_id": _TEXT,
    "topic": _TEXT,
    "key": _TEXT,
    "payload": "bytea",
    "headers": _TEXT,
    "node_id": _TEXT,
    "attempt": _INT,
}
_ENDED_TYPES = {"run_id": _TEXT, "node_id": _TEXT, "attempt": _INT}
_PIN_TYPES = {"run_id": _TEXT, "bus": _TEXT}
_TABLES = {
    "u": _UPDATE_TYPES,
    "n": _INSERT_TYPES,
    "e": _EVENT_TYPES,
    "nd": _NODE_TYPES,
    "t": _TIMER_TYPES,
    "f": _FIRED_TYPES,
    "o": _OUTBOX_TYPES,
    "d": _ENDED_TYPES,
    "p": _PIN_TYPES,
}


def _rows(alias: str, ordinality: bool = False) -> str:
    """`(SELECT (r->>0)::type AS col, ... FROM jsonb_array_elements(%(alias)s)) AS alias`: a
    table's rows travel as one JSON array of arrays, encoded in C by msgspec (as a Postgres
    array per column, they cost the client more and the server no less)."""
    types = _TABLES[alias]
    cols = ", ".join(f"{_field(i, t)} AS {c}" for i, (c, t) in enumerate(types.items()))
    extra = ", x.i" if ordinality else ""
    source = f"jsonb_array_elements(%({alias})s::jsonb) WITH ORDINALITY AS x(r, i)"
    return f"(SELECT {cols}{extra} FROM {source}) AS {alias}"


def _field(index: int, sql_type: str) -> str:
    if sql_type == "bytea":  # msgspec writes bytes as base64
        return f"decode(x.r->>{index}, 'base64')"
    return f"(x.r->>{index})::{sql_type}"


def _set_excluded(columns: Sequence[str]) -> str:
    return ", ".join(f"{c} = excluded.{c}" for c in columns)


_APPLIED = "IN (SELECT run_id FROM ok)"
# The commit's parts: (name, what it needs present, the CTE). A batch's statement has only
# the parts its rows need: an empty part still costs the server its executor nodes (a W1
# commit's ten CTEs took ~40 µs more than its five).
_PARTS = (
    (
        "upd",
        "u",
        f"""
    UPDATE runs SET {", ".join(f"{c} = u.{c}" for c in _RUN_TYPES if c != "version")},
        version = u.version + 1
    FROM {_rows("u")}
    WHERE runs.run_id = u.run_id AND runs.version = u.version
    RETURNING runs.run_id""",
    ),
    (
        "ins",
        "n",
        f"""
    INSERT INTO runs ({", ".join(_INSERT_TYPES)}) SELECT * FROM {_rows("n")}
    ON CONFLICT DO NOTHING
    RETURNING run_id""",
    ),
    (
        "ev",
        "e",
        f"""
    INSERT INTO events ({", ".join(_EVENT_TYPES)})
    SELECT * FROM {_rows("e")} WHERE e.run_id {_APPLIED}""",
    ),
    (
        "nodes",
        "nd",
        f"""
    INSERT INTO node_states ({", ".join(_NODE_TYPES)})
    SELECT * FROM {_rows("nd")} WHERE nd.run_id {_APPLIED}
    ON CONFLICT (run_id, node_id) DO UPDATE SET {_set_excluded(rows.NODE_COLUMNS[4:])}""",
    ),
    (
        "fired",
        "f",
        f"""
    DELETE FROM timers USING {_rows("f")}
    WHERE timers.run_id = f.run_id AND timers.timer_id = f.timer_id AND f.run_id {_APPLIED}""",
    ),
    (
        "ended",
        "ended",
        f"""
    DELETE FROM timers WHERE run_id = ANY(%(ended)b::text[]) AND run_id {_APPLIED}""",
    ),
    (
        "tm",
        "t",
        f"""
    INSERT INTO timers ({", ".join(_TIMER_TYPES)})
    SELECT * FROM {_rows("t")} WHERE t.run_id {_APPLIED}
    ON CONFLICT (run_id, timer_id) DO UPDATE SET {_set_excluded(["due_at", "data"])}""",
    ),
    (
        "pins",
        "p",
        f"""
    INSERT INTO run_pins (run_id, bus, at)
    SELECT p.run_id, p.bus, %(now)b::bigint FROM {_rows("p")} WHERE p.run_id {_APPLIED}
    ON CONFLICT (run_id) DO NOTHING""",
    ),
    (
        "sent",
        "sent",
        """
    DELETE FROM outbox WHERE id = ANY(%(sent)b::bigint[])""",
    ),
    (
        "done",
        "d",
        f"""
    DELETE FROM outbox USING {_rows("d")}
    WHERE outbox.key = d.run_id AND outbox.node_id = d.node_id AND outbox.attempt = d.attempt
    AND d.run_id {_APPLIED}""",
    ),
    (
        "ob",
        "o",
        f"""
    INSERT INTO outbox (topic, key, payload, headers, node_id, attempt, holder, created_at)
    SELECT o.topic, o.key, o.payload, o.headers, o.node_id, o.attempt, %(holder)b::text,
        %(now)b::bigint
    FROM {_rows("o", ordinality=True)} WHERE o.run_id {_APPLIED} ORDER BY o.i
    RETURNING id""",
    ),
)


@functools.cache
def commit_statement(present: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    """The commit for a batch whose non-empty parameters are `present` (of "u", "n", "e",
    "nd", "f", "ended", "t", "p", "sent", "d", "o"), and its parameter names in order. The version
    checks (`upd`, `ins`) decide which runs apply (`ok`); every other part joins on them."""
    parts = [(name, cte) for name, need, cte in _PARTS if need in present]
    checks = [name for name, _ in parts if name in ("upd", "ins")]
    ok = " UNION ALL ".join(f"SELECT run_id FROM {c}" for c in checks)
    ctes = [f"{name} AS ({cte}\n)" for name, cte in parts if name in checks]
    ctes.append(f"ok AS ({ok or 'SELECT NULL::text AS run_id WHERE false'})")
    ctes += [f"{name} AS ({cte}\n)" for name, cte in parts if name not in checks]
    ids = "ARRAY(SELECT id FROM ob ORDER BY id)" if "o" in present else "'{}'::bigint[]"
    sql = "WITH " + ",\n".join(ctes) + f"\nSELECT ARRAY(SELECT run_id FROM ok), {ids}"
    text, names = _numbered(sql)
    return text, tuple(names)


def _numbered(sql: str) -> tuple[str, list[str]]:
    """`sql` with its `%(name)s` placeholders as `$1, $2...`, and the names in that order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m[1] not in names:
            names.append(m[1])
        return f"${names.index(m[1]) + 1}"

    return re.sub(r"%\((\w+)\)[bs]", number, sql), names


_JSON = msgspec.json.Encoder()


def commit_params(
    transitions: list[Transition], sent: Sequence[int], holder: str | None, now: int
) -> dict[str, Any]:
    """The parameters of the commit, only those with rows (see `commit_statement`): each
    table's rows as one JSON array of arrays. A run's timers are written so the statement
    never touches a row twice: an ended run's timers are all deleted (none inserted), a timer
    both fired and set again is upserted only. The outbox rows of every transition's
    messages come before those of the local jobs."""
    tables: dict[str, list[tuple[Any, ...]]] = {alias: [] for alias in _TABLES}
    ended: list[str] = []
    local: list[tuple[Any, ...]] = []
    for t in transitions:
        s = t.state
        if t.new:
            tables["n"].append(rows.new_run_values(t))
            if t.pin is not None:
                tables["p"].append((s.run_id, t.pin))
        else:
            tables["u"].append((s.run_id, *rows.run_values(s)))
        for e in t.events:
            tables["e"].append((s.run_id, e.seq, type(e).__name__, e.at_ms, encode(e).decode()))
        for nid in rows.touched(t.events):
            tables["nd"].append(rows.node_values(s.run_id, nid, s.nodes[nid]))
        if s.status in RUN_TERMINAL:
            ended.append(s.run_id)
        else:
            timers = {tm.timer_id: tm for tm in t.timers}
            for tid, tm in timers.items():
                tables["t"].append((s.run_id, tid, tm.due_at_ms, encode(tm).decode()))
            for tid in {tm.timer_id for tm in t.fired} - timers.keys():
                tables["f"].append((s.run_id, tid))
        tables["d"] += rows.ended_attempts(t)
        tables["o"] += [_outbox_row(s.run_id, m) for m in t.messages]
        local += [_outbox_row(s.run_id, m) for m in t.local]
    tables["o"] += local
    params: dict[str, Any] = {a: _JSON.encode(r).decode() for a, r in tables.items() if r}
    if ended:
        params["ended"] = ended
    if sent:
        params["sent"] = list(sent)
    params["now"] = now
    params["holder"] = holder
    return params


def _outbox_row(run_id: str, m: Message) -> tuple[Any, ...]:
    node_id, attempt = rows.job_ref(m)
    return (run_id, m.topic, m.key, m.payload, rows.dumps(m.headers), node_id, attempt)
