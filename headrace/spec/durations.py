"""Durations as written in specs: "100ms", "5s", "1.5m", "1h30m", "2d", or a number of seconds."""

from __future__ import annotations

import re
from typing import Any

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: Any) -> int:
    """Milliseconds in `value`; ValueError with the reason when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '5s' or '100ms', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return round(value * 1000)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '5s' or '100ms', got {value!r}")
    text = value.strip()
    parts = _PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"expected a duration like '5s', '100ms' or '1h30m', got {value!r}")
    return round(sum(float(n) * _UNIT_MS[u] for n, u in parts))
