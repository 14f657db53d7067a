"""What the SQLite store keeps equals what the engine holds, after every commit.

Drives random runs (as in the engine property tests), commits each decision, and reloads the
run from its rows: any row a transition forgot to rewrite shows up as a difference.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_properties import Checker, workflows

from headrace.events import Message
from headrace.spec import canonical_json, parse_workflow, plan_of
from headrace.store import Transition
from headrace.store.sqlite import SqliteStore


@settings(max_examples=25)
@given(workflows(), st.integers(0, 2**32))
def test_reloaded_state_equals_engine_state(
    tmp_path_factory: Any, wf: tuple[dict[str, Any], dict[str, Any]], seed: int
) -> None:
    import asyncio

    asyncio.run(_check(tmp_path_factory.mktemp("db"), wf, seed))


async def _check(tmp: Path, wf: tuple[dict[str, Any], dict[str, Any]], seed: int) -> None:
    spec, inputs = wf
    ir = parse_workflow(spec)
    store = SqliteStore(tmp / "h.db")
    await store.open()
    try:
        await store.put_workflow(ir, canonical_json(ir).decode(), 0)
        checker = Checker(plan_of(ir), inputs, random.Random(seed))
        committed = 0
        new = True
        for _ in range(2000):
            events = checker.events[committed:]
            t = Transition(checker.state, events, [Message("t", "k", b"x")], new=new)
            result = await store.commit([t])
            assert not result.conflicts
            new = False
            committed = len(checker.events)
            reloaded = await store.load_run(checker.state.run_id)
            assert reloaded.comparable() == checker.state.comparable()
            if not checker.step():
                break
        events = checker.events[committed:]
        await store.commit([Transition(checker.state, events)])
        reloaded = await store.load_run(checker.state.run_id)
        assert reloaded.comparable() == checker.state.comparable()
    finally:
        await store.close()
