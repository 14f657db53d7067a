"""The read models on Postgres: the store's `ReadModels`, and the `ReadTx` of one projector
transaction. Run rows are locked (FOR UPDATE, in run id order) so two projectors given
events of one run apply them one after the other; a run's first row is inserted empty
before, so that lock holds for new runs too."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from headrace.errors import Conflict
from headrace.events import Event, decode_event
from headrace.projections.apply import Counts, Projected, Tables, project
from headrace.projections.fold import RunRow, StateRow
from headrace.store import rows
from headrace.store.base import ANOTHER_REBUILD
from headrace.store.postgres.connect import DRIVER_ERRORS, connect_args, infra

if TYPE_CHECKING:
    from asyncpg import Record
    from asyncpg.pool import PoolConnectionProxy

RUN_READ_COLUMNS = tuple(RunRow.__struct_fields__)
STATE_READ_COLUMNS = tuple(StateRow.__struct_fields__)
_TYPES = {
    "run_id": "text", "workflow_name": "text", "workflow_version": "int", "status": "text",
    "created_at": "bigint", "started_at": "bigint", "ended_at": "bigint",
    "active_nodes": "int", "cost_cents": "bigint", "labels": "jsonb", "last_seq": "int",
    "last_event_at": "bigint", "error_type": "text", "node_id": "text", "attempts": "int",
    "output_ref": "int", "error": "jsonb",
}  # fmt: skip
RUN_SELECT = f"SELECT {', '.join(RUN_READ_COLUMNS)} FROM runs_read"
STATE_SELECT = f"SELECT {', '.join(STATE_READ_COLUMNS)} FROM states_read"
TABLES = ("runs_read", "states_read", "run_counts")
NEXT = "_next"  # a rebuild's fresh tables: runs_read_next, ...


def _upsert(table: str, columns: Sequence[str], keys: int) -> str:
    """Rows as one JSON array of objects (msgspec encodes the structs as they are). A run's
    `label_values` (every label's value, for `q`: store/listing.py) is computed here."""
    record = ", ".join(f"{c} {_TYPES[c]}" for c in columns)
    values = ["x.error::text" if c == "error" else f"x.{c}" for c in columns]
    written = list(columns)
    if table.startswith("runs_read"):
        values.append("ARRAY(SELECT value FROM jsonb_each_text(x.labels))")
        written.append("label_values")
    updates = ", ".join(f"{c} = excluded.{c}" for c in written[keys:])
    return (
        f"INSERT INTO {table} ({', '.join(written)}) SELECT {', '.join(values)} "
        f"FROM jsonb_to_recordset($1::jsonb) AS x({record}) "
        f"ON CONFLICT ({', '.join(columns[:keys])}) DO UPDATE SET {updates}"
    )


@dataclass(frozen=True)
class Sql:
    """One projector transaction's statements, on the live tables or a rebuild's (`suffix`)."""

    new_runs: str
    lock_runs: str
    states: str
    upsert_runs: str
    upsert_states: str
    add_counts: str
    applied: str


@functools.cache
def sql(suffix: str = "") -> Sql:
    runs, states, counts = (t + suffix for t in TABLES)
    return Sql(
        new_runs=f"INSERT INTO {runs} (run_id) SELECT id FROM unnest($1::text[]) AS id "
        "ORDER BY id ON CONFLICT DO NOTHING",
        lock_runs=f"SELECT {', '.join(RUN_READ_COLUMNS)} FROM {runs} "
        "WHERE run_id = ANY($1::text[]) ORDER BY run_id FOR UPDATE",
        states=f"SELECT {', '.join(STATE_READ_COLUMNS)} FROM {states} WHERE (run_id, node_id) "
        "IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        upsert_runs=_upsert(runs, RUN_READ_COLUMNS, 1),
        upsert_states=_upsert(states, STATE_READ_COLUMNS, 2),
        add_counts=(
            f"INSERT INTO {counts} (workflow_name, workflow_version, status, runs, "
            "active_nodes) SELECT * FROM unnest($1::text[], $2::int[], $3::text[], "
            "$4::bigint[], $5::bigint[]) ON CONFLICT (workflow_name, workflow_version, status) "
            f"DO UPDATE SET runs = {counts}.runs + excluded.runs, "
            f"active_nodes = {counts}.active_nodes + excluded.active_nodes"
        ),
        applied=f"SELECT run_id, last_seq FROM {runs} WHERE run_id = ANY($1::text[])",
    )


_LOGGED = (
    "SELECT e.run_id, e.data FROM unnest($1::text[], $2::int[], $3::int[]) AS r(id, lo, hi) "
    "JOIN events e ON e.run_id = r.id AND e.seq > r.lo AND e.seq <= r.hi "
    "ORDER BY e.run_id, e.seq"
)
_HELD = f"SELECT coalesce(max(run_id), ''), COUNT(*) FROM runs_read{NEXT}"
_INDEXES = (
    "SELECT i.indexrelid::regclass::text, i.indisunique, "
    "split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2) "
    "FROM pg_index i WHERE i.indrelid = $1::text::regclass ORDER BY 1"
)
_JSON = msgspec.json.Encoder()
_REBUILD_LOCK = 72410533  # one rebuild at a time (a session's advisory lock)


def run_row(r: Any) -> RunRow:
    values = dict(zip(RUN_READ_COLUMNS, r, strict=True))
    values["labels"] = rows.loads(values["labels"])
    return RunRow(**values)


def state_row(r: Any) -> StateRow:
    values = dict(zip(STATE_READ_COLUMNS, r, strict=True))
    values["error"] = rows.load_error(values["error"])
    return StateRow(**values)


Fetch = Callable[..., Awaitable[list[Any]]]


class PostgresReadTx:
    """One transaction on the read tables (`suffix`: a rebuild's); the event log is read
    through `log` (the main database's, when the read models have their own)."""

    def __init__(
        self, conn: PoolConnectionProxy[Record], suffix: str = "", log: Fetch | None = None
    ) -> None:
        self.conn = conn
        self.sql = sql(suffix)
        self.log = log or conn.fetch

    async def runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        await self.conn.execute(self.sql.new_runs, list(run_ids))
        found = await self.conn.fetch(self.sql.lock_runs, list(run_ids))
        return {r[0]: run_row(r) for r in found}

    async def states(self, wanted: Mapping[str, set[str]]) -> dict[str, dict[str, StateRow]]:
        run_ids = [rid for rid, nodes in wanted.items() for _ in nodes]
        node_ids = [nid for nodes in wanted.values() for nid in nodes]
        found = await self.conn.fetch(self.sql.states, run_ids, node_ids)
        out: dict[str, dict[str, StateRow]] = {}
        for r in found:
            out.setdefault(r[0], {})[r[1]] = state_row(r)
        return out

    async def logged(self, ranges: Mapping[str, tuple[int, int]]) -> dict[str, list[Event]]:
        ids = list(ranges)
        found = await self.log(
            _LOGGED, ids, [ranges[i][0] for i in ids], [ranges[i][1] for i in ids]
        )
        out: dict[str, list[Event]] = {}
        for r in found:
            out.setdefault(r[0], []).append(decode_event(r[1].encode()))
        return out

    async def write(
        self, runs: Sequence[RunRow], states: Sequence[StateRow], counts: Counts
    ) -> None:
        if runs:
            await self.conn.execute(self.sql.upsert_runs, _JSON.encode(runs).decode())
        if states:
            await self.conn.execute(self.sql.upsert_states, _JSON.encode(states).decode())
        added = [(*k, *v) for k, v in sorted(counts.items()) if any(v)]
        if added:  # in key order: two projectors lock the counters in the same order
            await self.conn.execute(self.sql.add_counts, *map(list, zip(*added, strict=True)))

    async def applied(self, run_ids: Sequence[str]) -> dict[str, int]:
        found = await self.conn.fetch(self.sql.applied, list(run_ids))
        return {r[0]: r[1] for r in found}

    async def project(self, upto: Mapping[str, int]) -> Projected:
        return await project(self, {}, upto)


class ReadModelsOnPostgres:
    """The store's `ReadModels` and `Rebuilds` (its connections are the store's: `_read`
    to the read models' database, `_conn` to the main one, which may be the same)."""

    url: str
    read_url: str | None
    _conn: Callable[[], AbstractAsyncContextManager[PoolConnectionProxy[Record]]]
    _read: Callable[[], AbstractAsyncContextManager[PoolConnectionProxy[Record]]]
    _one: Callable[..., Awaitable[Record | None]]
    _all: Callable[..., Awaitable[list[Record]]]

    @asynccontextmanager
    async def _read_tx(self, suffix: str = "") -> AsyncIterator[PostgresReadTx]:
        log = self._all if self.read_url else None  # else the transaction's own connection
        async with self._read() as conn, conn.transaction():
            yield PostgresReadTx(conn, suffix, log)

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[PoolConnectionProxy[Record]]:
        """Reads of the read models as of one moment."""
        async with self._read() as conn, conn.transaction(isolation="repeatable_read"):
            yield conn

    async def _read_all(self, query: str, *args: Any) -> list[Record]:
        async with self._read() as conn:
            return await conn.fetch(query, *args)

    async def project(
        self,
        batch: Mapping[str, Sequence[Event]],
        upto: Mapping[str, int] | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> Projected:
        async with self._read_tx() as tx:
            return await project(tx, batch, upto, checkpoint)

    async def applied_seqs(self, run_ids: Sequence[str]) -> dict[str, int]:
        found = await self._read_all(sql().applied, list(run_ids))
        return {r[0]: r[1] for r in found}

    async def run_seqs(self, after_run_id: str, limit: int) -> list[tuple[str, int]]:
        found = await self._all(
            "SELECT run_id, seq FROM runs WHERE run_id > $1 ORDER BY run_id LIMIT $2",
            after_run_id, limit,
        )  # fmt: skip
        return [(r[0], r[1]) for r in found]

    async def read_rows(self, run_id: str) -> tuple[RunRow | None, list[StateRow]]:
        async with self._snapshot() as conn:  # the run's row and its states of one moment
            run = await conn.fetchrow(f"{RUN_SELECT} WHERE run_id = $1", run_id)
            states = await conn.fetch(f"{STATE_SELECT} WHERE run_id = $1 ORDER BY node_id", run_id)
        found = None if run is None else run_row(run)
        return found, [state_row(r) for r in states]

    async def read_model_counts(self) -> dict[str, int]:
        main = await self._one("SELECT COUNT(*) FROM runs")
        projected = await self._read_all("SELECT COUNT(*) FROM runs_read")
        assert main is not None
        return {"main": main[0], "projected": projected[0][0]}

    async def counters(self) -> tuple[Counts, Counts]:
        async with self._snapshot() as conn:  # a projector's commit between them is none
            kept = await conn.fetch(
                "SELECT workflow_name, workflow_version, status, runs, active_nodes "
                "FROM run_counts WHERE runs != 0"
            )
            recounted = await conn.fetch(
                "SELECT workflow_name, workflow_version, status, COUNT(*), SUM(active_nodes) "
                "FROM runs_read GROUP BY workflow_name, workflow_version, status"
            )
        return _counts(kept), _counts(recounted)

    async def rebuild_open(self) -> tuple[str, int]:
        async with self._read() as conn, conn.transaction():
            for table in TABLES:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table}{NEXT} (LIKE {table} INCLUDING ALL)"
                )
            row = await conn.fetchrow(_HELD)
        assert row is not None
        return row[0], row[1]

    @asynccontextmanager
    async def rebuild_lock(self) -> AsyncIterator[None]:
        """A session's advisory lock, on a connection of its own (a pooled connection's
        session is never changed): a killed rebuild's connection ends, and its lock."""
        try:
            conn = await asyncpg.connect(**connect_args(self.read_url or self.url))
        except DRIVER_ERRORS as e:
            raise infra(e) from e
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _REBUILD_LOCK):
                raise Conflict(ANOTHER_REBUILD)
            yield
        finally:
            await conn.close()

    def rebuild_tables(self) -> Tables:
        return _Fresh(self)

    async def rebuild_swap(self, catch_up: Callable[[Tables], Awaitable[object]]) -> None:
        """Writes to the live tables wait (EXCLUSIVE lets reads on) while the fresh ones are
        brought up to the main tables; then the fresh take the old ones' names, indexes
        included. A projector's statement that waited finds the fresh table by its name."""
        async with self._read_tx(NEXT) as tx:
            conn = tx.conn
            await conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
            await catch_up(tx)
            names = {t: await _index_names(conn, t) for t in TABLES}
            await conn.execute(f"DROP TABLE {', '.join(TABLES)}")
            for table in TABLES:
                await conn.execute(f"ALTER TABLE {table}{NEXT} RENAME TO {table}")
                for key, fresh in (await _index_names(conn, table)).items():
                    await conn.execute(f"ALTER INDEX {fresh} RENAME TO {names[table][key]}")


class _Fresh:
    """A rebuild's tables, each call a transaction of its own."""

    def __init__(self, store: ReadModelsOnPostgres) -> None:
        self.store = store

    async def applied(self, run_ids: Sequence[str]) -> dict[str, int]:
        found = await self.store._read_all(sql(NEXT).applied, list(run_ids))
        return {r[0]: r[1] for r in found}

    async def project(self, upto: Mapping[str, int]) -> Projected:
        async with self.store._read_tx(NEXT) as tx:
            return await project(tx, {}, upto)


async def _index_names(conn: PoolConnectionProxy[Record], table: str) -> dict[Any, str]:
    """A table's index names by what they index (unique or not, method, columns)."""
    found = await conn.fetch(_INDEXES, table)
    return {(r[1], r[2], n): r[0] for n, r in enumerate(sorted(found, key=lambda r: r[1:]))}


def _counts(rows: Sequence[Any]) -> Counts:
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4])) for r in rows}
