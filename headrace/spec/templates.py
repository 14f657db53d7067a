"""Templates: JSON-shaped values whose strings may hold `${{ }}`, compiled once.

A string that is exactly one `${{ }}` keeps the expression's JSON type; text mixed with
expressions becomes a string. A secret (`secrets.NAME`, allowed only where the spec says)
evaluates to a marker that only the worker resolves, so clear secrets never reach the store
or the bus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from headrace.spec.expressions import Expr, SecretRef, split_template, to_text

Template = Callable[[Mapping[str, Any]], Any]

SECRET_KEY = "$secret"
SECRET_TEXT_KEY = "$secret_text"


def compile_template(raw: Any) -> Template:
    """Compile `raw` (validated by spec.parse) into a function of the evaluation context."""
    if isinstance(raw, str):
        return _compile_text(raw)
    if isinstance(raw, dict):
        items = [(k, compile_template(v)) for k, v in raw.items()]
        if all(getattr(t, "literal", False) for _, t in items):
            return _literal(raw)
        return lambda ctx: {k: t(ctx) for k, t in items}
    if isinstance(raw, list):
        elems = [compile_template(v) for v in raw]
        if all(getattr(t, "literal", False) for t in elems):
            return _literal(raw)
        return lambda ctx: [t(ctx) for t in elems]
    return _literal(raw)


def _literal(value: Any) -> Template:
    def constant(ctx: Mapping[str, Any]) -> Any:
        return value

    constant.literal = True  # type: ignore[attr-defined]
    return constant


def _compile_text(text: str) -> Template:
    if "${{" not in text:
        return _literal(text)
    parts = split_template(text)
    if len(parts) == 1 and isinstance(parts[0], Expr):
        expr = parts[0]
        return lambda ctx: _marked(expr.evaluate(ctx))
    compiled = [p if isinstance(p, str) else p.evaluate for p in parts]

    def render(ctx: Mapping[str, Any]) -> Any:
        values = [p if isinstance(p, str) else p(ctx) for p in compiled]
        if any(isinstance(v, SecretRef) for v in values):
            return {
                SECRET_TEXT_KEY: [
                    _marked(v) if isinstance(v, SecretRef) else to_text(v) for v in values
                ]
            }
        return "".join(to_text(v) for v in values)

    return render


def _marked(value: Any) -> Any:
    return {SECRET_KEY: value.name} if isinstance(value, SecretRef) else value


def secret_names(value: Any) -> set[str]:
    """The secret names an evaluated template refers to."""
    if isinstance(value, dict):
        if SECRET_KEY in value and len(value) == 1:
            return {str(value[SECRET_KEY])}
        return set().union(*(secret_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(secret_names(v) for v in value))
    return set()


def resolve_secrets(value: Any, secrets: Mapping[str, str]) -> Any:
    """Replace secret markers by their values (worker side only); KeyError for a missing one."""
    if isinstance(value, dict):
        if len(value) == 1 and SECRET_KEY in value:
            return secrets[value[SECRET_KEY]]
        if len(value) == 1 and SECRET_TEXT_KEY in value:
            return "".join(str(resolve_secrets(v, secrets)) for v in value[SECRET_TEXT_KEY])
        return {k: resolve_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_secrets(v, secrets) for v in value]
    return value
