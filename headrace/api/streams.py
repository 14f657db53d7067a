"""A run's events as a stream: replay from a sequence number, then live, then the end."""

from __future__ import annotations

from collections.abc import AsyncIterator

from headrace.events import RUN_TERMINAL
from headrace.runtime.hub import Hub
from headrace.store import RunQueries, StoredEvent

TERMINAL_EVENTS = frozenset({"RunCompleted", "RunFailed", "RunCancelled"})


async def follow_events(
    store: RunQueries, hub: Hub, run_id: str, after_seq: int, *, idle_s: float = 15.0
) -> AsyncIterator[list[StoredEvent]]:
    """Yield the stored events after `after_seq` as they come, a batch per read, until the
    run's terminal event; yields an empty batch after `idle_s` without news (for
    keep-alives). A read costs what it returns, whatever the size of the run."""
    seq = after_seq
    while True:
        batch = await store.read_events(run_id, seq, 500)
        ended = next((i for i, e in enumerate(batch) if e.type in TERMINAL_EVENTS), None)
        if ended is not None:
            yield batch[: ended + 1]
            return
        if batch:
            yield batch
            seq = batch[-1].seq
            continue
        head = await store.get_run_head(run_id)
        if head.status in RUN_TERMINAL and head.seq <= seq:
            return
        if await hub.wait(run_id, seq, min(idle_s, 1.0)) <= seq:
            yield []


def sse(events: list[StoredEvent]) -> bytes:
    """A batch as Server-Sent Events (one chunk); an empty one as a keep-alive comment."""
    if not events:
        return b": keep-alive\n\n"
    return b"".join(
        b"id: %d\nevent: %s\ndata: %s\n\n" % (e.seq, e.type.encode(), e.data) for e in events
    )
