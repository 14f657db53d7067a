"""Random runs for the corpus: the graph shapes and outcome weights of the engine's property
tests (tests/unit/test_engine_properties.py), drawn from fixed seeds when recorded."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from history_scenarios import Run, spec_run

from headrace.engine import Complete
from headrace.events import ErrorInfo, Job


def random_spec(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """A random DAG of task, map and wait nodes with retries, `when` flags and data edges."""
    nodes: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for i in range(rng.randint(3, 9)):
        needs = sorted(rng.sample([f"n{j}" for j in range(i)], k=rng.randint(0, min(i, 3))))
        node: dict[str, Any] = {"needs": needs}
        kind = rng.choice(["task", "task", "task", "map", "wait"])
        if kind == "wait":
            node["wait"] = {"signal": rng.choice(["go", "stop"]), "timeout": "1h"}
        else:
            node["task"] = "m.f"
            node["retry"] = {"max_attempts": rng.choice([2, 3, 10]), "initial_interval": "1s"}
            node["timeout"] = "10s"
        if kind == "map":
            inputs[f"items{i}"] = list(range(rng.randint(0, 5)))
            node |= {"map": f"${{{{ inputs.items{i} }}}}", "max_concurrency": rng.randint(0, 3)}
            node["with"] = {"x": "${{ item }}"}
        if rng.random() < 0.25:
            inputs[f"flag{i}"] = rng.random() < 0.7
            node["when"] = f"${{{{ inputs.flag{i} }}}}"
        if needs and rng.random() < 0.5:
            node["with"] = {**node.get("with", {}), "dep": f"${{{{ nodes.{needs[0]}.output }}}}"}
        nodes[f"n{i}"] = node
    return nodes, inputs


def random_step(run: Run, rng: random.Random, done: list[Job], fatal_rate: float) -> None:
    """One random command, weighted like the property tests' Checker."""
    choices = ["signal"] * (1 if run.jobs or run.timers else 3)
    if run.jobs:
        choices += ["ok"] * 12 + ["retryable", "retryable", "started"]
        choices += ["fatal"] * (rng.random() < fatal_rate)
    if run.timers:
        choices.append("timer")
    if done:
        choices.append("duplicate")
    action = rng.choice(choices)
    if action == "signal":
        run.signal(rng.choice(["go", "stop"]), {"n": run.now_ms})
    elif action == "timer":
        key = rng.choice(sorted(run.timers))
        if key[0] != "retry" and rng.random() < 0.8:
            return  # timeouts are rarer than retries
        run.fire(*key)
    elif action == "duplicate":
        job = rng.choice(done)
        run.feed(Complete(job.node_id, job.attempt, run.now_ms, run.tick(), 1))
    else:
        node_id = rng.choice(sorted(run.jobs))
        if action == "started":
            run.started(node_id)
            return
        done.append(run.jobs[node_id])
        if action == "ok":
            run.ok(node_id, run.jobs[node_id].args)
        else:
            error = ErrorInfo("boom", "failed on purpose", action == "retryable")
            run.fail(node_id, error)


def random_run(seed: int, fatal_rate: float, cancel_at: int | None = None) -> Run:
    rng = random.Random(seed)
    nodes, inputs = random_spec(rng)
    run = spec_run(nodes, inputs)
    done: list[Job] = []
    for step in range(400):
        if run.recorder.state.status != "running":
            break
        if step == cancel_at:
            run.cancel()
        else:
            random_step(run, rng, done, fatal_rate)
    return run


def random_scenarios() -> dict[str, Callable[[], Run]]:
    """Twelve seeds, each with a rate of fatal failures and maybe a cancel after some steps."""
    scenarios: dict[str, Callable[[], Run]] = {}
    plans = [(0.0, None), (0.02, None), (0.2, None), (0.02, 6), (0.0, 15), (0.2, 3)] * 2
    for seed, (fatal_rate, cancel_at) in enumerate(plans, 1):

        def build(seed: int = seed, rate: float = fatal_rate, at: int | None = cancel_at) -> Run:
            return random_run(seed, rate, at)

        end = f", cancelled after {cancel_at} steps" if cancel_at is not None else ""
        build.__doc__ = f"A random DAG (seed {seed}) with random outcomes{end}."
        scenarios[f"random-dag-{seed:02}"] = build
    return scenarios
