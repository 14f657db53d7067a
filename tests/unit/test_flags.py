"""Flag values: what each kind accepts, and initial values from the environment."""

from __future__ import annotations

import pytest

from headrace.errors import InputError, NotFound
from headrace.flags import FLAGS, FlagValues, initial, parse


@pytest.mark.parametrize(
    ("raw", "value"),
    [(True, True), (False, False), ("on", True), ("TRUE", True), ("0", False), (" no ", False)],
)
def test_bool_flags_take_booleans_and_their_words(raw: object, value: bool) -> None:
    assert parse("ENABLE_KAFKA", raw) is value


@pytest.mark.parametrize("raw", [1, 0, "maybe", None, "", [True]])
def test_bool_flags_refuse_anything_else(raw: object) -> None:
    with pytest.raises(InputError, match="expected true or false"):
        parse("ENABLE_KAFKA", raw)


@pytest.mark.parametrize(("raw", "value"), [(0, 0), (100, 100), ("37", 37), (" 5 ", 5)])
def test_percent_takes_whole_numbers_0_to_100(raw: object, value: int) -> None:
    assert parse("KAFKA_TRAFFIC_PERCENT", raw) == value


@pytest.mark.parametrize("raw", [101, -1, True, 2.0, "1e2", "fifty", None])
def test_percent_refuses_anything_else(raw: object) -> None:
    with pytest.raises(InputError, match="from 0 to 100"):
        parse("KAFKA_TRAFFIC_PERCENT", raw)


def test_unknown_flag() -> None:
    with pytest.raises(NotFound):
        parse("NOPE", True)


def test_initial_values_come_from_the_environment_else_the_defaults() -> None:
    values = initial({"KAFKA_TRAFFIC_PERCENT": "10", "ENABLE_REDIS_WRITE": "off", "OTHER": "x"})
    assert values == {**{n: f.default for n, f in FLAGS.items()}} | {
        "KAFKA_TRAFFIC_PERCENT": 10,
        "ENABLE_REDIS_WRITE": False,
    }
    with pytest.raises(InputError) as bad:
        initial({"ENABLE_GRPC": "yes please"})
    assert bad.value.path == "ENABLE_GRPC"


def test_flags_are_read_through_their_definitions() -> None:
    values = FlagValues({"ENABLE_KAFKA": True})
    assert values.on("ENABLE_KAFKA") is True
    assert values.on("ENABLE_REDIS_WRITE") is True  # absent: its default, from FLAGS
    assert values.percent("KAFKA_TRAFFIC_PERCENT") == 0
    with pytest.raises(KeyError, match="ENABLE_KAFAK"):
        values.on("ENABLE_KAFAK")  # a misspelled flag is an error, never off
    with pytest.raises(KeyError, match="no percent flag"):
        values.percent("ENABLE_KAFKA")  # a bool is not a percentage
    assert (values.value("ENABLE_KAFKA"), values.value("KAFKA_TRAFFIC_PERCENT")) == (True, 0)
    with pytest.raises(KeyError, match="no flag is named 'KAFKA_PERCENT'"):
        values.value("KAFKA_PERCENT")
