"""One error tree for headrace.

    HeadraceError
    ├── SpecError        a workflow spec is invalid (carries the field path)
    ├── InputError       a request or run input is invalid (carries the field path)
    ├── NotFound         an unknown workflow tag, run id or node id
    ├── Conflict         the request contradicts stored state (409)
    ├── NodeError        one attempt of a node failed (carries type and retryable)
    └── InfraError       a store or bus failed; always retryable

Backends translate their own exceptions into these at the adapter's edge.
"""

from __future__ import annotations


class HeadraceError(Exception):
    """Base of every error headrace raises on purpose."""


class SpecError(HeadraceError):
    """A workflow spec is invalid at `path` (e.g. ``nodes.price.map``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class InputError(HeadraceError):
    """A request or run input is invalid at `path`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class NotFound(HeadraceError):
    """Nothing is stored under `key` (a workflow tag, run id, node id)."""

    def __init__(self, what: str, key: str, known: str = "") -> None:
        super().__init__(f"{what} {key!r} not found" + (f" ({known})" if known else ""))
        self.what = what
        self.key = key


class Conflict(HeadraceError):
    """The request contradicts what is stored (HTTP 409)."""


class NodeError(HeadraceError):
    """One attempt of a node failed: ``NodeError("customer 42 does not exist", retryable=False)``.

    `message` is what the run's error says; `type` names the failure (``timeout``,
    ``http_status``, ``exit_code``...; ``task_error`` when a task does not say);
    `retryable` says whether another attempt may succeed (False: the node fails for good).
    """

    def __init__(self, message: str, *, type: str = "task_error", retryable: bool = True) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.retryable = retryable


class InfraError(HeadraceError):
    """A store or bus operation failed; the caller may retry."""
