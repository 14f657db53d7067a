"""Labels: `key: value` strings a run is started with, to find it again (search attributes).

A key is 1–63 characters of letters, digits, `_`, `.` and `-`, starting with a letter or a
digit; a value is a string of at most 256 characters (lone surrogates refused, as for any
stored string); a run has at most 32 labels. They never change after the start."""

from __future__ import annotations

import re
from typing import Any

from headrace.errors import InputError
from headrace.spec.values import json_problem

MAX_LABELS = 32
MAX_VALUE = 256
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
# a `key=value` filter, as the API's schema states it (parse_label_filters says what is wrong)
LABEL_FILTER = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}=[^\x00-\x1f\x7f]{0,256}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_labels(labels: Any, field: str = "labels") -> dict[str, str]:
    """`labels` as a run's labels; InputError naming the label (`labels.KEY`) and why."""
    if not isinstance(labels, dict):
        raise InputError(field, "must be an object of key: value strings")
    if len(labels) > MAX_LABELS:
        raise InputError(field, f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        where = f"{field}.{key}"
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise InputError(
                where, "a key is 1-63 letters, digits, '_', '.' or '-', from a letter or digit"
            )
        if not isinstance(value, str):
            raise InputError(where, f"must be a string, got {type(value).__name__}")
        if len(value) > MAX_VALUE:
            raise InputError(where, f"at most {MAX_VALUE} characters, got {len(value)}")
        if json_problem(value) is not None:
            raise InputError(where, "must be valid Unicode text")
        if _CONTROL.search(value):
            raise InputError(where, "must not hold control characters (NUL, newline, tab...)")
    return dict(labels)


def parse_label(text: str, field: str = "label") -> tuple[str, str]:
    """`key=value` (a command line's or a query's) as a label; InputError if malformed."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError(field, f"expected key=value, got {text!r}")
    check_labels({key: value}, field)
    return key, value


def parse_label_filters(texts: list[str], field: str = "label") -> list[tuple[str, str]]:
    """`key=value` filters (all must hold: the same key twice with two values matches
    nothing); InputError names the bad one."""
    if len(texts) > MAX_LABELS:
        raise InputError(field, f"at most {MAX_LABELS} label filters, got {len(texts)}")
    return [parse_label(text, field) for text in texts]
