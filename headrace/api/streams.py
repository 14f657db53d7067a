"""A run's events as a stream: replay from a sequence number, then live, then the end."""

from __future__ import annotations

from collections.abc import AsyncIterator

from headrace.events import RUN_TERMINAL
from headrace.runtime.hub import Hub
from headrace.store import Store, StoredEvent

TERMINAL_EVENTS = frozenset({"RunCompleted", "RunFailed", "RunCancelled"})


async def follow_events(
    store: Store, hub: Hub, run_id: str, after_seq: int, *, idle_s: float = 15.0
) -> AsyncIterator[StoredEvent | None]:
    """Yield stored events after `after_seq` as they come, until the run's terminal event;
    yields None after `idle_s` without news (for keep-alives)."""
    seq = after_seq
    while True:
        batch = await store.read_events(run_id, seq, 500)
        for event in batch:
            yield event
            seq = event.seq
            if event.type in TERMINAL_EVENTS:
                return
        if batch:
            continue
        record = await store.get_run_record(run_id)
        if record.status in RUN_TERMINAL and record.seq <= seq:
            return
        if await hub.wait(run_id, seq, min(idle_s, 1.0)) <= seq:
            yield None


def sse(event: StoredEvent) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), event.data)
