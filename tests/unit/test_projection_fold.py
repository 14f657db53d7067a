"""The read models' fold: after random runs, a run's read rows say what the engine's state
says; and however the bus hands the events over (in pieces, twice, out of order, some lost),
`project` ends with the same rows as a fold of the whole log."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_properties import Checker, workflows

from headrace.engine import RunState
from headrace.events import NODE_TERMINAL, Event
from headrace.projections.apply import Counts, project
from headrace.projections.fold import RunRow, StateRow, fold
from headrace.spec import parse_workflow, plan_of


def finished_run(wf: tuple[dict[str, Any], dict[str, Any]], seed: int) -> Checker:
    spec, inputs = wf
    checker = Checker(plan_of(parse_workflow(spec)), inputs, random.Random(seed))
    for _ in range(2000):
        if not checker.step():
            break
    return checker


def folded(run_id: str, events: Sequence[Event]) -> tuple[RunRow, dict[str, StateRow]]:
    run, nodes = RunRow(run_id=run_id), {}
    fold(run, nodes, events)
    return run, nodes


@settings(max_examples=60)
@given(workflows(), st.integers(0, 2**32))
def test_the_read_rows_say_what_the_engine_state_says(
    wf: tuple[dict[str, Any], dict[str, Any]], seed: int
) -> None:
    checker = finished_run(wf, seed)
    s: RunState = checker.state
    run, nodes = folded(s.run_id, checker.events)
    assert (run.status, run.started_at, run.ended_at) == (s.status, s.started_at_ms, s.ended_at_ms)
    assert (run.cost_cents, run.last_seq, run.labels) == (s.cost_cents, s.seq, s.labels)
    assert (run.workflow_name, run.workflow_version) == (s.plan.ir.name, s.plan.ir.version)
    assert run.error_type == (s.error.type if s.error else None)
    touched = {nid: n for nid, n in s.nodes.items() if n.status != "pending"}
    assert nodes.keys() == touched.keys()
    for nid, n in touched.items():
        row = nodes[nid]
        assert (row.status, row.attempts, row.error) == (n.status, n.attempt, n.error), nid
        assert (row.started_at, row.ended_at) == (n.started_at_ms, n.ended_at_ms), nid
    assert run.active_nodes == sum(n.status not in NODE_TERMINAL for n in touched.values())


class MemoryReadTx:
    """The rows in dicts, the log a list: the SQL stores' ReadTx without SQL."""

    def __init__(self, log: list[Event]) -> None:
        self.log = log
        self.run_rows: dict[str, RunRow] = {}
        self.state_rows: dict[tuple[str, str], StateRow] = {}
        self.counts: Counts = {}

    async def runs(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        return {r: _copy(self.run_rows[r]) for r in run_ids if r in self.run_rows}

    async def states(self, wanted: Mapping[str, set[str]]) -> dict[str, dict[str, StateRow]]:
        out: dict[str, dict[str, StateRow]] = {}
        for (run_id, node_id), row in self.state_rows.items():
            if node_id in wanted.get(run_id, ()):
                out.setdefault(run_id, {})[node_id] = _copy(row)
        return out

    async def logged(self, ranges: Mapping[str, tuple[int, int]]) -> dict[str, list[Event]]:
        return {
            run_id: [e for e in self.log if lo < e.seq <= hi]  # one run's log
            for run_id, (lo, hi) in ranges.items()
        }

    async def write(
        self, runs: Sequence[RunRow], states: Sequence[StateRow], counts: Counts
    ) -> None:
        self.run_rows.update({r.run_id: _copy(r) for r in runs})
        self.state_rows.update({(s.run_id, s.node_id): _copy(s) for s in states})
        for key, (n, active) in counts.items():
            old = self.counts.get(key, (0, 0))
            self.counts[key] = (old[0] + n, old[1] + active)


def _copy(row: Any) -> Any:
    return type(row)(**{f: getattr(row, f) for f in row.__struct_fields__})


@settings(max_examples=60)
@given(workflows(), st.integers(0, 2**32), st.randoms(use_true_random=False))
def test_any_delivery_of_the_events_ends_with_the_rows_of_the_whole_log(
    wf: tuple[dict[str, Any], dict[str, Any]], seed: int, rng: random.Random
) -> None:
    checker = finished_run(wf, seed)
    log = checker.events
    messages: list[list[Event]] = []
    i = 0
    while i < len(log):  # one message per transition: a few events each
        n = rng.randint(1, 4)
        messages.append(log[i : i + n])
        i += n
    delivered = [m for m in messages if rng.random() > 0.1]  # some lost
    delivered += rng.sample(messages, k=min(len(messages), rng.randint(0, 3)))  # some twice
    rng.shuffle(delivered)  # and out of order
    delivered.append(messages[-1])  # the last one comes: a lost tail is the catch-up's
    tx = MemoryReadTx(log)
    while delivered:
        k = rng.randint(1, 5)
        take, delivered = delivered[:k], delivered[k:]
        batch = {checker.state.run_id: [e for m in take for e in m]}
        asyncio.run(project(tx, batch))
    run, nodes = folded(checker.state.run_id, log)
    assert tx.run_rows[run.run_id] == run
    assert {k[1]: v for k, v in tx.state_rows.items()} == nodes
    key = (run.workflow_name, run.workflow_version, run.status)  # counted once, where it is
    assert {k: v for k, v in tx.counts.items() if v != (0, 0)} == {key: (1, run.active_nodes)}


def test_a_run_behind_is_brought_up_to_the_seq_asked_from_the_log() -> None:
    nodes = {"a": {"task": "m.f"}, "b": {"task": "m.f", "needs": ["a"]}}
    checker = finished_run(({"name": "two", "nodes": nodes}, {}), 1)
    log = checker.events
    tx = MemoryReadTx(log)
    done = asyncio.run(project(tx, {}, {checker.state.run_id: 2}))
    assert (done.applied, done.filled, tx.run_rows["run-1"].last_seq) == (2, 1, 2)
    done = asyncio.run(project(tx, {"run-1": log[:2]}, {"run-1": 1}))  # behind what it has
    assert (done.applied, done.skipped) == (0, 2)
    asyncio.run(project(tx, {}, {"run-1": len(log)}))
    assert tx.run_rows["run-1"] == folded("run-1", log)[0]
