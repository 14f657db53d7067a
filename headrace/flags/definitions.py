"""The switches of the migration path: each one's kind, default and meaning.

A flag's value is, in order: the last one set in the store (`headrace flags set`,
`PUT /v1/flags/{name}`), else the process environment's variable of the same name (read
once at start), else its default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from headrace.errors import InputError, NotFound

FlagValue = bool | int


@dataclass(frozen=True)
class Flag:
    name: str
    kind: Literal["bool", "percent"]
    default: FlagValue
    help: str


FLAGS: dict[str, Flag] = {
    f.name: f
    for f in [
        Flag("ENABLE_KAFKA_WRITE", "bool", False, "Phase 2: every message also goes to Kafka"),
        Flag("ENABLE_KAFKA", "bool", False, "Phase 3: runs may be pinned to Kafka"),
        Flag("KAFKA_TRAFFIC_PERCENT", "percent", 0, "share of new runs pinned to Kafka"),
        Flag("ENABLE_REDIS_WRITE", "bool", True, "messages go to Redis (off once on Kafka)"),
        Flag("ENABLE_PROJECTIONS", "bool", False, "projectors fill the read models"),
        Flag("USE_PROJECTIONS", "bool", False, "reads come from the read models"),
        Flag("ENABLE_GRPC", "bool", False, "the gRPC API beside REST"),
        Flag("ENABLE_PROTOBUF", "bool", False, "Protobuf payloads beside JSON"),
        Flag("ENABLE_OPA", "bool", False, "policy checks"),
    ]
}

_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}


def flag(name: str) -> Flag:
    found = FLAGS.get(name)
    if found is None:
        raise NotFound("flag", name, "the flags: " + ", ".join(FLAGS))
    return found


class FlagValues:
    """Flag values read through their definitions: a name no flag of that kind has is an
    error (a misspelled flag must not read as off), an absent one is its default."""

    def __init__(self, values: Mapping[str, FlagValue]) -> None:
        self.values = values  # may be a live view: the process's watcher updates it

    def on(self, name: str) -> bool:
        return bool(self.values.get(name, _defined(name, "bool").default))

    def percent(self, name: str) -> int:
        return int(self.values.get(name, _defined(name, "percent").default))

    def value(self, name: str) -> FlagValue:
        """A flag of either kind."""
        f = FLAGS.get(name)
        if f is None:
            raise KeyError(f"no flag is named {name!r}")
        return self.values.get(name, f.default)


def _defined(name: str, kind: str) -> Flag:
    f = FLAGS.get(name)
    if f is None or f.kind != kind:
        raise KeyError(f"no {kind} flag is named {name!r}")
    return f


def parse(name: str, value: Any, field: str = "value") -> FlagValue:
    """`value` (JSON, or text from a command line or the environment) as flag `name`'s
    value; InputError names `field` and says what is accepted."""
    f = flag(name)
    if f.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise InputError(field, f"expected true or false for {name}, got {value!r}")
    number = value.strip() if isinstance(value, str) else value
    if isinstance(number, str) and number.isdigit():
        number = int(number)
    if isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= 100:
        return number
    raise InputError(field, f"expected a whole number from 0 to 100 for {name}, got {value!r}")


def initial(environ: Mapping[str, str]) -> dict[str, FlagValue]:
    """Every flag's value before any is set in the store: its environment variable, else
    its default. A bad variable is an InputError naming it."""
    return {
        name: parse(name, environ[name], field=name) if name in environ else f.default
        for name, f in FLAGS.items()
    }
