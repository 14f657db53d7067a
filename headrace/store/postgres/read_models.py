"""The read models on Postgres: the store's `ReadModels`, and the `ReadTx` of one projector
transaction. Run rows are locked (FOR UPDATE, in run id order) so two projectors given
events of one run apply them one after the other; a run's first row is inserted empty
before, so that lock holds for new runs too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import msgspec

from headrace.events import Event, decode_event
from headrace.projections.apply import Counts, Projected, project
from headrace.projections.fold import RunRow, StateRow
from headrace.store import rows

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


def _upsert(table: str, columns: Sequence[str], keys: int) -> str:
    """Rows as one JSON array of objects (msgspec encodes the structs as they are). A run's
    `label_values` (every label's value, for `q`: store/listing.py) is computed here."""
    record = ", ".join(f"{c} {_TYPES[c]}" for c in columns)
    values = ["x.error::text" if c == "error" else f"x.{c}" for c in columns]
    written = list(columns)
    if table == "runs_read":
        values.append("ARRAY(SELECT value FROM jsonb_each_text(x.labels))")
        written.append("label_values")
    updates = ", ".join(f"{c} = excluded.{c}" for c in written[keys:])
    return (
        f"INSERT INTO {table} ({', '.join(written)}) SELECT {', '.join(values)} "
        f"FROM jsonb_to_recordset($1::jsonb) AS x({record}) "
        f"ON CONFLICT ({', '.join(columns[:keys])}) DO UPDATE SET {updates}"
    )


_RUN_UPSERT = _upsert("runs_read", RUN_READ_COLUMNS, 1)
_COUNT_ADD = (
    "INSERT INTO run_counts (workflow_name, workflow_version, status, runs, active_nodes) "
    "SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[], $5::bigint[]) "
    "ON CONFLICT (workflow_name, workflow_version, status) DO UPDATE "
    "SET runs = run_counts.runs + excluded.runs, "
    "active_nodes = run_counts.active_nodes + excluded.active_nodes"
)
_STATE_UPSERT = _upsert("states_read", STATE_READ_COLUMNS, 2)
_JSON = msgspec.json.Encoder()


def run_row(r: Any) -> RunRow:
    values = dict(zip(RUN_READ_COLUMNS, r, strict=True))
    values["labels"] = rows.loads(values["labels"])
    return RunRow(**values)


def state_row(r: Any) -> StateRow:
    values = dict(zip(STATE_READ_COLUMNS, r, strict=True))
    values["error"] = rows.load_error(values["error"])
    return StateRow(**values)


class PostgresReadTx:
    def __init__(self, conn: PoolConnectionProxy[Record]) -> None:
        self.conn = conn

    async def runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        await self.conn.execute(
            "INSERT INTO runs_read (run_id) SELECT id FROM unnest($1::text[]) AS id ORDER BY id "
            "ON CONFLICT DO NOTHING",
            list(run_ids),
        )
        found = await self.conn.fetch(
            f"{RUN_SELECT} WHERE run_id = ANY($1::text[]) ORDER BY run_id FOR UPDATE",
            list(run_ids),
        )
        return {r[0]: run_row(r) for r in found}

    async def states(self, wanted: Mapping[str, set[str]]) -> dict[str, dict[str, StateRow]]:
        run_ids = [rid for rid, nodes in wanted.items() for _ in nodes]
        node_ids = [nid for nodes in wanted.values() for nid in nodes]
        found = await self.conn.fetch(
            f"{STATE_SELECT} WHERE (run_id, node_id) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))",
            run_ids,
            node_ids,
        )
        out: dict[str, dict[str, StateRow]] = {}
        for r in found:
            out.setdefault(r[0], {})[r[1]] = state_row(r)
        return out

    async def logged(self, run_id: str, after_seq: int, upto_seq: int) -> list[Event]:
        found = await self.conn.fetch(
            "SELECT data FROM events WHERE run_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
            run_id,
            after_seq,
            upto_seq,
        )
        return [decode_event(r[0].encode()) for r in found]

    async def write(
        self, runs: Sequence[RunRow], states: Sequence[StateRow], counts: Counts
    ) -> None:
        if runs:
            await self.conn.execute(_RUN_UPSERT, _JSON.encode(runs).decode())
        if states:
            await self.conn.execute(_STATE_UPSERT, _JSON.encode(states).decode())
        added = [(*k, *v) for k, v in sorted(counts.items()) if any(v)]
        if added:  # in key order: two projectors lock the counters in the same order
            await self.conn.execute(_COUNT_ADD, *map(list, zip(*added, strict=True)))


class ReadModelsOnPostgres:
    """The store's `ReadModels` (its connections are the store's)."""

    _conn: Callable[[], AbstractAsyncContextManager[PoolConnectionProxy[Record]]]
    _one: Callable[..., Awaitable[Record | None]]
    _all: Callable[..., Awaitable[list[Record]]]

    async def project(
        self,
        batch: Mapping[str, Sequence[Event]],
        upto: Mapping[str, int] | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> Projected:
        async with self._conn() as conn, conn.transaction():
            return await project(PostgresReadTx(conn), batch, upto, checkpoint)

    async def applied_seqs(self, run_ids: Sequence[str]) -> dict[str, int]:
        found = await self._all(
            "SELECT run_id, last_seq FROM runs_read WHERE run_id = ANY($1::text[])", list(run_ids)
        )
        return {r[0]: r[1] for r in found}

    async def run_seqs(self, after_run_id: str, limit: int) -> list[tuple[str, int]]:
        found = await self._all(
            "SELECT run_id, seq FROM runs WHERE run_id > $1 ORDER BY run_id LIMIT $2",
            after_run_id, limit,
        )  # fmt: skip
        return [(r[0], r[1]) for r in found]

    async def read_rows(self, run_id: str) -> tuple[RunRow | None, list[StateRow]]:
        run = await self._one(f"{RUN_SELECT} WHERE run_id = $1", run_id)
        states = await self._all(f"{STATE_SELECT} WHERE run_id = $1 ORDER BY node_id", run_id)
        found = None if run is None else run_row(run)
        return found, [state_row(r) for r in states]

    async def read_model_counts(self) -> dict[str, int]:
        row = await self._one(
            "SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM runs_read)"
        )
        assert row is not None
        return {"main": row[0], "projected": row[1]}

    async def counters(self) -> tuple[Counts, Counts]:
        kept = await self._all(
            "SELECT workflow_name, workflow_version, status, runs, active_nodes FROM run_counts "
            "WHERE runs != 0"
        )
        recounted = await self._all(
            "SELECT workflow_name, workflow_version, status, COUNT(*), SUM(active_nodes) "
            "FROM runs_read GROUP BY workflow_name, workflow_version, status"
        )
        return _counts(kept), _counts(recounted)


def _counts(rows: Sequence[Any]) -> Counts:
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4])) for r in rows}
