"""Replay a stored run's events through `evolve` and compare with its stored state."""

from __future__ import annotations

from typing import Any

from headrace.engine import evolve, new_run
from headrace.events import decode_event
from headrace.store import Store


async def replay_diff(store: Store, run_id: str) -> dict[str, Any]:
    """The fields where the fold of the stored events differs from the stored state ({} if
    none), and how many times each node completed."""
    stored = await store.load_run(run_id)
    folded = new_run(run_id, stored.plan, created_at_ms=stored.created_at_ms)
    completions: dict[str, int] = {}
    seq = 0
    while True:
        batch = await store.read_events(run_id, seq, 1000)
        if not batch:
            break
        for e in batch:
            event = decode_event(e.data)
            evolve(folded, event)
            if e.type == "NodeCompleted":
                node_id = getattr(event, "node_id", "")
                completions[node_id] = completions.get(node_id, 0) + 1
            seq = e.seq
    a, b = folded.comparable(), stored.comparable()
    diff: dict[str, Any] = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    twice = {n: c for n, c in completions.items() if c > 1}
    if twice:
        diff["completed_more_than_once"] = twice
    return diff
