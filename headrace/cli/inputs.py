"""Run inputs from `-i key=value` options and `--input-file`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from headrace.config import over_body_limit
from headrace.errors import InputError


def parse_inputs(
    schemas: dict[str, Any],
    pairs: list[str],
    input_file: Path | None,
    *,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """File values first, then `-i` values; a value is JSON unless its input is a string.
    With `max_bytes` (HEADRACE_MAX_BODY_BYTES), a file or inputs larger than the API would
    take are refused, the file before it is read."""
    inputs: dict[str, Any] = {}
    if input_file is not None:
        inputs.update(_read_file(input_file, max_bytes))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError("-i", f"expected key=value, got {pair!r}")
        inputs[key] = _value(schemas.get(key, {}), raw)
    if max_bytes is not None:
        size = len(json.dumps(inputs, ensure_ascii=False, separators=(",", ":")).encode())
        if size > max_bytes:
            what = f"the inputs object ({size} bytes as JSON)"
            raise InputError("inputs", over_body_limit(what, max_bytes))
    return inputs


def _read_file(input_file: Path, max_bytes: int | None) -> dict[str, Any]:
    try:
        size = input_file.stat().st_size
        if max_bytes is not None and size > max_bytes:
            what = f"{input_file} ({size} bytes)"
            raise InputError("--input-file", over_body_limit(what, max_bytes))
        data = yaml.safe_load(input_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError("--input-file", f"cannot read {input_file}: {e}") from None
    if not isinstance(data, dict):
        raise InputError("--input-file", "must hold a JSON or YAML object")
    return data


def _value(schema: dict[str, Any], raw: str) -> Any:
    if schema.get("type") == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw
