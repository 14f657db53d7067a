"""What a value must be for headrace to store it as JSON and read it back unchanged.

Values from outside — workflow specs, run inputs, signal payloads, node outputs — are
checked before anything is stored: after the store, a value msgspec would change (`NaN` and
`inf` become null), that UTF-8 cannot hold (a lone surrogate such as ``"\\ud800"``) or
that the API cannot serialise again (pydantic refuses JSON nested past ~250 levels, and a
read wraps each value a few levels deeper) would break the run or change it silently.

`MAX_DEPTH` counts arrays and objects: ``[[1]]`` is 2 deep. Postgres jsonb, SQLite's JSON
text, msgspec and the stdlib all round-trip far deeper; 64 keeps a spec's literal (64) with a
node output (64) inside a read's wrapping well under pydantic's limit.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 64


def json_problem(value: Any, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first place `value` is not storable JSON, as (path suffix, why); None if it is.

    The path suffix is relative, e.g. ``.items[3].name`` (empty for `value` itself).
    Iterative, so a value nested far too deep is reported, not a RecursionError.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                return path, "holds a lone surrogate (\\ud800-\\udfff), which is not text"
        elif item is None or isinstance(item, bool | int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, f"is {item}, which JSON cannot hold"
        elif isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return path, f"is nested deeper than the limit of {max_depth} levels"
            found = _push_children(item, path, depth + 1, stack)
            if found is not None:
                return found
        else:
            return path, f"is a Python {type(item).__name__}, which is not JSON"
    return None


def _push_children(
    item: dict[Any, Any] | list[Any] | tuple[Any, ...],
    path: str,
    depth: int,
    stack: list[tuple[Any, str, int]],
) -> tuple[str, str] | None:
    if not isinstance(item, dict):
        stack.extend((v, f"{path}[{i}]", depth) for i, v in reversed(list(enumerate(item))))
        return None
    children = []
    for key, v in item.items():
        if not isinstance(key, str):
            return path, f"has the key {key!r}, but JSON keys are text (quote it)"
        if _has_surrogate(key):
            return path, f"has a key holding a lone surrogate: {key!r}"
        children.append((v, f"{path}.{key}", depth))
    stack.extend(reversed(children))
    return None


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def join_path(base: str, suffix: str) -> str:
    """`base` + a suffix from `json_problem` (``inputs`` + ``.x`` = ``inputs.x``)."""
    if not base:
        return suffix.removeprefix(".")
    return base + suffix
