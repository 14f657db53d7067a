"""SqliteStore: workflows, runs, flags, pins, figures, reads, outbox and timers (the commit's
writes are in commit.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from headrace.clock import SYSTEM, Clock
from headrace.engine import NodeState, RunState
from headrace.errors import Conflict, InfraError, InputError, NotFound
from headrace.events import Message, Timer
from headrace.spec import Plan, WorkflowIR, canonical_json, ir_hash, plan_from_json
from headrace.store import listing, rows
from headrace.store.base import (
    AttemptKey,
    Children,
    Committed,
    FlagChange,
    Holder,
    NodeRecord,
    OutboxEntry,
    RunHead,
    RunRecord,
    StoredEvent,
    Transition,
    WorkflowRecord,
)
from headrace.store.listing import RunFilter, RunItem, RunStats, Sort, Source
from headrace.store.migrate import HEAD, not_at_head, upgrade
from headrace.store.sqlite.commit import ranges, write
from headrace.store.sqlite.read_models import ReadModelsOnSqlite, attach, read_file

_NODE_SELECT = f"SELECT {rows.NODE_SELECT} FROM node_states"
# whether outbox row `o`'s job is of its node's current, still open attempt
_OPEN_ATTEMPT = (
    "SELECT 1 FROM node_states n WHERE n.run_id = o.key AND n.node_id = o.node_id "
    f"AND n.attempt = o.attempt AND n.status IN {rows.OPEN_ATTEMPT}"
)
FIGURES_KEPT_MS = 3_600_000  # a process's last report, after it stopped
_FLAG_UPSERT = (
    "INSERT INTO flags (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_FLAG_CHANGE = "INSERT INTO flag_changes (name, old, new, who, why, at) VALUES (?, ?, ?, ?, ?, ?)"


class SqliteStore(ReadModelsOnSqlite):
    def __init__(
        self, path: str | Path, *, synchronous: str = "NORMAL", clock: Clock = SYSTEM
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.clock = clock  # stamps the outbox rows a commit writes
        self._db: sqlite3.Connection | None = None
        self._plans: dict[str, Plan] = {}

    @property
    def description(self) -> str:
        return f"sqlite(wal, synchronous={self.synchronous})"

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    async def open(self, migrate: bool = True) -> None:
        """Open the file; migrate it to HEAD first (unless `migrate` is False: then a file
        not at HEAD, or none, is an InputError)."""
        revision = _revision(self.path)
        if revision != HEAD and not migrate:
            raise InputError("database_url", not_at_head(str(self.path), revision))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if revision != HEAD:  # on a thread: a loop's other work goes on meanwhile
            await asyncio.to_thread(upgrade, f"sqlite:///{self.path}")
        self._db = await asyncio.to_thread(self._connect)  # (making the read file writes)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=10000")
        attach(db, read_file(self.path), self.synchronous)
        return db

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- workflows ---

    async def put_workflow(
        self, ir: WorkflowIR, source: str, now_ms: int
    ) -> tuple[WorkflowRecord, bool]:
        digest = ir_hash(ir)
        row = self.db.execute(
            "SELECT ir_hash, created_at FROM workflows WHERE name = ? AND version = ?",
            (ir.name, ir.version),
        ).fetchone()
        if row is not None:
            if row[0] != digest:
                raise Conflict(
                    f"workflow {ir.tag} already exists with different content; "
                    "register it under a new version"
                )
            return WorkflowRecord(ir.name, ir.version, digest, ir, row[1]), False
        self.db.execute(
            "INSERT INTO workflows (name, version, ir_hash, ir, source, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ir.name, ir.version, digest, canonical_json(ir).decode(), source, now_ms),
        )
        return WorkflowRecord(ir.name, ir.version, digest, ir, now_ms), True

    async def get_workflow(self, tag: str) -> WorkflowRecord:
        name, _, version = tag.partition("@")
        if version:
            if not version.isdigit():
                raise NotFound("workflow", tag)
            row = self.db.execute(
                f"SELECT {rows.WORKFLOW_SELECT} FROM workflows WHERE name = ? AND version = ?",
                (name, int(version)),
            ).fetchone()
        else:
            row = self.db.execute(
                f"SELECT {rows.WORKFLOW_SELECT} FROM workflows WHERE name = ? "
                "ORDER BY version DESC LIMIT 1",
                (name,),
            ).fetchone()
        if row is None:
            raise NotFound("workflow", tag)
        return rows.workflow_record(row)

    async def list_workflows(self) -> list[WorkflowRecord]:
        cur = self.db.execute(
            f"SELECT {rows.WORKFLOW_SELECT} FROM workflows ORDER BY name, version"
        )
        return [rows.workflow_record(r) for r in cur.fetchall()]

    def _plan(self, digest: str) -> Plan:
        plan = self._plans.get(digest)
        if plan is None:
            row = self.db.execute(
                "SELECT ir FROM workflows WHERE ir_hash = ? LIMIT 1", (digest,)
            ).fetchone()
            plan = self._plans[digest] = plan_from_json(row[0].encode())
        return plan

    # --- runs: the hot path ---

    async def run_for_key(self, idempotency_key: str) -> str | None:
        row = self.db.execute(
            "SELECT run_id FROM runs WHERE idempotency_key = ?", (idempotency_key,)
        ).fetchone()
        return None if row is None else str(row[0])

    async def commit(
        self, transitions: list[Transition], sent: Sequence[int] = (), holder: str | None = None
    ) -> Committed:
        db = self.db
        now = self.clock.now_ms()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # locked by another process past busy_timeout
            raise InfraError(f"sqlite: {e}") from e
        try:
            applied, outbox_ids, local_ids = write(db, transitions, sent, holder, now)
            db.execute("COMMIT")
        except BaseException as e:
            db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise InfraError(f"sqlite: {e}") from e
            raise
        for t in applied:
            t.state.version += 1
        conflicts = {t.state.run_id for t in transitions} - {t.state.run_id for t in applied}
        return Committed(conflicts, outbox_ids, local_ids)

    async def run_version(self, run_id: str) -> int:
        row = self.db.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound("run", run_id)
        return int(row[0])

    async def load_run(self, run_id: str, *, children: Children = "all") -> RunState:
        row = self.db.execute(
            f"SELECT {rows.RUN_STATE_SELECT} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise NotFound("run", run_id)
        if children == "all":
            nodes = self.db.execute(_NODE_SELECT + " WHERE run_id = ?", (run_id,)).fetchall()
        elif children == "none":
            nodes = self.db.execute(
                f"{_NODE_SELECT} WHERE run_id = ? AND parent IS NULL", (run_id,)
            ).fetchall()
        else:
            nodes = self.db.execute(
                f"{_NODE_SELECT} WHERE run_id = ? AND parent IS NULL UNION ALL "
                f"{_NODE_SELECT} WHERE run_id = ? AND {rows.OPEN_CHILD}",
                (run_id, run_id),
            ).fetchall()
        state = rows.rebuild(run_id, self._plan(row[0]), row[1:], [(n[0], n[1:]) for n in nodes])
        state.partial = children == "none"
        return state

    async def load_runs(
        self, run_ids: Sequence[str], *, children: Children = "all"
    ) -> list[RunState]:
        found = []
        for run_id in run_ids:  # in-process SQLite: a query per run costs no round trip
            with contextlib.suppress(NotFound):
                found.append(await self.load_run(run_id, children=children))
        return found

    async def load_nodes(
        self, wanted: Mapping[str, Collection[str]]
    ) -> dict[str, dict[str, NodeState]]:
        out: dict[str, dict[str, NodeState]] = {}
        for run_id, nids in wanted.items():
            marks = ",".join("?" * len(nids))
            found = self.db.execute(
                f"{_NODE_SELECT} WHERE run_id = ? AND node_id IN ({marks})", [run_id, *nids]
            ).fetchall()
            if found:
                out[run_id] = {n[0]: rows.node_from_row(n[1:]) for n in found}
        return out

    async def load_children(self, run_id: str, parent: str) -> dict[str, NodeState]:
        found = self.db.execute(
            _NODE_SELECT + " WHERE run_id = ? AND parent = ?", (run_id, parent)
        ).fetchall()
        return {n[0]: rows.node_from_row(n[1:]) for n in found}

    # --- flags ---

    async def stored_flags(self) -> dict[str, bool | int]:
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT name, value FROM flags")}

    async def set_flag(
        self, name: str, value: bool | int, who: str, why: str, now_ms: int
    ) -> FlagChange:
        with self._transaction() as db:
            row = db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
            db.execute(_FLAG_UPSERT, (name, json.dumps(value), now_ms))
            db.execute(
                _FLAG_CHANGE, (name, row[0] if row else None, json.dumps(value), who, why, now_ms)
            )
        return FlagChange(name, json.loads(row[0]) if row else None, value, who, why, now_ms)

    async def swap_flags(
        self,
        expect: Mapping[str, bool | int],
        values: Sequence[tuple[str, bool | int]],
        initial: Mapping[str, bool | int],
        who: str,
        why: str,
        now_ms: int,
    ) -> dict[str, bool | int] | None:
        with self._transaction() as db:  # BEGIN IMMEDIATE: one writer at a time
            stored = {r[0]: r[1] for r in db.execute("SELECT name, value FROM flags")}
            found = rows.flag_values(expect, stored, initial)
            if found != dict(expect):
                return found
            for name, value in values:
                db.execute(_FLAG_UPSERT, (name, json.dumps(value), now_ms))
                db.execute(
                    _FLAG_CHANGE, (name, stored.get(name), json.dumps(value), who, why, now_ms)
                )
        return None

    async def flag_history(self, name: str | None, limit: int) -> list[FlagChange]:
        where, args = ("WHERE name = ?", (name, limit)) if name else ("", (limit,))
        found = self.db.execute(
            f"SELECT {rows.FLAG_CHANGE_SELECT} FROM flag_changes {where} ORDER BY id DESC LIMIT ?",
            args,
        )
        return [rows.flag_change(r) for r in found]

    # --- the Redis → Kafka migration ---

    async def pins(self, run_ids: Sequence[str]) -> dict[str, str]:
        marks = ",".join("?" * len(run_ids))
        found = self.db.execute(
            f"SELECT run_id, bus FROM run_pins WHERE run_id IN ({marks})", list(run_ids)
        )
        return {r[0]: r[1] for r in found}

    async def repin(self, from_bus: str, to_bus: str, now_ms: int) -> list[str]:
        with self._transaction() as db:
            found = db.execute(
                "UPDATE run_pins SET bus = ? WHERE bus = ? AND run_id IN "
                "(SELECT run_id FROM runs WHERE status IN ('pending', 'running')) "
                "RETURNING run_id",
                (to_bus, from_bus),
            ).fetchall()
        return [r[0] for r in found]

    async def pin_counts(self, since_ms: int) -> dict[str, int]:
        found = self.db.execute(
            "SELECT bus, count(*) FROM run_pins WHERE at >= ? GROUP BY bus", (since_ms,)
        )
        return {r[0]: int(r[1]) for r in found}

    async def put_figures(self, process: str, figures: dict[str, Any], now_ms: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO process_figures (process, updated_at, figures) VALUES (?, ?, ?) "
                "ON CONFLICT (process) DO UPDATE SET updated_at = excluded.updated_at, "
                "figures = excluded.figures",
                (process, now_ms, json.dumps(figures)),
            )
            db.execute(  # lives of processes gone for an hour
                "DELETE FROM process_figures WHERE updated_at < ?", (now_ms - FIGURES_KEPT_MS,)
            )

    async def figures_since(self, since_ms: int) -> dict[str, dict[str, Any]]:
        found = self.db.execute(
            "SELECT process, figures FROM process_figures WHERE updated_at >= ?", (since_ms,)
        )
        return {r[0]: json.loads(r[1]) for r in found}

    async def put_note(self, name: str, value: Any, now_ms: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO migration_notes (name, value, at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, at = excluded.at",
                (name, json.dumps(value), now_ms),
            )

    async def note(self, name: str) -> Any:
        row = self.db.execute("SELECT value FROM migration_notes WHERE name = ?", (name,))
        found = row.fetchone()
        return json.loads(found[0]) if found else None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- reads ---

    async def get_run(self, run_id: str) -> tuple[RunRecord, list[NodeRecord]]:
        record = self._run_record(run_id)
        top = self.db.execute(
            _NODE_SELECT + " WHERE run_id = ? AND parent IS NULL", (run_id,)
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for parent, status, n in self.db.execute(
            "SELECT parent, status, COUNT(*) FROM node_states WHERE run_id = ? AND parent IS NOT "
            "NULL GROUP BY parent, status",
            (run_id,),
        ):
            counts.setdefault(parent, {})[status] = n
        by_id = {r[0]: r for r in top}
        plan = self._plan(record.ir_hash)
        nodes = []
        for nid in plan.order:
            row = by_id.get(nid)
            nodes.append(rows.node_record(nid, row[1:] if row else None, counts.get(nid)))
        return record, nodes

    async def get_run_record(self, run_id: str) -> RunRecord:
        return self._run_record(run_id)

    async def get_run_head(self, run_id: str) -> RunHead:
        row = self.db.execute(
            f"SELECT {rows.RUN_HEAD_SELECT} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise NotFound("run", run_id)
        return rows.run_head(row)

    def _run_record(self, run_id: str) -> RunRecord:
        row = self.db.execute(
            f"SELECT {rows.RUN_SELECT} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise NotFound("run", run_id)
        return rows.run_record(row)

    async def list_runs(
        self,
        f: RunFilter,
        limit: int,
        cursor: str | None = None,
        sort: Sort = "created",
        source: Source = "primary",
    ) -> tuple[list[RunItem], str | None]:
        query = listing.list_query(f, sort, cursor, limit, "sqlite", source)
        if query is None:
            return [], None
        sql, args = query
        return listing.page([listing.item(r) for r in self.db.execute(sql, args)], limit, sort)

    async def count_runs(self, f: RunFilter, source: Source = "primary") -> dict[str, int]:
        query = listing.count_query(f, "sqlite", source)
        return listing.by_status([] if query is None else self.db.execute(*query).fetchall())

    async def run_stats(self, since_ms: int, source: Source = "primary") -> RunStats:
        q = listing.stats_queries("sqlite", source)
        workflows = listing.by_workflow(self.db.execute(q["by_workflow"]).fetchall())
        nodes = self.db.execute(q["nodes"]).fetchone()[0]
        ordered = [r[0] for r in self.db.execute(q["durations"], (since_ms,))]
        p50, p95 = listing.percentile(ordered, 0.5), listing.percentile(ordered, 0.95)
        return RunStats(workflows, nodes, len(ordered), p50, p95)

    async def list_children(
        self, run_id: str, node_id: str, offset: int, limit: int
    ) -> list[NodeRecord]:
        cur = self.db.execute(
            _NODE_SELECT + " WHERE run_id = ? AND parent = ? ORDER BY idx LIMIT ? OFFSET ?",
            (run_id, node_id, limit, offset),
        )
        return [rows.node_record(r[0], r[1:], None) for r in cur]

    async def read_events(self, run_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        cur = self.db.execute(
            "SELECT seq, type, at, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq "
            "LIMIT ?",
            (run_id, after_seq, limit),
        )
        return [StoredEvent(r[0], r[1], r[2], r[3].encode()) for r in cur]

    async def active_runs(self) -> list[str]:
        cur = self.db.execute("SELECT run_id FROM runs WHERE status IN ('pending', 'running')")
        return [r[0] for r in cur]

    async def unstarted_runs(self, scheduled_before_ms: int, limit: int) -> list[str]:
        cur = self.db.execute(
            "SELECT DISTINCT n.run_id FROM runs r JOIN node_states n ON n.run_id = r.run_id "
            "WHERE r.status IN ('pending', 'running') AND n.status = 'scheduled' "
            "AND n.scheduled_at < ? LIMIT ?",
            (scheduled_before_ms, limit),
        )
        return [r[0] for r in cur]

    # --- outbox and timers ---

    async def pending_outbox(self, dead: Collection[str], limit: int) -> list[OutboxEntry]:
        with self._transaction() as db:
            marks = ",".join("?" * len(dead))
            found = db.execute(
                "SELECT o.id, o.topic, o.key, o.payload, o.headers, o.node_id IS NULL OR "
                f"EXISTS ({_OPEN_ATTEMPT}) FROM outbox o WHERE o.holder IS NULL "
                f"OR o.holder IN ({marks}) ORDER BY o.id LIMIT ?",
                (*dead, limit),
            ).fetchall()
            stale = [(r[0],) for r in found if not r[5]]
            db.executemany("DELETE FROM outbox WHERE id = ?", stale)
        return [
            OutboxEntry(r[0], Message(r[1], r[2], bytes(r[3]), rows.loads(r[4])))
            for r in found
            if r[5]
        ]

    async def outbox_sent(self, ids: list[int]) -> None:
        if ids:
            with self._transaction() as db:
                db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", ranges(ids))

    async def release_outbox(self, ids: list[int]) -> None:
        if ids:
            with self._transaction() as db:
                db.executemany(
                    "UPDATE outbox SET holder = NULL WHERE id BETWEEN ? AND ?", ranges(ids)
                )

    async def beat(self, holder: Holder, alive_until_ms: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO processes (holder, name, host, pid, started_at, alive_until) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (holder) DO UPDATE "
                "SET alive_until = excluded.alive_until",
                (*_holder_values(holder), alive_until_ms),
            )

    async def holders(self) -> list[tuple[Holder, int]]:
        found = self.db.execute(
            "SELECT holder, name, host, pid, started_at, alive_until FROM processes"
        )
        return [(Holder(*r[:5]), r[5]) for r in found]

    async def leave(self, holder: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE outbox SET holder = NULL WHERE holder = ?", (holder,))
            db.execute("DELETE FROM processes WHERE holder = ?", (holder,))

    async def forget(self, holder: str) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM processes WHERE holder = ? "
                "AND NOT EXISTS (SELECT 1 FROM outbox WHERE holder = ?)",
                (holder, holder),
            )

    async def open_attempts(self, keys: Sequence[AttemptKey]) -> set[AttemptKey]:
        found: set[AttemptKey] = set()
        for i in range(0, len(keys), 300):  # one indexed query per 300 keys (900 parameters)
            part = keys[i : i + 300]
            found.update(
                (r[0], r[1], r[2])
                for r in self.db.execute(
                    f"WITH k(r, n, a) AS (VALUES {','.join(['(?, ?, ?)'] * len(part))}) "
                    "SELECT k.r, k.n, k.a FROM k JOIN node_states s ON s.run_id = k.r AND "
                    f"s.node_id = k.n AND s.attempt = k.a WHERE s.status IN {rows.OPEN_ATTEMPT}",
                    [v for key in part for v in key],
                )
            )
        return found

    async def due_timers(self, now_ms: int, limit: int) -> list[Timer]:
        cur = self.db.execute(
            "SELECT data FROM timers WHERE due_at <= ? ORDER BY due_at LIMIT ?", (now_ms, limit)
        )
        return [rows.load_timer(r[0]) for r in cur]

    async def next_timer_at(self) -> int | None:
        row = self.db.execute("SELECT MIN(due_at) FROM timers").fetchone()
        return None if row[0] is None else int(row[0])


def _holder_values(h: Holder) -> tuple[str, str, str, int, int]:
    return (h.id, h.name, h.host, h.pid, h.started_at_ms)


def _revision(path: Path) -> str | None:
    """The schema's revision (None: no schema yet), read without Alembic."""
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:  # no such table
            return None
    return str(row[0]) if row else None
