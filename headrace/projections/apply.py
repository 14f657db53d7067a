"""Applying a batch of events to the read models, inside one store transaction.

The store gives a `ReadTx` (its SQL); `project` does the rest, the same on every store: each
run's events at or below its applied seq are skipped (a redelivery, a second projector), and
when what is left does not follow on from the applied seq (a message lost, or one overtaken)
the run's events are read from the event log instead, so a read row is always a fold of a
prefix of its run's log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from headrace.events import Event
from headrace.projections.fold import RunRow, StateRow, fold

# (workflow name, version, status) -> (runs, open nodes) to add to `run_counts`
Counts = dict[tuple[str, int, str], tuple[int, int]]


class ReadTx(Protocol):
    async def runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        """The read rows of these runs that exist, each locked until the transaction ends."""

    async def states(self, wanted: Mapping[str, set[str]]) -> dict[str, dict[str, StateRow]]:
        """The state rows that exist of these (run id -> node ids)."""

    async def logged(self, ranges: Mapping[str, tuple[int, int]]) -> dict[str, list[Event]]:
        """For each run id -> (after, upto): its events in the event log with
        after < seq <= upto, in order."""

    async def write(
        self, runs: Sequence[RunRow], states: Sequence[StateRow], counts: Counts
    ) -> None:
        """Insert or update these rows, and add `counts` to `run_counts`."""


@dataclass(frozen=True)
class Projected:
    applied: int  # events folded in
    skipped: int  # events at or below their run's applied seq
    filled: int  # runs whose events were read from the log (a gap)
    last_event_at: int | None  # the newest event applied (its at_ms), for the lag


async def project(
    tx: ReadTx,
    batch: Mapping[str, Sequence[Event]],
    upto: Mapping[str, int] | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> Projected:
    """Fold each run's events of `batch` (run id -> events) into its rows through `tx`; the
    runs of `upto` (run id -> seq) are brought up to that seq from the event log.
    `checkpoint` is called just before the rows are written (crash tests)."""
    upto = upto or {}
    run_ids = sorted(batch.keys() | upto.keys())
    runs = await tx.runs(run_ids)
    todo: dict[str, tuple[RunRow, list[Event]]] = {}
    gaps: dict[str, tuple[int, int]] = {}
    skipped = 0
    for run_id in run_ids:
        run = runs.get(run_id) or RunRow(run_id=run_id)
        events = batch.get(run_id, ())
        fresh = sorted({e.seq: e for e in events if e.seq > run.last_seq}.values(), key=_seq)
        skipped += len(events) - len(fresh)
        target = max(upto.get(run_id, 0), fresh[-1].seq if fresh else 0)
        if target <= run.last_seq:
            continue
        if target - run.last_seq != len(fresh):  # a gap before, among or after them
            gaps[run_id] = (run.last_seq, target)
        todo[run_id] = (run, fresh)
    if gaps:
        logged = await tx.logged(gaps)
        for run_id in gaps:
            todo[run_id] = (todo[run_id][0], logged.get(run_id, []))
    wanted = {rid: _node_ids(events) for rid, (_, events) in todo.items()}
    states = await tx.states(wanted)
    changed: list[StateRow] = []
    counts: Counts = {}
    newest: int | None = None
    for run_id, (run, events) in todo.items():
        nodes = states.setdefault(run_id, {})
        if run.last_seq:
            _count(counts, run, -1)
        changed += [nodes[n] for n in sorted(fold(run, nodes, events))]
        _count(counts, run, 1)
        newest = max(newest or 0, run.last_event_at or 0)
    if checkpoint is not None:
        checkpoint()
    await tx.write([run for run, _ in todo.values()], changed, counts)
    applied = sum(len(events) for _, events in todo.values())
    return Projected(applied, skipped, len(gaps), newest)


def _count(counts: Counts, run: RunRow, sign: int) -> None:
    key = (run.workflow_name, run.workflow_version, run.status)
    runs, active = counts.get(key, (0, 0))
    counts[key] = (runs + sign, active + sign * run.active_nodes)


def _seq(e: Event) -> int:
    return e.seq


def _node_ids(events: list[Event]) -> set[str]:
    return {n for e in events if isinstance(n := getattr(e, "node_id", None), str)}


class Tables(Protocol):
    """Read tables, the live ones or a rebuild's, seen from the catch-up."""

    async def applied(self, run_ids: Sequence[str]) -> dict[str, int]:
        """The last seq applied of each of these runs that has a read row."""

    async def project(self, upto: Mapping[str, int]) -> Projected:
        """Bring these runs' rows up to the seq given, from the event log."""


class RunSeqs(Protocol):
    async def run_seqs(self, after_run_id: str, limit: int) -> list[tuple[str, int]]:
        """(run id, seq) from the main tables, by run id after `after_run_id`."""


async def catch_up(
    main: RunSeqs, tables: Tables, page: int = 5000, batch: int = 500
) -> tuple[int, int]:
    """Bring every run whose rows in `tables` are missing or behind the main tables up to
    date from the event log: (runs brought up, events applied). `page` runs are compared
    at a time (the main tables and the read models may be in two databases: they are
    compared here), `batch` runs brought up per transaction."""
    after, runs, events = "", 0, 0
    while seqs := await main.run_seqs(after, page):
        applied = await tables.applied([run_id for run_id, _ in seqs])
        behind = [(run_id, seq) for run_id, seq in seqs if applied.get(run_id, 0) < seq]
        for i in range(0, len(behind), batch):
            events += (await tables.project(dict(behind[i : i + batch]))).applied
        runs += len(behind)
        after = seqs[-1][0]
    return runs, events
