"""The Store seam and its adapters (SQLite now; Postgres fits the same Protocol)."""

from headrace.store.base import (
    Committed,
    NodeRecord,
    OutboxEntry,
    RunRecord,
    Store,
    StoredEvent,
    Transition,
    WorkflowRecord,
)

__all__ = [
    "Committed",
    "NodeRecord",
    "OutboxEntry",
    "RunRecord",
    "Store",
    "StoredEvent",
    "Transition",
    "WorkflowRecord",
]
