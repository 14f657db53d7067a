"""The pure parts (spec, events, engine) import no I/O: ARCHITECTURE §2 and §6."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PURE = ["spec", "events", "engine"]
ALLOWED = {
    "__future__",
    "ast",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "json",
    "math",
    "operator",
    "re",
    "re2",  # RE2 for user patterns: linear time, no I/O
    "heapq",
    "typing",
    "keyword",
    "jsonschema",
    "msgspec",
    "yaml",
    "headrace",
}
PACKAGE = Path(__file__).resolve().parents[2] / "headrace"


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("part", PURE)
def test_pure_parts_import_no_io(part: str) -> None:
    for path in sorted((PACKAGE / part).glob("*.py")):
        assert imports(path) <= ALLOWED, (path.name, imports(path) - ALLOWED)


@pytest.mark.parametrize("part", PURE)
def test_pure_parts_import_only_pure_headrace_modules(part: str) -> None:
    for path in sorted((PACKAGE / part).glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("headrace."):
                inner = (node.module or "").split(".")[1]
                assert inner in {*PURE, "errors"}, (path.name, node.module)
