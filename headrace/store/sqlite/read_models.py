"""The read models on SQLite: the store's `ReadModels`, and the `ReadTx` of one projector
transaction (a BEGIN IMMEDIATE holds the only write lock, so the rows need no lock of their
own)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headrace.events import Event, decode_event
from headrace.projections.apply import Counts, Projected, project
from headrace.projections.fold import RunRow, StateRow
from headrace.store import rows

RUN_READ_COLUMNS = tuple(RunRow.__struct_fields__)
STATE_READ_COLUMNS = tuple(StateRow.__struct_fields__)
_RUN_SELECT = f"SELECT {', '.join(RUN_READ_COLUMNS)} FROM runs_read"
_STATE_SELECT = f"SELECT {', '.join(STATE_READ_COLUMNS)} FROM states_read"


def _upsert(table: str, columns: Sequence[str], keys: int) -> str:
    marks = ", ".join("?" * len(columns))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[keys:])
    conflict = ", ".join(columns[:keys])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )


_RUN_UPSERT = _upsert("runs_read", RUN_READ_COLUMNS, 1)
_COUNT_ADD = (
    "INSERT INTO run_counts (workflow_name, workflow_version, status, runs, active_nodes) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (workflow_name, workflow_version, status) DO UPDATE "
    "SET runs = runs + excluded.runs, active_nodes = active_nodes + excluded.active_nodes"
)
_STATE_UPSERT = _upsert("states_read", STATE_READ_COLUMNS, 2)


def run_row(r: Sequence[object]) -> RunRow:
    values = dict(zip(RUN_READ_COLUMNS, r, strict=True))
    values["labels"] = rows.loads(values["labels"])  # type: ignore[arg-type]
    return RunRow(**values)  # type: ignore[arg-type]


def state_row(r: Sequence[object]) -> StateRow:
    values = dict(zip(STATE_READ_COLUMNS, r, strict=True))
    values["error"] = rows.load_error(values["error"])  # type: ignore[arg-type]
    return StateRow(**values)  # type: ignore[arg-type]


def run_values(r: RunRow) -> tuple[object, ...]:
    return tuple(rows.dumps(r.labels) if c == "labels" else getattr(r, c) for c in RUN_READ_COLUMNS)


def state_values(s: StateRow) -> tuple[object, ...]:
    error = None if s.error is None else rows.dumps(s.error)
    return tuple(error if c == "error" else getattr(s, c) for c in STATE_READ_COLUMNS)


class SqliteReadTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        found: dict[str, RunRow] = {}
        for part in _chunks(run_ids):
            marks = ", ".join("?" * len(part))
            for r in self.db.execute(f"{_RUN_SELECT} WHERE run_id IN ({marks})", part):
                found[r[0]] = run_row(r)
        return found

    async def states(self, wanted: Mapping[str, set[str]]) -> dict[str, dict[str, StateRow]]:
        found: dict[str, dict[str, StateRow]] = {}
        for run_id, node_ids in wanted.items():
            for part in _chunks(sorted(node_ids)):
                marks = ", ".join("?" * len(part))
                sql = f"{_STATE_SELECT} WHERE run_id = ? AND node_id IN ({marks})"
                for r in self.db.execute(sql, (run_id, *part)):
                    found.setdefault(run_id, {})[r[1]] = state_row(r)
        return found

    async def logged(self, run_id: str, after_seq: int, upto_seq: int) -> list[Event]:
        cur = self.db.execute(
            "SELECT data FROM events WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (run_id, after_seq, upto_seq),
        )
        return [decode_event(r[0].encode()) for r in cur]

    async def write(
        self, runs: Sequence[RunRow], states: Sequence[StateRow], counts: Counts
    ) -> None:
        self.db.executemany(_RUN_UPSERT, [run_values(r) for r in runs])
        self.db.executemany(_STATE_UPSERT, [state_values(s) for s in states])
        self.db.executemany(_COUNT_ADD, [(*k, *v) for k, v in sorted(counts.items()) if any(v)])


def _chunks(items: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class ReadModelsOnSqlite:
    """The store's `ReadModels` (its connection is the store's)."""

    if TYPE_CHECKING:  # the store's own, which SqliteStore defines

        @property
        def db(self) -> sqlite3.Connection: ...

    _transaction: Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]]

    async def project(
        self,
        batch: Mapping[str, Sequence[Event]],
        upto: Mapping[str, int] | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> Projected:
        with self._transaction() as db:  # its awaits never yield: the tx is never shared
            return await project(SqliteReadTx(db), batch, upto, checkpoint)

    async def applied_seqs(self, run_ids: Sequence[str]) -> dict[str, int]:
        return {r.run_id: r.last_seq for r in (await SqliteReadTx(self.db).runs(run_ids)).values()}

    async def run_seqs(self, after_run_id: str, limit: int) -> list[tuple[str, int]]:
        cur = self.db.execute(
            "SELECT run_id, seq FROM runs WHERE run_id > ? ORDER BY run_id LIMIT ?",
            (after_run_id, limit),
        )
        return [(r[0], r[1]) for r in cur]

    async def read_rows(self, run_id: str) -> tuple[RunRow | None, list[StateRow]]:
        run = (await SqliteReadTx(self.db).runs([run_id])).get(run_id)
        cur = self.db.execute(f"{_STATE_SELECT} WHERE run_id = ? ORDER BY node_id", (run_id,))
        return run, [state_row(r) for r in cur]

    async def read_model_counts(self) -> dict[str, int]:
        main = self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        projected = self.db.execute("SELECT COUNT(*) FROM runs_read").fetchone()[0]
        return {"main": main, "projected": projected}

    async def counters(self) -> tuple[Counts, Counts]:
        kept = self.db.execute(f"SELECT {_COUNTED} FROM run_counts WHERE runs != 0")
        recounted = self.db.execute(_RECOUNT)
        return _counts(kept.fetchall()), _counts(recounted.fetchall())


_COUNTED = "workflow_name, workflow_version, status, runs, active_nodes"
_RECOUNT = (
    "SELECT workflow_name, workflow_version, status, COUNT(*), SUM(active_nodes) FROM runs_read"
    " GROUP BY workflow_name, workflow_version, status"
)


def _counts(rows: Sequence[Sequence[Any]]) -> Counts:
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4])) for r in rows}
