"""The Postgres store reads libpq-style URLs; asyncpg would send libpq's own options to the
server as settings, so the store translates them."""

import pytest

from headrace.errors import InputError
from headrace.store.postgres import connect_args


def test_libpq_options_become_server_settings_and_the_timeout_an_argument() -> None:
    args = connect_args(
        "postgresql://u:p@h:5433/db?connect_timeout=3"
        "&options=-csynchronous_commit%3Doff%20-cwork_mem%3D8MB&application_name=x"
    )
    assert args["dsn"] == "postgresql://u:p@h:5433/db?application_name=x"
    assert args["timeout"] == 3.0
    assert args["server_settings"] == {
        "plan_cache_mode": "force_generic_plan",
        "synchronous_commit": "off",
        "work_mem": "8MB",
    }


def test_a_plain_url_gets_the_defaults() -> None:
    args = connect_args("postgresql://postgres@127.0.0.1:5432/test")
    assert args["dsn"] == "postgresql://postgres@127.0.0.1:5432/test"
    assert args["timeout"] == 10.0


def test_a_malformed_option_names_the_setting() -> None:
    with pytest.raises(InputError, match="database_url"):
        connect_args("postgresql://h/db?options=-cnovalue")
    with pytest.raises(InputError, match="connect_timeout"):
        connect_args("postgresql://h/db?connect_timeout=soon")
