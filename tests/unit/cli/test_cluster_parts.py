"""The pure parts of `cluster up`: how a death is worded and how an env file is read."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from headrace.cli.cluster import describe, plan, read_env_file
from headrace.errors import InputError


def test_a_death_is_worded_by_its_exit_code_or_signal() -> None:
    assert describe(0) == "exited with code 0"
    assert describe(3) == "exited with code 3"
    assert describe(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe(-200) == "was killed by signal 200"


def test_env_file_syntax(tmp_path: Path) -> None:
    env = tmp_path / "cluster.env"
    env.write_text(
        "# the migration\n"
        "export HEADRACE_KAFKA_URL=kafka://127.0.0.1:9092\n"
        "\n"
        "HEADRACE_VARS='{\"a\": 1}'\n"
        "EMPTY=\n"
    )
    assert read_env_file(env) == {
        "HEADRACE_KAFKA_URL": "kafka://127.0.0.1:9092",
        "HEADRACE_VARS": '{"a": 1}',
        "EMPTY": "",
    }


def test_env_file_errors_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--env-file: cannot read .*missing\.env"):
        read_env_file(tmp_path / "missing.env")
    bad = tmp_path / "bad.env"
    bad.write_text("HEADRACE_BUS=redis://x\nJUSTAKEY\n")
    with pytest.raises(InputError, match="'JUSTAKEY' has no value"):
        read_env_file(bad)


def test_plan_adds_monitor_and_shadow_when_migrating() -> None:
    names = [name for name, _ in plan(1, 2)]
    assert names == ["api", "coordinator-1", "worker-1", "worker-2", "relay", "projector"]
    assert [name for name, _ in plan(1, 1, migrating=True)][-2:] == ["monitor", "shadow"]
