"""The read models on SQLite: the store's `ReadModels`, and the `ReadTx` of one projector
transaction (a BEGIN IMMEDIATE holds the only write lock, so the rows need no lock of their
own). They are in a file of their own beside the store's (`<name>.read.db`), attached to
its connection as `read`: the tables' names find them there, and the file can be deleted
to start afresh (a projector's catch-up fills it from the event log)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headrace.errors import Conflict
from headrace.events import Event, decode_event
from headrace.projections.apply import Counts, Projected, Tables, project
from headrace.projections.fold import RunRow, StateRow
from headrace.store import rows
from headrace.store.base import ANOTHER_REBUILD

RUN_READ_COLUMNS = tuple(RunRow.__struct_fields__)
STATE_READ_COLUMNS = tuple(StateRow.__struct_fields__)
TABLES = ("runs_read", "states_read", "run_counts")
NEXT = "_next"  # a rebuild's fresh tables: runs_read_next, ...
# The read file's PRAGMA user_version. A file of another version has its tables made again,
# empty (a projector's catch-up fills them): they are a fold of the log, not data of their own.
READ_SCHEMA = 1
_COLUMNS = {
    "runs_read": "run_id TEXT PRIMARY KEY, workflow_name TEXT NOT NULL DEFAULT '', "
    "workflow_version INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending', "
    "created_at INTEGER, started_at INTEGER, ended_at INTEGER, "
    "active_nodes INTEGER NOT NULL DEFAULT 0, cost_cents INTEGER NOT NULL DEFAULT 0, "
    "labels TEXT NOT NULL DEFAULT '{}', last_seq INTEGER NOT NULL DEFAULT 0, "
    "last_event_at INTEGER, error_type TEXT",
    "states_read": "run_id TEXT NOT NULL, node_id TEXT NOT NULL, status TEXT NOT NULL, "
    "attempts INTEGER NOT NULL, started_at INTEGER, ended_at INTEGER, output_ref INTEGER, "
    "error TEXT, PRIMARY KEY (run_id, node_id)",
    "run_counts": "workflow_name TEXT NOT NULL, workflow_version INTEGER NOT NULL, "
    "status TEXT NOT NULL, runs INTEGER NOT NULL, active_nodes INTEGER NOT NULL, "
    "PRIMARY KEY (workflow_name, workflow_version, status)",
}
_INDEXES = (  # the list queries': newest first, by status, by workflow and status, by end
    "runs_read_newest ON runs_read (created_at, run_id)",
    "runs_read_by_status ON runs_read (status, created_at, run_id)",
    "runs_read_by_workflow ON runs_read (workflow_name, status, created_at, run_id)",
    "runs_read_by_end ON runs_read (ended_at, run_id)",
)


def _make_tables(db: sqlite3.Connection, suffix: str = "") -> None:
    for table, columns in _COLUMNS.items():
        db.execute(f"CREATE TABLE IF NOT EXISTS read.{table}{suffix} ({columns})")


def _make_indexes(db: sqlite3.Connection) -> None:
    for index in _INDEXES:
        db.execute(f"CREATE INDEX IF NOT EXISTS read.{index}")


def read_file(path: Path) -> Path:
    """Where the read models of the store at `path` are: `h.db` -> `h.read.db`."""
    return path.with_suffix(".read" + path.suffix)


def attach(db: sqlite3.Connection, path: Path, synchronous: str) -> None:
    """Attach the read file as `read`, making its tables unless they are at READ_SCHEMA."""
    db.execute("ATTACH DATABASE ? AS read", (str(path),))
    db.execute("PRAGMA read.journal_mode=WAL")
    db.execute(f"PRAGMA read.synchronous={synchronous}")
    if db.execute("PRAGMA read.user_version").fetchone()[0] == READ_SCHEMA:
        return
    db.execute("BEGIN IMMEDIATE")  # two processes opening it at once: one makes them
    try:
        if db.execute("PRAGMA read.user_version").fetchone()[0] != READ_SCHEMA:
            for table in (*TABLES, *(t + NEXT for t in TABLES)):
                db.execute(f"DROP TABLE IF EXISTS read.{table}")
            _make_tables(db)
            _make_indexes(db)
            db.execute(f"PRAGMA read.user_version = {READ_SCHEMA}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _upsert(table: str, columns: Sequence[str], keys: int) -> str:
    marks = ", ".join("?" * len(columns))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[keys:])
    conflict = ", ".join(columns[:keys])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )


@dataclass(frozen=True)
class Sql:
    """One projector transaction's statements, on the live tables or a rebuild's (`suffix`)."""

    runs: str
    states: str
    upsert_runs: str
    upsert_states: str
    add_counts: str


@functools.cache
def sql(suffix: str = "") -> Sql:
    runs, states, counts = (t + suffix for t in TABLES)
    return Sql(
        runs=f"SELECT {', '.join(RUN_READ_COLUMNS)} FROM {runs}",
        states=f"SELECT {', '.join(STATE_READ_COLUMNS)} FROM {states}",
        upsert_runs=_upsert(runs, RUN_READ_COLUMNS, 1),
        upsert_states=_upsert(states, STATE_READ_COLUMNS, 2),
        add_counts=(
            f"INSERT INTO {counts} (workflow_name, workflow_version, status, runs, "
            "active_nodes) VALUES (?, ?, ?, ?, ?) ON CONFLICT (workflow_name, "
            "workflow_version, status) DO UPDATE SET runs = runs + excluded.runs, "
            "active_nodes = active_nodes + excluded.active_nodes"
        ),
    )


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
    def __init__(self, db: sqlite3.Connection, suffix: str = "") -> None:
        self.db = db
        self.sql = sql(suffix)

    async def runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        found: dict[str, RunRow] = {}
        for part in _chunks(run_ids):
            marks = ", ".join("?" * len(part))
            for r in self.db.execute(f"{self.sql.runs} WHERE run_id IN ({marks})", part):
                found[r[0]] = run_row(r)
        return found

    async def states(self, wanted: Mapping[str, set[str]]) -> dict[str, dict[str, StateRow]]:
        found: dict[str, dict[str, StateRow]] = {}
        for run_id, node_ids in wanted.items():
            for part in _chunks(sorted(node_ids)):
                marks = ", ".join("?" * len(part))
                query = f"{self.sql.states} WHERE run_id = ? AND node_id IN ({marks})"
                for r in self.db.execute(query, (run_id, *part)):
                    found.setdefault(run_id, {})[r[1]] = state_row(r)
        return found

    async def logged(self, ranges: Mapping[str, tuple[int, int]]) -> dict[str, list[Event]]:
        query = "SELECT data FROM events WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq"
        return {
            run_id: [decode_event(r[0].encode()) for r in self.db.execute(query, (run_id, lo, hi))]
            for run_id, (lo, hi) in ranges.items()
        }

    async def write(
        self, runs: Sequence[RunRow], states: Sequence[StateRow], counts: Counts
    ) -> None:
        self.db.executemany(self.sql.upsert_runs, [run_values(r) for r in runs])
        self.db.executemany(self.sql.upsert_states, [state_values(s) for s in states])
        added = [(*k, *v) for k, v in sorted(counts.items()) if any(v)]
        self.db.executemany(self.sql.add_counts, added)

    async def applied(self, run_ids: Sequence[str]) -> dict[str, int]:
        return {r.run_id: r.last_seq for r in (await self.runs(run_ids)).values()}

    async def project(self, upto: Mapping[str, int]) -> Projected:
        return await project(self, {}, upto)


@contextlib.contextmanager
def _snapshot(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Reads as of one moment (WAL: a read transaction's snapshot)."""
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


def _chunks(items: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class ReadModelsOnSqlite:
    """The store's `ReadModels` (its connection is the store's)."""

    if TYPE_CHECKING:  # the store's own, which SqliteStore defines

        @property
        def db(self) -> sqlite3.Connection: ...

    path: Path
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
        return await SqliteReadTx(self.db).applied(run_ids)

    async def run_seqs(self, after_run_id: str, limit: int) -> list[tuple[str, int]]:
        cur = self.db.execute(
            "SELECT run_id, seq FROM runs WHERE run_id > ? ORDER BY run_id LIMIT ?",
            (after_run_id, limit),
        )
        return [(r[0], r[1]) for r in cur]

    async def read_rows(self, run_id: str) -> tuple[RunRow | None, list[StateRow]]:
        with _snapshot(self.db) as db:  # the run's row and its states as of one moment
            run = (await SqliteReadTx(db).runs([run_id])).get(run_id)
            cur = db.execute(f"{sql().states} WHERE run_id = ? ORDER BY node_id", (run_id,))
            return run, [state_row(r) for r in cur]

    async def read_model_counts(self) -> dict[str, int]:
        main = self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        projected = self.db.execute("SELECT COUNT(*) FROM runs_read").fetchone()[0]
        return {"main": main, "projected": projected}

    async def counters(self) -> tuple[Counts, Counts]:
        with _snapshot(self.db) as db:  # a projector's commit between them is no difference
            kept = db.execute(f"SELECT {_COUNTED} FROM run_counts WHERE runs != 0").fetchall()
            return _counts(kept), _counts(db.execute(_RECOUNT).fetchall())

    async def rebuild_open(self) -> tuple[str, int]:
        """The fresh tables are made without indexes: they are made at the swap, when the
        rows are in."""
        with self._transaction() as db:
            _make_tables(db, NEXT)
            row = db.execute(_HELD).fetchone()
        return row[0], row[1]

    @contextlib.asynccontextmanager
    async def rebuild_lock(self) -> AsyncIterator[None]:
        """An exclusive lock on a file beside the read file (the system drops it with the
        process that held it)."""
        with read_file(self.path).with_suffix(".rebuild-lock").open("a") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(ANOTHER_REBUILD) from None
            yield

    def rebuild_tables(self) -> Tables:
        return _Fresh(self)

    async def rebuild_swap(self, catch_up: Callable[[Tables], Awaitable[object]]) -> None:
        """One write transaction (BEGIN IMMEDIATE: the projector waits) brings the fresh
        tables up to the main ones, drops the old (their indexes with them), renames the
        fresh and makes the indexes on them."""
        with self._transaction() as db:  # the catch-up's awaits never yield on SQLite
            await catch_up(SqliteReadTx(db, NEXT))
            for table in TABLES:
                db.execute(f"DROP TABLE read.{table}")
                db.execute(f"ALTER TABLE read.{table}{NEXT} RENAME TO {table}")
            _make_indexes(db)


class _Fresh:
    """A rebuild's tables, each call a transaction of its own."""

    def __init__(self, store: ReadModelsOnSqlite) -> None:
        self.store = store

    async def applied(self, run_ids: Sequence[str]) -> dict[str, int]:
        return await SqliteReadTx(self.store.db, NEXT).applied(run_ids)

    async def project(self, upto: Mapping[str, int]) -> Projected:
        with self.store._transaction() as db:
            return await project(SqliteReadTx(db, NEXT), {}, upto)


_HELD = f"SELECT coalesce(max(run_id), ''), COUNT(*) FROM runs_read{NEXT}"
_DEFINITION = "SELECT sql FROM read.sqlite_master WHERE type = ? AND name = ?"
_INDEX_DEFINITIONS = (
    "SELECT sql FROM read.sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL"
)
_COUNTED = "workflow_name, workflow_version, status, runs, active_nodes"
_RECOUNT = (
    "SELECT workflow_name, workflow_version, status, COUNT(*), SUM(active_nodes) FROM runs_read"
    " GROUP BY workflow_name, workflow_version, status"
)


def _counts(rows: Sequence[Sequence[Any]]) -> Counts:
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4])) for r in rows}
