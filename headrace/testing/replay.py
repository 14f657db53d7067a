"""Replay checks: a stored run's events folded again (`replay_diff`), and a recorded history's
commands decided again (`history_problem`, the corpus under tests/histories)."""

from __future__ import annotations

import difflib
import json
from typing import Any, get_args

import msgspec

from headrace.engine import Command, Decision, decide, evolve, new_run
from headrace.events import decode_event
from headrace.spec import WorkflowIR, build_plan, ir_hash
from headrace.store import Store


async def replay_diff(store: Store, run_id: str) -> dict[str, Any]:
    """The fields where the fold of the stored events differs from the stored state ({} if
    none), and how many times each node completed."""
    stored = await store.load_run(run_id)
    folded = new_run(run_id, stored.plan, created_at_ms=stored.created_at_ms)
    completions: dict[str, int] = {}
    seq = 0
    while True:
        batch = await store.read_events(run_id, seq, 1000)
        if not batch:
            break
        for e in batch:
            event = decode_event(e.data)
            evolve(folded, event)
            if e.type == "NodeCompleted":
                node_id = getattr(event, "node_id", "")
                completions[node_id] = completions.get(node_id, 0) + 1
            seq = e.seq
    a, b = folded.comparable(), stored.comparable()
    diff: dict[str, Any] = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    twice = {n: c for n, c in completions.items() if c > 1}
    if twice:
        diff["completed_more_than_once"] = twice
    return diff


# --- stored histories: a recorded run's commands fed again, each decision compared ---------

_COMMANDS: dict[str, type[Command]] = {c.__name__: c for c in get_args(Command)}


def command_json(command: Command) -> dict[str, Any]:
    """An engine command as plain JSON values, tagged with its type."""
    return {"type": type(command).__name__, **msgspec.to_builtins(command)}


def command_from_json(data: dict[str, Any]) -> Command:
    fields = dict(data)
    kind = _COMMANDS[fields.pop("type")]
    command: Command = msgspec.convert(fields, kind)
    return command


def decision_json(decision: Decision) -> dict[str, Any]:
    """A decision as plain JSON values; empty parts are left out so a no-op reads `{}`."""
    parts: dict[str, Any] = msgspec.to_builtins(decision)
    return {key: value for key, value in parts.items() if value}


class HistoryRecorder:
    """Feeds commands to the engine and keeps each one with the decision it produced.

    `history` is what `history_problem` replays: the IR the engine was given (with its hash,
    so an edited IR is caught), the run's id, and the steps."""

    def __init__(self, ir: WorkflowIR, *, source: str, run_id: str = "run-1") -> None:
        self.state = new_run(run_id, build_plan(ir))
        self.history: dict[str, Any] = {
            "source": source,
            "run_id": run_id,
            "ir_hash": ir_hash(ir),
            "ir": msgspec.to_builtins(ir),
            "steps": [],
        }

    def feed(self, command: Command) -> Decision:
        data = command_json(command)
        # The engine gets the command as it is stored, so a replay feeds it the same values.
        decision = decide(self.state, command_from_json(data))
        self.history["steps"].append({"command": data, "decision": decision_json(decision)})
        return decision


def history_problem(history: dict[str, Any], name: str) -> str | None:
    """None when the engine decides every step of `history` as recorded; otherwise what
    differs first, naming `name` and the step, with a diff of the two decisions."""
    try:
        ir = msgspec.convert(history["ir"], WorkflowIR)
    except msgspec.ValidationError as e:
        return f"{name}: the stored IR no longer decodes: {e}"
    if ir_hash(ir) != history["ir_hash"]:
        return f"{name}: the stored IR does not hash to its ir_hash (edited by hand?)"
    state = new_run(history["run_id"], build_plan(ir))
    for index, step in enumerate(history["steps"]):
        try:
            command = command_from_json(step["command"])
        except (KeyError, msgspec.ValidationError) as e:
            return f"{name}: steps[{index}]: the stored command no longer decodes: {e!r}"
        recorded = _canonical(step["decision"])
        now = _canonical(decision_json(decide(state, command)))
        if now != recorded:
            return _step_diff(name, index, step["command"], recorded, now)
    return None


def _canonical(value: Any) -> str:
    # Compared as text, not with ==: in Python true == 1 == 1.0, yet such a change is a change.
    return json.dumps(value, indent=1, sort_keys=True)


def _step_diff(name: str, index: int, command: Any, recorded: str, now: str) -> str:
    lines = recorded.splitlines(), now.splitlines()
    diff = difflib.unified_diff(*lines, "recorded", "engine now", lineterm="")
    head = f"{name}: steps[{index}]: the engine decides differently than recorded for "
    head += json.dumps(command)
    return "\n".join([head, *diff])
