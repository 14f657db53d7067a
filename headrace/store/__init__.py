"""The Store seam and its adapters: SQLite (embedded) and Postgres (the cluster)."""

from headrace.store.base import (
    AttemptKey,
    Committed,
    FlagChange,
    Holder,
    NodeRecord,
    OutboxEntry,
    RunHead,
    RunRecord,
    Store,
    StoredEvent,
    Transition,
    WorkflowRecord,
)

__all__ = [
    "AttemptKey",
    "Committed",
    "FlagChange",
    "Holder",
    "NodeRecord",
    "OutboxEntry",
    "RunHead",
    "RunRecord",
    "Store",
    "StoredEvent",
    "Transition",
    "WorkflowRecord",
]
