"""The engine against its recorded histories: each run under tests/histories is fed to the
engine again, command by command, and every decision must be exactly the one recorded.

A history (one JSON file) holds the IR the engine was given with its hash, the run's id, and
the steps: each command in the engine's own terms (Start, MarkStarted, Complete, Fail, Fire,
Signal, Cancel) with the decision it produced (events, jobs, timers, cancels; empty parts
left out). Time is in the commands, so a replay reads no clock and draws no random number.

A failure here means the engine would now take another step in a run recorded before: a run
in flight when the change is deployed would go differently. If that is the point of the
change, re-record on purpose

    .venv/bin/python tests/unit/record_histories.py NAME ...    # no NAME: every history

and say in the commit which histories changed and why. The runs are written in
tests/unit/history_scenarios.py and history_random.py; a new one needs its history too.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any, get_args

import pytest
from record_histories import SCENARIOS

from headrace.engine import Command
from headrace.events import Event
from headrace.testing.replay import history_problem

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
PATHS = sorted(HISTORIES.glob("*.json"))
DECIDE = importlib.import_module("headrace.engine.decide")  # the package's `decide` hides it
RERECORD = (
    "If the engine is meant to decide differently now, re-record with "
    "`.venv/bin/python tests/unit/record_histories.py NAME` and say why in the commit."
)


def load(name: str) -> dict[str, Any]:
    history: dict[str, Any] = json.loads((HISTORIES / f"{name}.json").read_text())
    return history


def label(name: str) -> str:
    return f"tests/histories/{name}.json"


@pytest.mark.parametrize("name", [p.stem for p in PATHS])
def test_the_engine_decides_as_recorded(name: str) -> None:
    problem = history_problem(load(name), label(name))
    assert problem is None, f"{problem}\n{RERECORD}"


def test_a_tampered_decision_fails_naming_the_file_and_the_step() -> None:
    name = "retry-backoff-capped"
    history = load(name)
    index = next(i for i, s in enumerate(history["steps"]) if s["decision"].get("timers"))
    history["steps"][index]["decision"]["timers"][0]["due_at_ms"] += 1
    problem = history_problem(history, label(name))
    assert problem is not None
    head, *diff = problem.splitlines()
    assert head.startswith(f"{label(name)}: steps[{index}]: the engine decides differently")
    assert '"type": "Fail"' in head
    changed = [line for line in diff if line[:1] in "+-" and "due_at_ms" in line]
    assert len(changed) == 2, problem


def test_an_engine_change_fails_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A longer backoff is an engine change an old run would notice at its first retry."""
    backoff = DECIDE.backoff_ms
    monkeypatch.setattr(DECIDE, "backoff_ms", lambda p, a: backoff(p, a) + 1)
    problem = history_problem(load("retry-backoff-capped"), "capped")
    assert problem is not None and problem.startswith("capped: steps[1]:"), problem
    assert "retry_at_ms" in problem
    assert history_problem(load("order-small-completes"), "no retries") is None


def test_an_edited_ir_fails_the_replay() -> None:
    history = load("order-small-completes")
    history["ir"]["nodes"][0]["timeout_ms"] += 1
    problem = history_problem(history, "edited")
    assert problem == "edited: the stored IR does not hash to its ir_hash (edited by hand?)"


def test_a_command_that_no_longer_decodes_is_named() -> None:
    history = load("order-small-completes")
    history["steps"][2]["command"]["attempt"] = "one"
    problem = history_problem(history, "renamed")
    assert problem is not None and problem.startswith("renamed: steps[2]: the stored command")


def test_the_replay_does_not_change_the_history() -> None:
    history = load("order-many-items-limited")
    before = copy.deepcopy(history)
    assert history_problem(history, "x") is None
    assert history == before


def test_every_scenario_has_its_history_and_no_more() -> None:
    assert sorted(SCENARIOS) == [p.stem for p in PATHS]


def test_the_corpus_stays_small() -> None:
    assert sum(p.stat().st_size for p in PATHS) < 1_000_000


def test_the_corpus_covers_what_the_engine_decides() -> None:
    """Together the histories feed every command and see every event, job kind, timer kind,
    a map child, a no-op, a stop message, both kinds of failure and a run left in flight."""
    seen = corpus_summary([load(p.stem) for p in PATHS])
    assert seen["commands"] == {c.__name__ for c in get_args(Command)}
    assert seen["events"] == {e.__name__ for e in get_args(Event)}
    assert seen["job kinds"] == {"task", "http", "agent"}
    assert seen["fired"] == {"retry", "wait", "deadline"}
    assert seen["failures retryable"] == {True, False}
    assert {"map child", "no-op", "stop message", "in flight"} <= seen["other"]


def corpus_summary(histories: list[dict[str, Any]]) -> dict[str, set[Any]]:
    seen: dict[str, set[Any]] = {
        k: set() for k in ("commands", "events", "job kinds", "fired", "failures retryable")
    }
    seen["other"] = set()
    for history in histories:
        for step in history["steps"]:
            command, decision = step["command"], step["decision"]
            seen["commands"].add(command["type"])
            seen["events"] |= {e["type"] for e in decision.get("events", [])}
            seen["job kinds"] |= {j["kind"] for j in decision.get("jobs", [])}
            if command["type"] == "Fire":
                seen["fired"].add(command["timer"]["kind"])
            if command["type"] == "Fail":
                seen["failures retryable"].add(command["error"]["retryable"])
            if any("[" in j["node_id"] for j in decision.get("jobs", [])):
                seen["other"].add("map child")
            if not decision:
                seen["other"].add("no-op")
            if decision.get("cancels"):
                seen["other"].add("stop message")
        events = [e["type"] for s in history["steps"] for e in s["decision"].get("events", [])]
        if not {"RunCompleted", "RunFailed", "RunCancelled"} & set(events):
            seen["other"].add("in flight")
    return seen
