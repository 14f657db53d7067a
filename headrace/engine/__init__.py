"""The pure engine: decide(state, command) -> decision, evolve(state, event) -> state."""

from headrace.engine.decide import (
    Cancel,
    Command,
    Complete,
    Decision,
    Fail,
    Fire,
    MarkStarted,
    Signal,
    Start,
    child_of,
    decide,
    decided_alone,
    jobs_in_flight,
    maps_to_load,
)
from headrace.engine.evolve import evolve
from headrace.engine.policy import backoff_ms
from headrace.engine.state import NodeState, RunState, child_id, new_run, split_child

__all__ = [
    "Cancel",
    "Command",
    "Complete",
    "Decision",
    "Fail",
    "Fire",
    "MarkStarted",
    "NodeState",
    "RunState",
    "Signal",
    "Start",
    "backoff_ms",
    "child_id",
    "child_of",
    "decide",
    "decided_alone",
    "evolve",
    "jobs_in_flight",
    "maps_to_load",
    "new_run",
    "split_child",
]
