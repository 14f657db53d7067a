"""The Store seam and its adapters: SQLite (embedded) and Postgres (the cluster)."""

from headrace.store.base import (
    Committed,
    FlagChange,
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
    "FlagChange",
    "NodeRecord",
    "OutboxEntry",
    "RunRecord",
    "Store",
    "StoredEvent",
    "Transition",
    "WorkflowRecord",
]
