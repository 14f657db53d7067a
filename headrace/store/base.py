"""The Store seam: the durable source of truth (events, run and node state, outbox, timers).

Every method is a coroutine. `commit` is the hot path: many runs' transitions in one
transaction, each guarded by the run's version (optimistic concurrency), so a transition is
applied exactly once whatever the interleaving of writers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from headrace.engine import NodeState, RunState
from headrace.events import ErrorInfo, Event, Message, NodeStatus, RunStatus, Timer
from headrace.projections.apply import Counts, Projected, Tables
from headrace.projections.fold import RunRow, StateRow
from headrace.spec import WorkflowIR
from headrace.store.listing import RunFilter, RunItem, RunStats, Sort, Source


@dataclass
class Transition:
    """One run's step: its state after the events, and what goes out with it."""

    state: RunState
    events: list[Event]
    messages: list[Message] = field(default_factory=list)  # published after the commit
    timers: list[Timer] = field(default_factory=list)
    fired: list[Timer] = field(default_factory=list)  # timers this step consumed
    new: bool = False  # a run being created (inserted, not updated)
    idempotency_key: str | None = None
    pin: str | None = None  # a new run's bus in the Redis → Kafka migration (runtime/pins.py)
    # jobs the committing process runs on its own worker: written to the outbox, not published
    local: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class FlagChange:
    """One change of a feature flag, as the audit keeps it."""

    name: str
    old: bool | int | None  # None: not set in the store before (the initial value applied)
    new: bool | int
    who: str
    why: str
    at_ms: int


@dataclass(frozen=True)
class Committed:
    """What a commit did: the runs it refused (their version had moved), the ids of the
    outbox rows it wrote for `messages` (to be marked sent once published) and for `local`
    jobs (to be marked sent once their results are in), in the order of the transitions."""

    conflicts: set[str]
    outbox_ids: list[int]
    local_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Holder:
    """A process that writes the outbox: the rows it wrote are its own while it is alive."""

    id: str  # unique per process start
    name: str
    host: str
    pid: int
    started_at_ms: int


AttemptKey = tuple[str, str, int]  # (run id, node id, attempt)
# a run's map children to load: all, those not ended, or none (its top-level nodes only)
Children = Literal["all", "open", "none"]


@dataclass(frozen=True)
class WorkflowRecord:
    name: str
    version: int
    ir_hash: str
    ir: WorkflowIR
    created_at_ms: int

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    status: NodeStatus
    attempt: int
    output: Any
    error: ErrorInfo | None
    scheduled_at_ms: int | None
    started_at_ms: int | None
    ended_at_ms: int | None
    cost_cents: int
    width: int | None = None
    children: dict[str, int] | None = None  # map nodes: children by status


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    workflow_tag: str
    ir_hash: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: ErrorInfo | None
    failed_node: str | None
    cost_cents: int
    seq: int
    created_at_ms: int
    started_at_ms: int | None
    ended_at_ms: int | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunHead:
    """What a check of a run reads: its row without the inputs and outputs, whose size
    grows with the run's (a 100,000-item list mapped over, the outputs of every child)."""

    run_id: str
    workflow_tag: str
    status: RunStatus
    seq: int


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    type: str
    at_ms: int
    data: bytes  # the event as JSON


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    message: Message


class Catalogue(Protocol):
    """The workflow catalogue: registered workflows by `name@version`."""

    async def put_workflow(
        self, ir: WorkflowIR, source: str, now_ms: int
    ) -> tuple[WorkflowRecord, bool]:
        """Store a workflow; (record, True) if new, (record, False) if identical content was
        already there; Conflict if `name@version` holds different content."""

    async def get_workflow(self, tag: str) -> WorkflowRecord:
        """By `name@version`, or `name` for the highest version; NotFound otherwise."""

    async def list_workflows(self) -> list[WorkflowRecord]: ...


class Outbox(Protocol):
    """What a process owes the bus: outbox rows until published, and the attempts still open
    (a job of any other is stale)."""

    async def pending_outbox(self, dead: Collection[str], limit: int) -> list[OutboxEntry]:
        """What a dead process left unpublished: rows released, or held by one of `dead`,
        oldest first. Job rows among them whose attempt is no longer scheduled or running
        are deleted in the same transaction, never returned."""

    async def outbox_sent(self, ids: list[int]) -> None: ...

    async def release_outbox(self, ids: list[int]) -> None:
        """Hand these rows to any relay now (their holder will not publish them)."""

    async def open_attempts(self, keys: Sequence[AttemptKey]) -> set[AttemptKey]:
        """Those of `keys` whose node is still scheduled or running that attempt (a job of
        any other is stale: its attempt ended, or a later one superseded it)."""

    async def unstarted_runs(self, scheduled_before_ms: int, limit: int) -> list[str]:
        """Ids of runs not yet ended with an attempt scheduled before the given time and
        not started: their job may have been lost by the bus."""


class RunLog(Outbox, Protocol):
    """Run commits and loads: the driver's store. A commit writes its outbox rows, so the
    outbox goes with it."""

    async def run_for_key(self, idempotency_key: str) -> str | None:
        """The run id created under this idempotency key, if any."""

    async def commit(
        self, transitions: list[Transition], sent: Sequence[int] = (), holder: str | None = None
    ) -> Committed:
        """Apply all transitions in one transaction, except those whose run version had moved
        (a new run whose idempotency key exists counts as such): they are reported in
        `conflicts` and nothing of them is written. Outbox rows (of `messages` and `local`
        jobs) are written as `holder`'s, a job's row with its attempt. The same transaction
        deletes the `sent` outbox rows (published since), which saves a transaction per
        batch, and the job rows of every attempt the transitions end (completed, failed,
        retrying, cancelled): a job whose attempt ended is never sent again."""

    async def run_version(self, run_id: str) -> int:
        """The committed version of a run (NotFound for an unknown id)."""

    async def load_run(self, run_id: str, *, children: Children = "all") -> RunState:
        """The run's current state (NotFound for an unknown id). With `children="open"`,
        only the map children not yet ended are in it, whatever the map's width: what a
        decision reads, but for the result that may complete a map (`load_children`). With
        `children="none"`, its top-level nodes only (`partial`: see `decided_alone`)."""

    async def load_children(self, run_id: str, parent: str) -> dict[str, NodeState]:
        """Every child of map `parent`, by node id."""

    async def load_nodes(
        self, wanted: Mapping[str, Collection[str]]
    ) -> dict[str, dict[str, NodeState]]:
        """The nodes named (node ids by run id) that exist, by run and node id, in one round
        trip: the map children a batch of commands is about, for states loaded without them."""

    async def load_runs(
        self, run_ids: Sequence[str], *, children: Children = "all"
    ) -> list[RunState]:
        """The current states of the known runs among `run_ids`, in one round trip."""

    async def active_runs(self) -> list[str]:
        """Ids of runs not yet ended (recovery republishes their jobs)."""


class Leases(Protocol):
    """Which processes are alive: an outbox row belongs to its writer while its lease holds."""

    async def beat(self, holder: Holder, alive_until_ms: int) -> None:
        """Say that `holder` is alive until `alive_until_ms` (its rows stay its own)."""

    async def holders(self) -> list[tuple[Holder, int]]:
        """Every process that beat and has not left or been forgotten, with the time its
        last beat said it is alive until."""

    async def leave(self, holder: str) -> None:
        """A graceful stop: release every row of `holder` and forget it."""

    async def forget(self, holder: str) -> None:
        """Forget a dead holder, unless it still holds rows."""


class TimerBook(Protocol):
    """Durable timers: retries' backoff, wait timeouts, attempt deadlines."""

    async def due_timers(self, now_ms: int, limit: int) -> list[Timer]: ...

    async def next_timer_at(self) -> int | None: ...


class FlagBook(Protocol):
    """Feature flags and their audit trail."""

    async def stored_flags(self) -> dict[str, bool | int]:
        """The flags set in the store (the others keep their initial value)."""

    async def set_flag(
        self, name: str, value: bool | int, who: str, why: str, now_ms: int
    ) -> FlagChange:
        """Set a flag and record the change, in one transaction."""

    async def flag_history(self, name: str | None, limit: int) -> list[FlagChange]:
        """Changes, newest first; of one flag, or of all."""

    async def swap_flags(
        self,
        expect: Mapping[str, bool | int],
        values: Sequence[tuple[str, bool | int]],
        initial: Mapping[str, bool | int],
        who: str,
        why: str,
        now_ms: int,
    ) -> dict[str, bool | int] | None:
        """Compare-and-set, in one transaction serialised with every other flag change:
        when each flag of `expect` has that value (stored, else its `initial` value), set
        `values` in order, recording each change, and return None; otherwise change nothing
        and return the values found for `expect`'s flags."""


class PinBook(Protocol):
    """The bus each run is pinned to during the Redis → Kafka migration: written by the
    commit that creates the run (`Transition.pin`), moved by a rollback."""

    async def pins(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The pins of those of `run_ids` that have one."""

    async def repin(self, from_bus: str, to_bus: str, now_ms: int) -> list[str]:
        """Move the unfinished runs pinned to `from_bus` to `to_bus`; returns their ids."""

    async def pin_counts(self, since_ms: int) -> dict[str, int]:
        """How many runs first pinned since `since_ms` are pinned to each bus now."""


class FigureBook(Protocol):
    """The migration's figures (each process's report) and notes (e.g. the latency baseline)."""

    async def put_figures(self, process: str, figures: dict[str, Any], now_ms: int) -> None:
        """Replace what `process` reported (its figures of the last second); forget the
        reports of processes silent for an hour."""

    async def figures_since(self, since_ms: int) -> dict[str, dict[str, Any]]:
        """What each process reported since `since_ms`, by process."""

    async def put_note(self, name: str, value: Any, now_ms: int) -> None:
        """Keep a named value of the migration (e.g. the latency baseline)."""

    async def note(self, name: str) -> Any:
        """A note's value, or None."""


class RunQueries(Protocol):
    """Reads for the API: runs, their nodes and events, a page at a time."""

    async def get_run(self, run_id: str) -> tuple[RunRecord, list[NodeRecord]]:
        """The run and its top-level nodes, map children counted by status."""

    async def get_run_record(self, run_id: str) -> RunRecord:
        """The run alone (one query); NotFound for an unknown id."""

    async def get_run_head(self, run_id: str) -> RunHead:
        """The run's status, workflow and last event: one row, read without its inputs and
        outputs, so it costs the same whatever the size of the run; NotFound for an
        unknown id."""

    async def list_runs(
        self,
        f: RunFilter,
        limit: int,
        cursor: str | None = None,
        sort: Sort = "created",
        source: Source = "primary",
    ) -> tuple[list[RunItem], str | None]:
        """The runs matching `f`, a page at a time: newest first, or (`ended`) the ended
        ones, most recently ended first; from the main tables or the read model (the same
        answer, once the read model caught up). InputError for a malformed cursor."""

    async def count_runs(self, f: RunFilter, source: Source = "primary") -> dict[str, int]:
        """How many runs match `f`, by status (every status, zeros included)."""

    async def run_stats(self, since_ms: int, source: Source = "primary") -> RunStats:
        """Runs by workflow and status, nodes active, and the durations (p50, p95) of the
        runs ended since `since_ms`."""

    async def list_children(
        self, run_id: str, node_id: str, offset: int, limit: int
    ) -> list[NodeRecord]: ...

    async def read_events(self, run_id: str, after_seq: int, limit: int) -> list[StoredEvent]: ...


class ReadModels(Protocol):
    """The read models the projector keeps, `runs_read` and `states_read` (rows and fold:
    headrace/projections/), and what its catch-up compares them with."""

    async def project(
        self,
        batch: Mapping[str, Sequence[Event]],
        upto: Mapping[str, int] | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> Projected:
        """In one transaction, fold `batch` (run id -> events, any order, duplicates
        allowed) into the read rows: a run's events at or below its applied seq are skipped,
        and a run whose events do not follow on from it is read from the event log (as are
        the runs of `upto`, up to the seq given). `checkpoint` is called inside the
        transaction before the writes (crash tests). See projections/apply.py."""

    async def applied_seqs(self, run_ids: Sequence[str]) -> dict[str, int]:
        """The last seq applied of each of these runs that has a read row."""

    async def run_seqs(self, after_run_id: str, limit: int) -> list[tuple[str, int]]:
        """(run id, seq) from the main tables, by run id after `after_run_id`."""

    async def read_rows(self, run_id: str) -> tuple[RunRow | None, list[StateRow]]:
        """A run's read row and its state rows (by node id)."""

    async def read_model_counts(self) -> dict[str, int]:
        """Runs in the main tables (`main`) and in the read model (`projected`)."""

    async def counters(self) -> tuple[Counts, Counts]:
        """`run_counts` as kept, and as counted again from `runs_read` (for verify)."""


ANOTHER_REBUILD = "another rebuild of these read models is running (one at a time)"


class Rebuilds(Protocol):
    """A rebuild of the read models from the event log into fresh tables (`runs_read_next`,
    ...) while the live ones serve, then put in their place (projections/rebuild.py)."""

    async def rebuild_open(self) -> tuple[str, int]:
        """Make the fresh tables unless a rebuild left them; the last run id they hold ('' if
        none: a rebuild fills them in run id order, one committed page at a time) and how
        many runs."""

    def rebuild_lock(self) -> AbstractAsyncContextManager[None]:
        """Held for a whole rebuild, by one at a time: Conflict when another holds it (a
        rebuild that was killed holds it no more)."""

    def rebuild_tables(self) -> Tables:
        """The fresh tables, each call a transaction of its own."""

    async def rebuild_swap(self, catch_up: Callable[[Tables], Awaitable[object]]) -> None:
        """In one transaction, the projectors' writes held: `catch_up` the fresh tables (in
        that transaction) with the main tables, put them in place of the live ones, drop
        the old."""


class Store(
    Catalogue,
    RunLog,
    Leases,
    TimerBook,
    FlagBook,
    PinBook,
    FigureBook,
    RunQueries,
    ReadModels,
    Rebuilds,
    Protocol,
):
    """Everything a backend stores, in the role-sized protocols above: one class per backend
    implements them all; a caller names the protocol it uses."""

    async def open(self, migrate: bool = True) -> None:
        """Connect and apply migrations (without `migrate`, a schema not at the newest
        revision is an InputError: what only reads or checks it changes nothing)."""

    async def close(self) -> None: ...
