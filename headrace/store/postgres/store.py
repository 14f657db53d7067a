"""PostgresStore: the pool, the reads, flags, pins, figures, outbox and timers (the commit's
statement is built in commit.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg

from headrace.clock import SYSTEM, Clock
from headrace.engine import NodeState, RunState
from headrace.errors import Conflict, InputError, NotFound
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
from headrace.store.postgres import queries as q
from headrace.store.postgres.commit import commit_params, commit_statement
from headrace.store.postgres.connect import (
    DRIVER_ERRORS,
    Row,
    acquire,
    connect_args,
    infra,
    keep_session,
    schema_revision,
    sqlalchemy_url,
)
from headrace.store.postgres.read_models import ReadModelsOnPostgres

if TYPE_CHECKING:
    from headrace.store.postgres.connect import Connection

FIGURES_KEPT_MS = 3_600_000  # a process's last report, after it stopped
_FLAGS_LOCK = 72410532  # serialises flag changes (a transaction's advisory lock)


class PostgresStore(ReadModelsOnPostgres):
    def __init__(
        self,
        url: str,
        *,
        read_url: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        clock: Clock = SYSTEM,
    ) -> None:
        self.url = url
        self.read_url = read_url  # another database for the read models (None: this one)
        self.clock = clock  # stamps the outbox rows and pins a commit writes
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._read_pool: asyncpg.Pool | None = None
        self._plans: dict[str, Plan] = {}
        self._synchronous_commit = "?"
        self._writing = asyncio.Lock()
        self._kept: asyncpg.Connection | None = None  # the commits' connection, see _writer

    @property
    def description(self) -> str:
        read = ", read models in another database" if self.read_url else ""
        return f"postgres(synchronous_commit={self._synchronous_commit}{read})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def open(self, migrate: bool = True) -> None:
        """Open the pools; migrate the schema to HEAD first (unless `migrate` is False: then
        a schema not at HEAD is an InputError). Both databases are asked before either is
        changed."""
        urls = {"the store": self.url}
        if self.read_url is not None:  # the same schema: only its read models are used
            urls["the read models' database"] = self.read_url
        migrations = {which: sqlalchemy_url(url) for which, url in urls.items()}  # checked
        found = {which: await schema_revision(url, which) for which, url in urls.items()}
        for which, revision in found.items():
            if revision == HEAD:
                continue
            if not migrate:
                raise InputError("database_url", not_at_head(which, revision))
            await asyncio.to_thread(upgrade, migrations[which])
        self._pool = await self._open_pool(self.url)
        if self.read_url is not None:
            self._read_pool = await self._open_pool(self.read_url)
        row = await self._one("SHOW synchronous_commit")
        self._synchronous_commit = row[0] if row else "?"

    async def _open_pool(self, url: str) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(
                **connect_args(url), min_size=self.min_size, max_size=self.max_size,
                reset=keep_session,
            )  # fmt: skip
        except DRIVER_ERRORS as e:
            raise infra(e) from e

    async def close(self) -> None:
        if self._kept is not None:
            self._kept.terminate()  # (close() waits for the server, which may be gone)
            self._kept = None
        for pool in (self._pool, self._read_pool):
            if pool is not None:
                await pool.close()
        self._pool = self._read_pool = None

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Connection]:
        """A pooled connection (the pool reconnects one the server closed); driver errors
        become InfraError here, at the edge."""
        async with acquire(self.pool) as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Connection]:
        """A connection to the read models' database (this one's unless read_url)."""
        async with acquire(self._read_pool or self.pool) as conn:
            yield conn

    @asynccontextmanager
    async def _writer(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection commits use: one of its own, beside the pool, kept between them
        and opened again once the server closed it. Commits in a process are serialized
        anyway, by the driver; on one connection the prepared commit and its backend's
        caches stay warm (handed out in turn, each pooled connection paid its first-use
        cost: the first runs were a fifth slower), and no checkout is paid per commit. Any
        error drops it: the next commit opens a fresh one."""
        async with self._writing:
            try:
                if self._kept is None or self._kept.is_closed():
                    self._kept = await asyncpg.connect(**connect_args(self.url))
                yield self._kept
            except BaseException as e:
                if self._kept is not None:  # an interrupted commit may leave it mid-reply
                    self._kept.terminate()
                    self._kept = None
                if isinstance(e, DRIVER_ERRORS):
                    raise infra(e) from e
                raise

    async def _one(self, sql: str, *args: Any) -> Row | None:
        async with self._conn() as conn:
            return await conn.fetchrow(sql, *args)

    async def _all(self, sql: str, *args: Any) -> list[Row]:
        async with self._conn() as conn:
            return await conn.fetch(sql, *args)

    # --- workflows ---

    async def put_workflow(
        self, ir: WorkflowIR, source: str, now_ms: int
    ) -> tuple[WorkflowRecord, bool]:
        digest = ir_hash(ir)
        async with self._conn() as conn:
            created = await conn.fetchrow(
                "INSERT INTO workflows (name, version, ir_hash, ir, source, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, version) DO NOTHING "
                "RETURNING created_at",
                ir.name, ir.version, digest, canonical_json(ir).decode(), source, now_ms,
            )  # fmt: skip
            if created is not None:
                return WorkflowRecord(ir.name, ir.version, digest, ir, now_ms), True
            row = await conn.fetchrow(
                "SELECT ir_hash, created_at FROM workflows WHERE name = $1 AND version = $2",
                ir.name,
                ir.version,
            )
        assert row is not None  # workflows are never deleted
        if row[0] != digest:
            raise Conflict(
                f"workflow {ir.tag} already exists with different content; "
                "register it under a new version"
            )
        return WorkflowRecord(ir.name, ir.version, digest, ir, row[1]), False

    async def get_workflow(self, tag: str) -> WorkflowRecord:
        name, _, version = tag.partition("@")
        if version:
            if not version.isdigit():
                raise NotFound("workflow", tag)
            row = await self._one(
                f"SELECT {rows.WORKFLOW_SELECT} FROM workflows WHERE name = $1 AND version = $2",
                name,
                int(version),
            )
        else:
            row = await self._one(
                f"SELECT {rows.WORKFLOW_SELECT} FROM workflows WHERE name = $1 "
                "ORDER BY version DESC LIMIT 1",
                name,
            )
        if row is None:
            raise NotFound("workflow", tag)
        return rows.workflow_record(row)

    async def list_workflows(self) -> list[WorkflowRecord]:
        found = await self._all(
            f"SELECT {rows.WORKFLOW_SELECT} FROM workflows ORDER BY name, version"
        )
        return [rows.workflow_record(r) for r in found]

    async def _plan(self, conn: Connection, digest: str) -> Plan:
        plan = self._plans.get(digest)
        if plan is None:
            row = await conn.fetchrow("SELECT ir FROM workflows WHERE ir_hash = $1 LIMIT 1", digest)
            if row is None:
                raise NotFound("workflow", digest)
            plan = self._plans[digest] = plan_from_json(row[0].encode())
        return plan

    # --- runs: the hot path ---

    async def run_for_key(self, idempotency_key: str) -> str | None:
        row = await self._one("SELECT run_id FROM runs WHERE idempotency_key = $1", idempotency_key)
        return None if row is None else str(row[0])

    async def commit(
        self, transitions: list[Transition], sent: Sequence[int] = (), holder: str | None = None
    ) -> Committed:
        # A run is written once per commit: a second transition of it would be checked
        # against the version its first one moved, so it is refused, as it would be in turn.
        seen: set[str] = set()
        todo = []
        for t in transitions:
            if t.state.run_id not in seen:
                seen.add(t.state.run_id)
                todo.append(t)
        params = commit_params(todo, sent, holder, self.clock.now_ms())
        sql, names = commit_statement(frozenset(params))
        async with self._writer() as conn:  # prepared once, by asyncpg's statement cache
            row = await conn.fetchrow(sql, *(params[n] for n in names))
        assert row is not None
        applied: set[str] = set(row[0])
        published = 0
        for t in todo:
            if t.state.run_id in applied:
                t.state.version += 1
                published += len(t.messages)
        ids = list(row[1])
        return Committed(seen - applied, ids[:published], ids[published:])

    async def run_version(self, run_id: str) -> int:
        row = await self._one("SELECT version FROM runs WHERE run_id = $1", run_id)
        if row is None:
            raise NotFound("run", run_id)
        return int(row[0])

    async def load_run(self, run_id: str, *, children: Children = "all") -> RunState:
        found = await self.load_runs([run_id], children=children)
        if not found:
            raise NotFound("run", run_id)
        return found[0]

    async def load_runs(
        self, run_ids: Sequence[str], *, children: Children = "all"
    ) -> list[RunState]:
        ids = list(run_ids)
        async with self._conn() as conn:
            found = await conn.fetch(
                f"SELECT run_id, {rows.RUN_STATE_SELECT} FROM runs WHERE run_id = ANY($1)", ids
            )
            nodes = await conn.fetch(q.NODES_OF[children], ids)
            plans = {row[1]: await self._plan(conn, row[1]) for row in found}
        by_run: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
        for n in nodes:
            by_run.setdefault(n[0], []).append((n[1], n[2:]))
        states = [rows.rebuild(r[0], plans[r[1]], r[2:], by_run.get(r[0], [])) for r in found]
        for state in states:
            state.partial = children == "none"
        return states

    async def load_nodes(
        self, wanted: Mapping[str, Collection[str]]
    ) -> dict[str, dict[str, NodeState]]:
        pairs = [(run_id, nid) for run_id, nids in wanted.items() for nid in nids]
        found = await self._all(q.NAMED_NODES, [p[0] for p in pairs], [p[1] for p in pairs])
        out: dict[str, dict[str, NodeState]] = {}
        for n in found:
            out.setdefault(n[0], {})[n[1]] = rows.node_from_row(n[2:])
        return out

    # --- flags ---

    async def stored_flags(self) -> dict[str, bool | int]:
        return {r[0]: json.loads(r[1]) for r in await self._all("SELECT name, value FROM flags")}

    async def set_flag(
        self, name: str, value: bool | int, who: str, why: str, now_ms: int
    ) -> FlagChange:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _FLAGS_LOCK)
            row = await conn.fetchrow("SELECT value FROM flags WHERE name = $1", name)
            await conn.execute(q.FLAG_UPSERT, name, json.dumps(value), now_ms)
            await conn.execute(
                q.FLAG_CHANGE, name, row[0] if row else None, json.dumps(value), who, why, now_ms
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
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _FLAGS_LOCK)
            stored = {r[0]: r[1] for r in await conn.fetch("SELECT name, value FROM flags")}
            found = rows.flag_values(expect, stored, initial)
            if found != dict(expect):
                return found
            for name, value in values:
                await conn.execute(q.FLAG_UPSERT, name, json.dumps(value), now_ms)
                await conn.execute(
                    q.FLAG_CHANGE, name, stored.get(name), json.dumps(value), who, why, now_ms
                )
        return None

    async def flag_history(self, name: str | None, limit: int) -> list[FlagChange]:
        select = f"SELECT {rows.FLAG_CHANGE_SELECT} FROM flag_changes"
        if name:
            found = await self._all(
                f"{select} WHERE name = $1 ORDER BY id DESC LIMIT $2", name, limit
            )
        else:
            found = await self._all(f"{select} ORDER BY id DESC LIMIT $1", limit)
        return [rows.flag_change(r) for r in found]

    # --- the Redis → Kafka migration ---

    async def pins(self, run_ids: Sequence[str]) -> dict[str, str]:
        found = await self._all(
            "SELECT run_id, bus FROM run_pins WHERE run_id = ANY($1)", list(run_ids)
        )
        return {r[0]: r[1] for r in found}

    async def repin(self, from_bus: str, to_bus: str, now_ms: int) -> list[str]:
        found = await self._all(
            "UPDATE run_pins p SET bus = $1 FROM runs r WHERE p.run_id = r.run_id "
            "AND p.bus = $2 AND r.status IN ('pending', 'running') RETURNING p.run_id",
            to_bus,
            from_bus,
        )
        return [r[0] for r in found]

    async def pin_counts(self, since_ms: int) -> dict[str, int]:
        found = await self._all(
            "SELECT bus, count(*) FROM run_pins WHERE at >= $1 GROUP BY bus", since_ms
        )
        return {r[0]: int(r[1]) for r in found}

    async def put_figures(self, process: str, figures: dict[str, Any], now_ms: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO process_figures (process, updated_at, figures) VALUES ($1, $2, $3) "
                "ON CONFLICT (process) DO UPDATE SET updated_at = excluded.updated_at, "
                "figures = excluded.figures",
                process, now_ms, json.dumps(figures),
            )  # fmt: skip
            await conn.execute(  # lives of processes gone for an hour
                "DELETE FROM process_figures WHERE updated_at < $1", now_ms - FIGURES_KEPT_MS
            )

    async def figures_since(self, since_ms: int) -> dict[str, dict[str, Any]]:
        found = await self._all(
            "SELECT process, figures FROM process_figures WHERE updated_at >= $1", since_ms
        )
        return {r[0]: json.loads(r[1]) for r in found}

    async def put_note(self, name: str, value: Any, now_ms: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO migration_notes (name, value, at) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, at = excluded.at",
                name, json.dumps(value), now_ms,
            )  # fmt: skip

    async def note(self, name: str) -> Any:
        row = await self._one("SELECT value FROM migration_notes WHERE name = $1", name)
        return json.loads(row[0]) if row else None

    # --- reads ---

    async def load_children(self, run_id: str, parent: str) -> dict[str, NodeState]:
        found = await self._all(
            f"SELECT {rows.NODE_SELECT} FROM node_states WHERE run_id = $1 AND parent = $2",
            run_id,
            parent,
        )
        return {n[0]: rows.node_from_row(n[1:]) for n in found}

    async def get_run_record(self, run_id: str) -> RunRecord:
        row = await self._one(f"SELECT {rows.RUN_SELECT} FROM runs WHERE run_id = $1", run_id)
        if row is None:
            raise NotFound("run", run_id)
        return rows.run_record(row)

    async def get_run_head(self, run_id: str) -> RunHead:
        row = await self._one(f"SELECT {rows.RUN_HEAD_SELECT} FROM runs WHERE run_id = $1", run_id)
        if row is None:
            raise NotFound("run", run_id)
        return rows.run_head(row)

    async def get_run(self, run_id: str) -> tuple[RunRecord, list[NodeRecord]]:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {rows.RUN_SELECT} FROM runs WHERE run_id = $1", run_id
            )
            if row is None:
                raise NotFound("run", run_id)
            top = await conn.fetch(
                f"SELECT {rows.NODE_SELECT} FROM node_states WHERE run_id = $1 AND parent IS NULL",
                run_id,
            )
            counted = await conn.fetch(
                "SELECT parent, status, COUNT(*) FROM node_states "
                "WHERE run_id = $1 AND parent IS NOT NULL GROUP BY parent, status",
                run_id,
            )
            record = rows.run_record(row)
            plan = await self._plan(conn, record.ir_hash)
        counts: dict[str, dict[str, int]] = {}
        for parent, status, n in counted:
            counts.setdefault(parent, {})[status] = n
        by_id = {r[0]: r for r in top}
        nodes = []
        for nid in plan.order:
            node = by_id.get(nid)
            nodes.append(rows.node_record(nid, node[1:] if node else None, counts.get(nid)))
        return record, nodes

    async def list_runs(
        self,
        f: RunFilter,
        limit: int,
        cursor: str | None = None,
        sort: Sort = "created",
        source: Source = "primary",
    ) -> tuple[list[RunItem], str | None]:
        query = listing.list_query(f, sort, cursor, limit, "postgres", source)
        if query is None:
            return [], None
        found = await self._search(source, *query)
        return listing.page([listing.item(r) for r in found], limit, sort)

    async def count_runs(self, f: RunFilter, source: Source = "primary") -> dict[str, int]:
        query = listing.count_query(f, "postgres", source)
        return listing.by_status([] if query is None else await self._search(source, *query))

    async def run_stats(self, since_ms: int, source: Source = "primary") -> RunStats:
        q = listing.stats_queries("postgres", source)
        async with self._on(source) as conn:
            workflows = listing.by_workflow(await conn.fetch(q["by_workflow"]))
            nodes = await conn.fetchrow(q["nodes"])
            ended = await conn.fetchrow(q["durations"], since_ms)
        assert nodes is not None and ended is not None
        return RunStats(workflows, nodes[0], ended[0], ended[1], ended[2])

    def _on(self, source: Source) -> AbstractAsyncContextManager[Connection]:
        return self._read() if source == "projection" else self._conn()

    async def _search(self, source: Source, sql: str, args: list[Any]) -> list[Row]:
        """A search. On the read models, planned for its arguments: a generic plan (the
        pool's setting, see _SERVER_SETTINGS) cannot use the pattern index for `LIKE $1`,
        nor weigh how common a label is, and planning per call costs far less than the scan
        it avoids. On the main tables the generic plan did as well or better (a label
        filter walks the newest-first index)."""
        if source == "primary":
            return await self._all(sql, *args)
        async with self._read() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            return await conn.fetch(sql, *args)

    async def list_children(
        self, run_id: str, node_id: str, offset: int, limit: int
    ) -> list[NodeRecord]:
        found = await self._all(
            f"SELECT {rows.NODE_SELECT} FROM node_states WHERE run_id = $1 AND parent = $2 "
            "ORDER BY idx LIMIT $3 OFFSET $4",
            run_id, node_id, limit, offset,
        )  # fmt: skip
        return [rows.node_record(r[0], r[1:], None) for r in found]

    async def read_events(self, run_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        found = await self._all(
            "SELECT seq, type, at, data FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq "
            "LIMIT $3",
            run_id, after_seq, limit,
        )  # fmt: skip
        return [StoredEvent(r[0], r[1], r[2], r[3].encode()) for r in found]

    async def active_runs(self) -> list[str]:
        found = await self._all("SELECT run_id FROM runs WHERE status IN ('pending', 'running')")
        return [r[0] for r in found]

    async def unstarted_runs(self, scheduled_before_ms: int, limit: int) -> list[str]:
        found = await self._all(
            "SELECT DISTINCT n.run_id FROM runs r JOIN node_states n ON n.run_id = r.run_id "
            "WHERE r.status IN ('pending', 'running') AND n.status = 'scheduled' "
            "AND n.scheduled_at < $1 LIMIT $2",
            scheduled_before_ms,
            limit,
        )
        return [r[0] for r in found]

    # --- outbox and timers ---

    async def pending_outbox(self, dead: Collection[str], limit: int) -> list[OutboxEntry]:
        found = await self._all(q.PENDING_OUTBOX, list(dead), limit)
        return [
            OutboxEntry(r[0], Message(r[1], r[2], bytes(r[3]), rows.loads(r[4]))) for r in found
        ]

    async def outbox_sent(self, ids: list[int]) -> None:
        if ids:
            async with self._conn() as conn:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)

    async def release_outbox(self, ids: list[int]) -> None:
        if ids:
            async with self._conn() as conn:
                await conn.execute(
                    "UPDATE outbox SET holder = NULL WHERE id = ANY($1::bigint[])", ids
                )

    async def beat(self, holder: Holder, alive_until_ms: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO processes (holder, name, host, pid, started_at, alive_until) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (holder) DO UPDATE "
                "SET alive_until = excluded.alive_until",
                holder.id, holder.name, holder.host, holder.pid, holder.started_at_ms,
                alive_until_ms,
            )  # fmt: skip

    async def holders(self) -> list[tuple[Holder, int]]:
        found = await self._all(
            "SELECT holder, name, host, pid, started_at, alive_until FROM processes"
        )
        return [(Holder(*r[:5]), r[5]) for r in found]

    async def leave(self, holder: str) -> None:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("UPDATE outbox SET holder = NULL WHERE holder = $1", holder)
            await conn.execute("DELETE FROM processes WHERE holder = $1", holder)

    async def forget(self, holder: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM processes WHERE holder = $1 "
                "AND NOT EXISTS (SELECT 1 FROM outbox WHERE holder = $1)",
                holder,
            )

    async def open_attempts(self, keys: Sequence[AttemptKey]) -> set[AttemptKey]:
        if not keys:
            return set()
        found = await self._all(q.OPEN_ATTEMPTS, *(list(k) for k in zip(*keys, strict=True)))
        return {(r[0], r[1], r[2]) for r in found}

    async def due_timers(self, now_ms: int, limit: int) -> list[Timer]:
        found = await self._all(
            "SELECT data FROM timers WHERE due_at <= $1 ORDER BY due_at LIMIT $2", now_ms, limit
        )
        return [rows.load_timer(r[0]) for r in found]

    async def next_timer_at(self) -> int | None:
        row = await self._one("SELECT MIN(due_at) FROM timers")
        return None if row is None or row[0] is None else int(row[0])
