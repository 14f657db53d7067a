"""Input schemas: JSON Schema 2020-12 whose regexes run on RE2, which never backtracks.

jsonschema matches `pattern` and `patternProperties` with Python's `re`, which backtracks:
``^(a+)+$`` against 28 a's and a ``!`` holds the GIL (the whole process) for over a minute,
doubling with each character. Here those keywords match with RE2 (linear in the text), and a
pattern RE2 cannot compile (backreferences, lookaround) is refused when the workflow is
registered, naming the field. Two ways around the keywords are refused too: another dialect
(`$schema`, whose validator uses `re` again) and `unevaluatedProperties` beside
`patternProperties` (jsonschema's code for it calls `re` itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import jsonschema
import re2
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from headrace.errors import SpecError

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is our error to report, not a stderr line

# keywords whose value is one subschema, a list of them, or a mapping name -> subschema
_ONE = (
    "additionalProperties",
    "unevaluatedProperties",
    "items",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "not",
    "unevaluatedItems",
    "contentSchema",
)
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "$defs", "dependentSchemas")


@lru_cache(maxsize=1024)
def regex(pattern: str) -> Any:
    """`pattern` compiled by RE2; re2.error if RE2 cannot compile it."""
    return re2.compile(pattern, _OPTIONS)


def check_input_schema(schema: Any, path: str) -> None:
    """Raise SpecError at `path` (or below) unless `schema` is a usable input schema."""
    if not isinstance(schema, dict):
        raise SpecError(path, "must be a JSON Schema such as {type: string}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise SpecError(path, f"invalid JSON Schema: {e.message}") from None
    unevaluated = patterned = None
    for where, sub in _subschemas(schema, path):
        if "$schema" in sub and sub["$schema"].rstrip("#") != DIALECT:
            raise SpecError(f"{where}.$schema", f"only JSON Schema 2020-12 ({DIALECT})")
        if isinstance(sub.get("pattern"), str):
            _check_regex(sub["pattern"], f"{where}.pattern")
        for key in sub.get("patternProperties", {}):
            _check_regex(key, f"{where}.patternProperties")
            patterned = where
        if "unevaluatedProperties" in sub:
            unevaluated = where
    if unevaluated is not None and patterned is not None:
        raise SpecError(
            f"{unevaluated}.unevaluatedProperties",
            "cannot be used together with patternProperties in one input schema",
        )


def _check_regex(pattern: str, path: str) -> None:
    try:
        regex(pattern)
    except re2.error as e:
        why = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise SpecError(
            path,
            f"{pattern!r} is not a pattern RE2 can run ({why}); patterns run in linear time, "
            "so backreferences and lookaround are not supported",
        ) from None


def _subschemas(schema: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema (a mapping) with its path, the schema itself first."""
    stack: list[tuple[str, Any]] = [(path, schema)]
    while stack:
        where, sub = stack.pop()
        if not isinstance(sub, dict):
            continue
        yield where, sub
        stack.extend((f"{where}.{k}", sub[k]) for k in _ONE if k in sub)
        for k in _LIST:
            if isinstance(sub.get(k), list):
                stack.extend((f"{where}.{k}[{i}]", s) for i, s in enumerate(sub[k]))
        for k in _NAMED:
            if isinstance(sub.get(k), dict):
                stack.extend((f"{where}.{k}.{name}", s) for name, s in sub[k].items())


# --- the keywords, matched with RE2 (the rest as jsonschema's own code) -----------------------


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not regex(pattern).search(instance):
        yield ValidationError(f"{_short(instance)} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if regex(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = [regex(p) for p in schema.get("patternProperties", {})]
    extras = sorted(
        k for k in instance if k not in known and not any(p.search(k) for p in patterns)
    )
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(k) for k in extras)
        yield ValidationError(f"additional properties are not allowed ({listed} unexpected)")


def _short(value: str) -> str:
    return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."


InputValidator: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
