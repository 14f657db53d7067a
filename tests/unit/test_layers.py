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


# --- seams: an adapter never imports another adapter of its seam -------------------------

# the adapters of each seam (a module or a package); the seam's other modules are shared
ADAPTERS = {
    "bus": {"memory", "redis", "kafka", "migrating"},
    "store": {"sqlite", "postgres"},
}
MAX_MODULE_LINES = 620  # "about 600": past it, a module holds more than one thing
MAX_FUNCTION_LINES = 60
GENERATED = {"migrations"}  # Alembic's revisions


def adapter_of(path: Path) -> tuple[str, str] | None:
    """(seam, adapter) of a module under headrace/, if it is part of an adapter."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) >= 2 and parts[1] in ADAPTERS.get(parts[0], ()):
        return parts[0], parts[1]
    return None


def headrace_imports(path: Path) -> set[str]:
    """Every headrace module `path` imports, under TYPE_CHECKING too."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("headrace."):
            out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("headrace.")}
    return out


def modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if not GENERATED & set(p.relative_to(PACKAGE).parts)
    ]


@pytest.mark.parametrize("seam", sorted(ADAPTERS))
def test_adapters_of_a_seam_never_import_each_other(seam: str) -> None:
    found = set()
    for path in sorted((PACKAGE / seam).rglob("*.py")):
        mine = adapter_of(path)
        for name in headrace_imports(path):
            other = name.split(".")[2] if name.count(".") >= 2 else None
            theirs = name.startswith(f"headrace.{seam}.") and other in ADAPTERS[seam]
            if theirs and (mine is None or mine[1] != other):
                found.add((str(path.relative_to(PACKAGE)), name))
    # the package exports the adapters that need no extra: the others load when configured
    exported = {
        ("bus/__init__.py", "headrace.bus.memory"),
        ("bus/__init__.py", "headrace.bus.redis"),
    }
    assert found - exported == set()


def test_pure_parts_import_no_adapter() -> None:
    for part in PURE:
        for path in sorted((PACKAGE / part).rglob("*.py")):
            for name in headrace_imports(path):
                assert name.split(".")[1] not in {"bus", "store", "envs", "nodes"}, (path, name)


def test_no_module_is_too_long() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"over {MAX_MODULE_LINES} lines: split by what each part does"


def test_no_function_is_too_long() -> None:
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = n
    assert long == {}, f"over {MAX_FUNCTION_LINES} lines"


def test_the_bus_knows_nothing_of_the_store() -> None:
    """A run's pin is committed with the run and travels as a header: no bus (the migrating
    one included) reads or writes the store."""
    for path in sorted((PACKAGE / "bus").rglob("*.py")):
        assert not [n for n in headrace_imports(path) if n.startswith("headrace.store")], path
