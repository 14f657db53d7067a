"""Run inputs from `-i key=value` options and `--input-file`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from headrace.errors import InputError


def parse_inputs(
    schemas: dict[str, Any], pairs: list[str], input_file: Path | None
) -> dict[str, Any]:
    """File values first, then `-i` values; a value is JSON unless its input is a string."""
    inputs: dict[str, Any] = {}
    if input_file is not None:
        try:
            data = yaml.safe_load(input_file.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise InputError("--input-file", f"cannot read {input_file}: {e}") from None
        if not isinstance(data, dict):
            raise InputError("--input-file", "must hold a JSON or YAML object")
        inputs.update(data)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError("-i", f"expected key=value, got {pair!r}")
        inputs[key] = _value(schemas.get(key, {}), raw)
    return inputs


def _value(schema: dict[str, Any], raw: str) -> Any:
    if schema.get("type") == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw
