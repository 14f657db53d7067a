"""Property tests of the pure engine over random DAGs, failures, timers, signals and cancels."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from headrace.engine import (
    Cancel,
    Complete,
    Fail,
    Fire,
    MarkStarted,
    RunState,
    Signal,
    Start,
    decide,
    evolve,
    new_run,
    split_child,
)
from headrace.events import (
    NODE_DONE,
    NODE_TERMINAL,
    ErrorInfo,
    Event,
    Job,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    NodeWaiting,
    RunCancelled,
    RunCompleted,
    RunFailed,
    Timer,
    decode_event,
    encode,
)
from headrace.spec import Plan, parse_workflow, plan_of


@st.composite
def workflows(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    n = draw(st.integers(1, 30))
    nodes: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for i in range(n):
        nid = f"n{i}"
        earlier = [f"n{j}" for j in range(i)]
        needs = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if i else []
        node: dict[str, Any] = {"needs": needs}
        kind = draw(st.sampled_from(["task", "task", "task", "map", "wait"]))
        if kind == "wait":
            node["wait"] = {"signal": draw(st.sampled_from(["go", "stop"])), "timeout": "1h"}
        else:
            node["task"] = "m.f"
            node["retry"] = {"max_attempts": draw(st.integers(1, 4)), "initial_interval": "1s"}
            if draw(st.booleans()):
                node["retry"]["max_attempts"] = 10
            node["timeout"] = "10s"
        if kind == "map":
            key = f"items{i}"
            inputs[key] = list(range(draw(st.integers(0, 20))))
            node["map"] = f"${{{{ inputs.{key} }}}}"
            node["max_concurrency"] = draw(st.integers(0, 5))
            node["with"] = {"x": "${{ item }}"}
        if draw(st.booleans()) and draw(st.booleans()):
            flag = f"flag{i}"
            inputs[flag] = draw(st.booleans())
            node["when"] = f"${{{{ inputs.{flag} }}}}"
        if needs and draw(st.booleans()):
            node["with"] = {**node.get("with", {}), "dep": f"${{{{ nodes.{needs[0]}.output }}}}"}
        nodes[nid] = node
    schema = {k: {"type": "array" if k.startswith("items") else "boolean"} for k in inputs}
    spec = {"name": "prop", "version": 1, "inputs": schema, "nodes": nodes}
    return spec, inputs


class Checker:
    """Drives one run with random outcomes and checks the invariants after every step."""

    def __init__(
        self, plan: Plan, inputs: dict[str, Any], rng: random.Random, fatal_rate: float = 0.02
    ) -> None:
        self.fatal_rate = fatal_rate
        self.plan = plan
        self.rng = rng
        self.state: RunState = new_run("run-1", plan)
        self.events: list[Event] = []
        self.jobs: list[Job] = []
        self.done_jobs: list[Job] = []
        self.timers: list[Timer] = []
        self.now = 0
        self.apply(Start(at_ms=0, inputs=inputs))

    def apply(self, command: Any) -> None:
        self.now += 1
        d = decide(self.state, command)
        for event in d.events:
            self.check_event(event)
        self.events.extend(d.events)
        self.jobs.extend(d.jobs)
        self.timers.extend(d.timers)

    def check_event(self, event: Event) -> None:
        terminal = (RunCompleted, RunFailed, RunCancelled)
        assert not any(isinstance(e, terminal) for e in self.events), "event after the end"
        if isinstance(event, NodeScheduled | NodeStarted | NodeWaiting):
            top = split_child(event.node_id)
            nid = top[0] if top else event.node_id
            for need in self.plan.nodes[nid].ir.needs:
                assert self.state.nodes[need].status in NODE_DONE, f"{nid} before {need}"
        if isinstance(event, NodeScheduled):
            assert event.attempt <= self.plan_node(event.node_id).ir.retry.max_attempts

    def plan_node(self, node_id: str) -> Any:
        top = split_child(node_id)
        return self.plan.nodes[top[0] if top else node_id]

    def step(self) -> bool:
        choices = []
        if self.jobs:
            fatal = self.rng.random() < self.fatal_rate
            choices += ["ok"] * 12 + ["retryable", "retryable", "started"] + ["fatal"] * fatal
        if self.timers:
            choices.append("timer")
        if self.done_jobs:
            choices.append("duplicate")
        choices += ["signal"] * (1 if self.jobs or self.timers else 3)
        if self.rng.random() < 0.01:
            choices.append("cancel")
        action = self.rng.choice(choices)
        if action == "cancel":
            self.apply(Cancel(at_ms=self.now))
        elif action == "signal":
            name = self.rng.choice(["go", "stop"])
            self.apply(Signal(name=name, payload={"n": self.now}, at_ms=self.now))
        elif action == "timer":
            timer = self.timers.pop(self.rng.randrange(len(self.timers)))
            if timer.kind != "retry" and self.rng.random() < 0.8 and self.jobs:
                self.timers.append(timer)  # timeouts are rarer than retries
                return True
            self.apply(Fire(timer=timer, at_ms=max(self.now, timer.due_at_ms)))
        elif action == "duplicate":
            job = self.rng.choice(self.done_jobs)
            self.apply(Complete(job.node_id, job.attempt, self.now, self.now, output=1))
        else:
            self.run_job(action)
        return self.state.status == "running"

    def run_job(self, action: str) -> None:
        job = self.jobs.pop(self.rng.randrange(len(self.jobs)))
        if action == "started":
            self.apply(MarkStarted(job.node_id, job.attempt, self.now))
            self.jobs.append(job)
            return
        self.done_jobs.append(job)
        if action == "ok":
            self.apply(Complete(job.node_id, job.attempt, self.now, self.now, output=job.args))
        else:
            error = ErrorInfo("boom", "failed on purpose", retryable=action == "retryable")
            self.apply(Fail(job.node_id, job.attempt, self.now, self.now, error))


@given(
    workflows(),
    st.integers(0, 2**32),
    st.sampled_from([0.0, 0.02, 0.2]),
    st.one_of(st.none(), st.integers(0, 40)),  # a cancel after this many steps, in about half
)
def test_random_runs_keep_the_invariants(
    wf: tuple[dict[str, Any], dict[str, Any]], seed: int, fatal_rate: float, cancel: int | None
) -> None:
    spec, inputs = wf
    plan = plan_of(parse_workflow(spec))
    checker = Checker(plan, inputs, random.Random(seed), fatal_rate)
    for step in range(5000):
        if step == cancel and checker.state.status == "running":
            cancel_ends_every_open_node(checker)
            break
        if not checker.step():
            break
    state = checker.state
    assert state.status in ("completed", "failed", "cancelled"), "the run did not end"
    ends = [e for e in checker.events if isinstance(e, RunCompleted | RunFailed | RunCancelled)]
    assert len(ends) == 1
    completions = Counter(e.node_id for e in checker.events if isinstance(e, NodeCompleted))
    assert all(count == 1 for count in completions.values())
    assert all(node.status in NODE_TERMINAL for node in state.nodes.values())
    if state.status == "completed":
        assert all(state.nodes[n].status in NODE_DONE for n in plan.nodes)
    assert [e.seq for e in checker.events] == list(range(1, len(checker.events) + 1))
    replayed = new_run("run-1", plan)
    for event in checker.events:
        evolve(replayed, decode_event(encode(event)))
    assert replayed.comparable() == state.comparable()


def cancel_ends_every_open_node(checker: Checker) -> None:
    state = checker.state
    open_nodes = [nid for nid, node in state.nodes.items() if node.status not in NODE_TERMINAL]
    checker.apply(Cancel(at_ms=checker.now))
    assert state.status == "cancelled"
    assert all(state.nodes[nid].status == "cancelled" for nid in open_nodes), open_nodes


def test_map_outputs_keep_item_order_and_empty_map_gives_empty_list() -> None:
    spec = {
        "name": "m",
        "inputs": {"xs": {"type": "array"}, "ys": {"type": "array"}},
        "nodes": {
            "a": {
                "map": "${{ inputs.xs }}",
                "task": "m.f",
                "with": {"v": "${{ item }}"},
                "max_concurrency": 2,
            },
            "b": {"map": "${{ inputs.ys }}", "task": "m.f"},
        },
        "outputs": {"a": "${{ nodes.a.output }}", "b": "${{ nodes.b.output }}"},
    }
    state = new_run("r", plan_of(parse_workflow(spec)))
    d = decide(state, Start(at_ms=0, inputs={"xs": [3, 1, 2], "ys": []}))
    assert [j.node_id for j in d.jobs] == ["a[0]", "a[1]"]
    pending = list(d.jobs)
    while pending:
        job = pending.pop()  # complete in reverse order
        pending += decide(state, Complete(job.node_id, 1, 1, 2, output=job.args["v"] * 10)).jobs
    assert state.status == "completed"
    assert state.outputs == {"a": [30, 10, 20], "b": []}


def test_signal_sent_before_the_wait_is_kept() -> None:
    spec = {
        "name": "w",
        "nodes": {"first": {"task": "m.f"}, "w": {"needs": ["first"], "wait": {"signal": "go"}}},
        "outputs": {"got": "${{ nodes.w.output }}"},
    }
    state = new_run("r", plan_of(parse_workflow(spec)))
    job = decide(state, Start(at_ms=0, inputs={})).jobs[0]
    decide(state, Signal("go", {"ok": 1}, 1))
    decide(state, Complete(job.node_id, 1, 2, 3, output=None))
    assert state.status == "completed" and state.outputs == {"got": {"ok": 1}}


def test_retries_back_off_and_stop_at_max_attempts() -> None:
    spec = {
        "name": "r",
        "nodes": {
            "a": {
                "task": "m.f",
                "retry": {
                    "max_attempts": 3,
                    "backoff": "exponential",
                    "initial_interval": "100ms",
                    "max_interval": "150ms",
                },
            }
        },
    }
    state = new_run("r", plan_of(parse_workflow(spec)))
    job = decide(state, Start(at_ms=0, inputs={})).jobs[0]
    err = ErrorInfo("boom", "x", True)
    delays = []
    for attempt in (1, 2):
        d = decide(state, Fail("a", attempt, 10, 10, err))
        delays.append(d.timers[0].due_at_ms - 10)
        job = decide(state, Fire(d.timers[0], d.timers[0].due_at_ms)).jobs[0]
    assert delays == [100, 150] and job.attempt == 3
    d = decide(state, Fail("a", 3, 10, 10, err))
    assert state.status == "failed" and not d.timers
    assert state.error is not None and "node a failed" in state.error.message


def test_skipped_node_counts_as_done_and_reads_null() -> None:
    spec = {
        "name": "s",
        "nodes": {
            "a": {"task": "m.f", "when": "${{ false }}"},
            "b": {"task": "m.f", "with": {"seen": "${{ nodes.a.output }}"}},
        },
    }
    state = new_run("r", plan_of(parse_workflow(spec)))
    d = decide(state, Start(at_ms=0, inputs={}))
    assert state.nodes["a"].status == "skipped"
    assert [(j.node_id, j.args) for j in d.jobs] == [("b", {"seen": None})]


def test_a_wait_whose_signal_never_comes_times_out_without_retry() -> None:
    spec = {
        "name": "w",
        "defaults": {"timeout": "100ms", "retry": {"max_attempts": 5}},
        "nodes": {
            "w": {"wait": {"signal": "go", "timeout": "1h"}},
            "after": {"needs": ["w"], "task": "m.f"},
        },
    }
    state = new_run("r", plan_of(parse_workflow(spec)))
    d = decide(state, Start(at_ms=0, inputs={}))
    assert state.nodes["w"].status == "waiting" and not d.jobs
    # its own timeout only: defaults.timeout (100 ms) bounds attempts, not waits
    (timer,) = d.timers
    assert timer.due_at_ms == 3_600_000
    decide(state, Signal("other", None, 200))  # another signal does not end it
    assert state.nodes["w"].status == "waiting"
    d = decide(state, Fire(timer, 3_600_000))
    w = state.nodes["w"]
    assert w.status == "failed" and w.attempt == 1
    assert w.error is not None and w.error.type == "timeout" and not w.error.retryable
    assert not d.timers and not d.jobs  # not retried
    assert state.status == "failed" and state.nodes["after"].status == "cancelled"
