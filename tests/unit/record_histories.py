"""Record the engine histories under tests/histories (see tests/unit/test_history_replay.py).

    .venv/bin/python tests/unit/record_histories.py             # every history
    .venv/bin/python tests/unit/record_histories.py NAME ...    # only these

Each history is one scenario (history_scenarios.py, history_random.py) with, after each
command, the decision the engine made. Re-record only on purpose, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from history_random import random_scenarios
from history_scenarios import REPO, Run
from history_scenarios import SCENARIOS as HAND_WRITTEN

HISTORIES = REPO / "tests" / "histories"
SCENARIOS: dict[str, Callable[[], Run]] = {**HAND_WRITTEN, **random_scenarios()}
RECORDS = {"events", "jobs", "timers", "cancels"}  # a decision's parts: one item a line


def about(name: str) -> str:
    return " ".join((SCENARIOS[name].__doc__ or "").split())


def to_text(value: Any, indent: str = "", one_a_line: bool = False) -> str:
    """JSON with a value on one line when it fits in 100 columns, and each command, event,
    job, timer and cancel on one line whatever its length: small files, readable diffs."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(indent) + len(flat) <= 100 or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + " "
    if isinstance(value, list):
        items = [
            json.dumps(v, ensure_ascii=False) if one_a_line else to_text(v, inner) for v in value
        ]
        return "[\n" + ",\n".join(inner + item for item in items) + "\n" + indent + "]"
    fields = [
        f"{inner}{json.dumps(k)}: "
        + (json.dumps(v, ensure_ascii=False) if k == "command" else to_text(v, inner, k in RECORDS))
        for k, v in value.items()
    ]
    return "{\n" + ",\n".join(fields) + "\n" + indent + "}"


def record(name: str) -> Path:
    history = {"about": about(name), **SCENARIOS[name]().recorder.history}
    path = HISTORIES / f"{name}.json"
    path.write_text(to_text(history) + "\n")
    return path


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        sys.exit(f"no such history: {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    HISTORIES.mkdir(exist_ok=True)
    for name in names or SCENARIOS:
        path = record(name)
        print(f"{path.relative_to(REPO)}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
