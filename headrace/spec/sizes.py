"""Memory sizes as written in specs: "256Mi", "1Gi", "512M", "100k", or a number of bytes."""

from __future__ import annotations

import re
from typing import Any


def parse_memory_bytes(text: Any) -> int:
    """Bytes in a size; ValueError with the reason when it is not one."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    if not isinstance(text, str):
        raise ValueError(f"invalid memory size {text!r}: expected e.g. '256Mi' or '512M'")
    return parse_memory(text)


def parse_memory(text: str) -> int:
    """Parse a memory size into bytes.

    Accepts plain bytes (``"1048576"``), binary suffixes ``Ki Mi Gi Ti`` (powers of
    1024) and decimal suffixes ``k K M G T`` (powers of 1000): ``"256Mi"`` is
    268435456, ``"512M"`` is 512000000. Raises `ValueError` on anything else.
    """
    match = _MEMORY_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid memory size {text!r}: expected an integer with an optional unit "
            f"({', '.join(_MEMORY_UNITS)}), e.g. '256Mi' or '512M'"
        )
    number, unit = match.groups()
    return int(number) * _MEMORY_UNITS[unit or ""]


_MEMORY_UNITS: dict[str, int] = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_MEMORY_RE = re.compile(r"(\d+)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?")
