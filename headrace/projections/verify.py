"""`headrace projections verify`: the read models against a fold of the event log, run by
run, and the counters (`run_counts`) against the rows they count. A run's read rows are
compared with the fold of its log up to the seq they applied, so runs still flowing are
judged on what the projector has seen; how far behind the read model is (runs missing, or
with events not yet applied) is counted apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from headrace.events import decode_event
from headrace.projections.fold import RunRow, StateRow, fold
from headrace.store import ReadModels, RunQueries


class VerifyStore(ReadModels, RunQueries, Protocol):
    """The read models, and the event log they are compared with."""


@dataclass
class Report:
    runs: int = 0
    behind: int = 0  # runs with events the read model has not applied yet (or no row)
    differences: dict[str, list[str]] = field(default_factory=dict)  # run id -> what differs


async def verify(
    store: VerifyStore, page: int = 500, progress: Callable[[Report], None] | None = None
) -> Report:
    report = Report()
    after = ""
    while runs := await store.run_seqs(after, page):
        for run_id, seq in runs:
            run, states = await store.read_rows(run_id)
            applied = run.last_seq if run is not None else 0
            report.behind += applied < seq
            if run is not None:
                found = await differences(store, run_id, run, states)
                if found:
                    report.differences[run_id] = found
        report.runs += len(runs)
        after = runs[-1][0]
        if progress is not None:
            progress(report)
    kept, recounted = await store.counters()
    for key in sorted(kept.keys() | recounted.keys()):
        if kept.get(key, (0, 0)) != recounted.get(key, (0, 0)):
            name = "run_counts " + "@".join(map(str, key[:2])) + f" {key[2]}"
            said = f"(runs, open nodes) {kept.get(key)}, the rows say {recounted.get(key)}"
            report.differences[name] = [said]
    return report


async def differences(
    store: VerifyStore, run_id: str, run: RunRow, states: list[StateRow]
) -> list[str]:
    """What the read rows say otherwise than the fold of the log up to their seq."""
    stored = await store.read_events(run_id, 0, run.last_seq)
    log = [decode_event(e.data) for e in stored if e.seq <= run.last_seq]
    want, nodes = RunRow(run_id=run_id), dict[str, StateRow]()
    fold(want, nodes, log)
    out = [
        f"{f}: {getattr(run, f)!r}, the log says {getattr(want, f)!r}"
        for f in RunRow.__struct_fields__
        if getattr(run, f) != getattr(want, f)
    ]
    have = {s.node_id: s for s in states}
    for node_id in sorted(have.keys() | nodes.keys()):
        if have.get(node_id) != nodes.get(node_id):
            out.append(
                f"node {node_id}: {have.get(node_id)!r}, the log says {nodes.get(node_id)!r}"
            )
    return out
