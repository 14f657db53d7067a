"""The runs recorded under tests/histories, each driven by hand at a fake clock.

A scenario builds its workflow (read from examples/ or written here) and feeds the engine
its commands; `record_histories.py` writes what the engine decided. The history keeps the
IR the engine was given, so a later change to an example changes no recorded history until
it is re-recorded. `subflow` nodes do not exist yet (the spec rejects them): they get
histories when the engine decides on them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headrace.engine import (
    Cancel,
    Command,
    Complete,
    Decision,
    Fail,
    Fire,
    MarkStarted,
    Signal,
    Start,
)
from headrace.events import ErrorInfo, Job, Timer
from headrace.spec import WorkflowIR, load_text, parse_workflow
from headrace.testing.replay import HistoryRecorder

REPO = Path(__file__).resolve().parents[2]
ORDER_YAML = "examples/order-fulfilment.yaml"
INLINE = "tests/unit/history_scenarios.py"  # workflows written below
FRAUD_VARS = {"fraud_url": "https://fraud.example"}
PRICES_CENTS = {"apple": 120, "pear": 95, "laptop": 129_900, "cable": 1_250}  # as examples/shop

RETRYABLE = ErrorInfo("task_error", "ConnectionError: reset by peer", True)
FATAL = ErrorInfo("task_error", "ValueError: unknown sku 'kiwi'", False)


class Run:
    """One run driven by hand: commands at a fake clock, the open jobs and timers kept."""

    def __init__(self, ir: WorkflowIR, source: str) -> None:
        self.recorder = HistoryRecorder(ir, source=source)
        self.now_ms = 0
        self.jobs: dict[str, Job] = {}  # open attempts, by node id
        self.timers: dict[tuple[str, str], Timer] = {}  # latest, by (kind, node id)

    def feed(self, command: Command) -> Decision:
        decision = self.recorder.feed(command)
        for job in decision.jobs:
            self.jobs[job.node_id] = job
        for timer in decision.timers:
            self.timers[timer.kind, timer.node_id] = timer
        for cancel in decision.cancels:
            self.jobs.pop(cancel.node_id, None)
        return decision

    def tick(self, ms: int = 10) -> int:
        self.now_ms += ms
        return self.now_ms

    def start(self, inputs: dict[str, Any], vars: dict[str, Any] | None = None) -> None:
        self.feed(Start(at_ms=self.now_ms, inputs=inputs, vars=vars or {}))

    def ok(self, node_id: str, output: Any = None, cost_cents: int = 0) -> Job:
        job = self.jobs.pop(node_id)
        began = job.scheduled_at_ms + 1
        self.feed(Complete(node_id, job.attempt, began, self.tick(), output, cost_cents))
        return job

    def fail(self, node_id: str, error: ErrorInfo = RETRYABLE) -> Job:
        job = self.jobs.pop(node_id)
        self.feed(Fail(node_id, job.attempt, job.scheduled_at_ms + 1, self.tick(), error))
        return job

    def started(self, node_id: str) -> None:
        self.feed(MarkStarted(node_id, self.jobs[node_id].attempt, self.tick()))

    def fire(self, kind: str, node_id: str) -> Timer:
        timer = self.timers.pop((kind, node_id))
        self.now_ms = max(self.now_ms, timer.due_at_ms)
        self.feed(Fire(timer, self.now_ms))
        return timer

    def signal(self, name: str, payload: Any = None) -> None:
        self.feed(Signal(name, payload, self.tick()))

    def cancel(self, reason: str = "cancelled by request") -> None:
        self.feed(Cancel(self.tick(), reason))

    def children(self, parent: str) -> list[str]:
        return [nid for nid in self.jobs if nid.startswith(parent + "[")]


SCENARIOS: dict[str, Callable[[], Run]] = {}


def scenario(fn: Callable[[], Run]) -> Callable[[], Run]:
    SCENARIOS[fn.__name__.replace("_", "-")] = fn
    return fn


# --- examples/order-fulfilment.yaml ----------------------------------------------------------


def order_run(items: list[dict[str, Any]] | None = None, source: str = ORDER_YAML) -> Run:
    ir = parse_workflow(load_text((REPO / ORDER_YAML).read_text()))
    run = Run(ir, source)
    if items is not None:
        run.start({"order_id": "A-1001", "items": items}, FRAUD_VARS)
    return run


def order_items(name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads((REPO / "examples" / name).read_text())["items"]
    return items


def price(run: Run, child: str) -> None:
    args = run.jobs[child].args
    amount = PRICES_CENTS.get(args["sku"], 100) * args["qty"] / 100
    run.ok(child, {"sku": args["sku"], "qty": args["qty"], "amount": amount})


def price_all(run: Run, reverse: bool = False) -> None:
    while children := sorted(run.children("price"), reverse=reverse):
        price(run, children[0])


def total(run: Run) -> None:
    amounts = run.jobs["total"].args["amounts"]
    run.ok("total", {"amount": round(sum(a["amount"] for a in amounts), 2)})


def fraud_ok(run: Run) -> None:
    run.ok("fraud_check", {"status": 200, "headers": {}, "body": {"risk": "low"}})


def ship(run: Run) -> None:
    run.ok("ship", {"tracking": "TRK-1"}, cost_cents=3)


@scenario
def order_small_completes() -> Run:
    """examples/small-order.json: a small total skips the fraud check and the approval; the
    map prices three items at once, the agent ships with a cost."""
    run = order_run(order_items("small-order.json"))
    run.ok("validate", {"order_id": "A-1001", "valid": True})
    price_all(run, reverse=True)
    total(run)
    ship(run)
    return run


@scenario
def order_large_approved() -> Run:
    """examples/large-order.json: the fraud check (http, high lane) runs, the approval waits
    for its signal, then the agent ships."""
    run = order_run(order_items("large-order.json"))
    run.ok("validate", {"valid": True})
    price_all(run)
    total(run)
    fraud_ok(run)
    run.signal("approval", {"by": "ops"})
    ship(run)
    return run


@scenario
def order_approval_arrives_early() -> Run:
    """The approval signal comes while items are priced: it is kept, and the wait completes
    the moment it is reached."""
    run = order_run(order_items("large-order.json"))
    run.ok("validate", {"valid": True})
    run.signal("approval", {"by": "early"})
    price_all(run)
    total(run)
    fraud_ok(run)
    ship(run)
    return run


@scenario
def order_approval_times_out() -> Run:
    """No approval within the wait's hour: the wait fails without retry and the run fails,
    cancelling ship; a late signal changes nothing."""
    run = order_run(order_items("large-order.json"))
    run.ok("validate", {"valid": True})
    price_all(run)
    total(run)
    fraud_ok(run)
    run.fire("wait", "approve")
    run.signal("approval", {"by": "late"})
    return run


@scenario
def order_fraud_check_retried() -> Run:
    """The fraud service answers 503 twice (started notices arm deadlines; backoff 100 ms,
    then 200 ms), then 200; a stale deadline after that is a no-op. The run is left waiting
    for its approval, as a run in flight would be."""
    run = order_run(order_items("large-order.json"))
    run.ok("validate", {"valid": True})
    price_all(run)
    total(run)
    error = ErrorInfo("http_status", "503 Service Unavailable", True)
    for _ in range(2):
        run.started("fraud_check")
        run.fail("fraud_check", error)
        run.fire("retry", "fraud_check")
    run.started("fraud_check")
    fraud_ok(run)
    run.fire("deadline", "fraud_check")
    return run


@scenario
def order_fraud_check_deadline() -> Run:
    """A started fraud check never answers: its deadline fails the attempt (retryable), the
    late answer of attempt 1 is ignored, attempt 2 answers."""
    run = order_run(order_items("small-order.json"))
    run.ok("validate", {"valid": True})
    price_all(run)
    run.ok("total", {"amount": 250})
    run.started("fraud_check")
    late = run.jobs["fraud_check"]
    run.fire("deadline", "fraud_check")
    run.feed(Complete("fraud_check", late.attempt, late.scheduled_at_ms, run.tick(), {}))
    run.fire("retry", "fraud_check")
    fraud_ok(run)
    ship(run)
    return run


@scenario
def order_unknown_sku_fails() -> Run:
    """One item's pricing fails for good: the map and the run fail, the other running items
    are told to stop."""
    items = [*order_items("small-order.json"), {"sku": "kiwi", "qty": 1}]
    run = order_run(items)
    run.ok("validate", {"valid": True})
    price(run, "price[0]")
    run.fail("price[3]", FATAL)
    return run


@scenario
def order_cancelled_while_pricing() -> Run:
    """A cancel while items are priced stops the running ones; a result after it is a no-op."""
    run = order_run(order_items("small-order.json"))
    run.ok("validate", {"valid": True})
    price(run, "price[1]")
    late = run.jobs["price[0]"]
    run.cancel("customer changed their mind")
    run.feed(Complete("price[0]", 1, late.scheduled_at_ms, run.tick(), {"amount": 1}))
    return run


@scenario
def order_many_items_limited() -> Run:
    """Ten items under max_concurrency 8: two wait until a slot frees; one item is retried."""
    items = [{"sku": sku, "qty": n} for n, sku in enumerate(["apple", "pear"] * 5, 1)]
    run = order_run(items)
    run.ok("validate", {"valid": True})
    run.fail("price[4]")
    price(run, "price[7]")
    price(run, "price[2]")
    run.fire("retry", "price[4]")
    price_all(run, reverse=True)
    total(run)
    ship(run)
    return run


@scenario
def order_empty() -> Run:
    """No items: the map completes at once with [], total sums nothing."""
    run = order_run([])
    run.ok("validate", {"valid": True})
    total(run)
    ship(run)
    return run


@scenario
def order_ship_exhausts_retries() -> Run:
    """The ship agent exits non-zero on all three attempts: the run fails."""
    run = order_run(order_items("small-order.json"))
    run.ok("validate", {"valid": True})
    price_all(run)
    total(run)
    error = ErrorInfo("agent_exit", "exit status 2: disk full", True)
    run.fail("ship", error)
    run.fire("retry", "ship")
    run.fail("ship", error)
    run.fire("retry", "ship")
    run.fail("ship", error)
    return run


@scenario
def order_duplicate_results() -> Run:
    """Redelivered results: a second Complete, a result for a wrong attempt, a started notice
    after the end of the attempt, a result for a node never scheduled: all no-ops."""
    run = order_run(order_items("small-order.json"))
    job = run.ok("validate", {"valid": True})
    run.feed(Complete("validate", 1, job.scheduled_at_ms, run.tick(), {"valid": False}))
    run.feed(Complete("price[0]", 2, run.now_ms, run.tick(), {}))
    run.feed(MarkStarted("validate", 1, run.tick()))
    run.feed(Complete("ship", 1, run.now_ms, run.tick(), {}))
    price_all(run)
    total(run)
    ship(run)
    return run


@scenario
def order_total_not_a_number() -> Run:
    """total returns text for its amount: the fraud check's `when` cannot compare it, which
    fails the node (an expression error, no retry) and the run."""
    run = order_run(order_items("small-order.json"))
    run.ok("validate", {"valid": True})
    price_all(run)
    run.ok("total", {"amount": "lots"})
    return run


@scenario
def order_from_sdk_low_threshold() -> Run:
    """examples/order_fulfilment_sdk.py with fraud_threshold=10: the small order now passes
    the fraud check (another IR), the approval is still skipped."""
    sys.path.insert(0, str(REPO))  # examples/ is not a package on the test path
    from examples.order_fulfilment_sdk import build

    ir = parse_workflow(build(fraud_threshold=10).to_dict())
    run = Run(ir, "examples/order_fulfilment_sdk.py build(fraud_threshold=10)")
    run.start({"order_id": "B-7", "items": order_items("small-order.json")}, FRAUD_VARS)
    run.ok("validate", {"valid": True})
    price_all(run)
    total(run)
    fraud_ok(run)
    ship(run)
    return run


# --- small shapes, as the engine's property tests write them -------------------------------


def spec_run(nodes: dict[str, Any], inputs: dict[str, Any], **extra: Any) -> Run:
    """A run of an inline workflow; inputs are typed from their values."""
    types = {bool: "boolean", list: "array", dict: "object", str: "string", int: "integer"}
    schema = {k: {"type": types[type(v)]} for k, v in inputs.items()}
    spec = {"name": "shape", "version": 1, "inputs": schema, "nodes": nodes, **extra}
    run = Run(parse_workflow(spec), INLINE)
    run.start(inputs)
    return run


@scenario
def map_keeps_item_order() -> Run:
    """Children completed in reverse still give outputs in item order; an empty map gives []."""
    nodes = {
        "a": {"map": "${{ inputs.xs }}", "task": "m.f", "with": {"v": "${{ item }}"}},
        "b": {"map": "${{ inputs.ys }}", "task": "m.f"},
    }
    nodes["a"]["max_concurrency"] = 2
    outputs = {"a": "${{ nodes.a.output }}", "b": "${{ nodes.b.output }}"}
    run = spec_run(nodes, {"xs": [3, 1, 2], "ys": []}, outputs=outputs)
    while children := sorted(run.children("a"), reverse=True):
        run.ok(children[0], run.jobs[children[0]].args["v"] * 10)
    return run


@scenario
def map_over_upstream_output() -> Run:
    """A map over another node's output, all children at once, each reading its item's field."""
    nodes = {
        "list": {"task": "m.list"},
        "each": {
            "map": "${{ nodes.list.output }}",
            "as": "row",
            "max_concurrency": 0,
            "task": "m.each",
            "with": {"id": "${{ row.id }}", "first": "${{ nodes.list.output[0].id }}"},
        },
        "sum": {"task": "m.sum", "with": {"all": "${{ nodes.each.output }}"}},
    }
    run = spec_run(nodes, {})
    run.ok("list", [{"id": "x"}, {"id": "y"}, {"id": "z"}, {"id": "w"}])
    for child in ["each[2]", "each[0]", "each[3]", "each[1]"]:
        run.ok(child, child)
    run.ok("sum", 4)
    return run


@scenario
def map_child_fails_for_good() -> Run:
    """A child fails without retry: the parent fails with the item's index, running siblings
    are cancelled, a retrying one is cancelled without a stop message."""
    nodes = {"m": {"map": "${{ inputs.xs }}", "task": "m.f", "retry": {"max_attempts": 3}}}
    run = spec_run(nodes, {"xs": ["a", "b", "c", "d"]})
    run.ok("m[0]", 0)
    run.fail("m[3]")
    run.fail("m[1]", ErrorInfo("task_error", "NodeError: bad row", False))
    return run


@scenario
def map_items_not_a_list() -> Run:
    """A map whose expression gives an object fails the node (expression error) and the run."""
    nodes = {"m": {"map": "${{ inputs.xs }}", "task": "m.f"}}
    return spec_run(nodes, {"xs": {"not": "a list"}})


@scenario
def signal_before_wait_is_kept() -> Run:
    """A signal sent before its wait is reached completes the wait when it is."""
    nodes = {"first": {"task": "m.f"}, "w": {"needs": ["first"], "wait": {"signal": "go"}}}
    run = spec_run(nodes, {}, outputs={"got": "${{ nodes.w.output }}"})
    run.signal("go", {"ok": 1})
    run.ok("first")
    return run


@scenario
def signal_latest_payload_wins() -> Run:
    """Two signals of one name before the waits: both waits get the latest payload; another
    signal name completes nothing."""
    nodes = {
        "first": {"task": "m.f"},
        "w1": {"needs": ["first"], "wait": {"signal": "go"}},
        "w2": {"needs": ["first"], "wait": {"signal": "go", "timeout": "10m"}},
        "w3": {"wait": {"signal": "later"}},
        "after": {"task": "m.g", "with": {"a": "${{ nodes.w1.output }}"}, "needs": ["w2"]},
    }
    run = spec_run(nodes, {})
    run.signal("go", 1)
    run.signal("go", 2)
    run.signal("other", 3)
    run.ok("first")
    run.signal("later", "now")
    run.ok("after")
    return run


@scenario
def wait_timeout_not_retried() -> Run:
    """A wait whose signal never comes fails at its own timeout without retry; another
    signal does not end it; its dependent is cancelled."""
    nodes = {
        "w": {"wait": {"signal": "go", "timeout": "1h"}},
        "after": {"needs": ["w"], "task": "m.f"},
    }
    defaults = {"timeout": "100ms", "retry": {"max_attempts": 5}}
    run = spec_run(nodes, {}, defaults=defaults)
    run.signal("other")
    run.fire("wait", "w")
    return run


@scenario
def retry_backoff_capped() -> Run:
    """Exponential backoff from 100 ms capped at 150 ms; the third failure is the last."""
    retry = {"max_attempts": 3, "initial_interval": "100ms", "max_interval": "150ms"}
    run = spec_run({"a": {"task": "m.f", "retry": {**retry, "backoff": "exponential"}}}, {})
    for _ in range(2):
        run.fail("a")
        run.fire("retry", "a")
    run.fail("a")
    return run


@scenario
def retry_backoff_linear_and_constant() -> Run:
    """Linear and constant backoff side by side, a non-retryable error ends retries early,
    and a stale retry timer is a no-op."""
    nodes = {
        "lin": {"task": "m.f", "retry": {"max_attempts": 4, "backoff": "linear"}},
        "con": {"task": "m.f", "retry": {"max_attempts": 9, "backoff": "constant"}},
        "last": {"task": "m.f", "needs": ["lin", "con"]},
    }
    run = spec_run(nodes, {})
    for _ in range(3):
        run.fail("lin")
        run.fail("con")
        stale = run.fire("retry", "lin")
        run.fire("retry", "con")
    run.feed(Fire(stale, run.tick()))
    run.ok("lin")
    run.fail("con", ErrorInfo("output_not_json", "NaN is not JSON", False))
    return run


@scenario
def skipped_node_reads_null() -> Run:
    """A `when` that is false skips the node; its dependent runs and reads its output as
    null; outputs are computed at the end."""
    nodes = {
        "a": {"task": "m.f", "when": "${{ inputs.flag }}"},
        "b": {"task": "m.f", "with": {"seen": "${{ nodes.a.output }}"}},
    }
    run = spec_run(nodes, {"flag": False}, outputs={"b": "${{ nodes.b.output }}"})
    run.ok("b", "done")
    return run


@scenario
def expression_errors_fail_the_run() -> Run:
    """Arguments that cannot be evaluated fail the node when it would be scheduled."""
    nodes = {
        "a": {"task": "m.f"},
        "b": {"task": "m.f", "with": {"n": "${{ nodes.a.output + 1 }}"}},
    }
    run = spec_run(nodes, {})
    run.ok("a", "text")
    return run


@scenario
def outputs_expression_error() -> Run:
    """Every node done but the outputs cannot be evaluated: the run fails with no node."""
    run = spec_run({"a": {"task": "m.f"}}, {}, outputs={"x": "${{ nodes.a.output.n * 2 }}"})
    run.ok("a", {"n": "two"})
    return run


@scenario
def cancel_with_every_open_status() -> Run:
    """A cancel while nodes are running, scheduled, waiting, retrying and pending: stop
    messages only for attempts a worker may hold."""
    nodes = {
        "run": {"task": "m.f"},
        "sched": {"task": "m.f"},
        "wait": {"wait": {"signal": "go"}},
        "retry": {"task": "m.f"},
        "later": {"task": "m.f", "needs": ["run"]},
    }
    run = spec_run(nodes, {})
    run.started("run")
    run.fail("retry")
    run.cancel()
    return run


@scenario
def commands_after_the_end() -> Run:
    """Once a run has ended, every command is a no-op: start, results, timers, signals, cancel."""
    run = spec_run({"a": {"task": "m.f"}}, {})
    job = run.jobs["a"]
    run.started("a")
    deadline = run.timers["deadline", "a"]
    run.ok("a", 1)
    run.start({})
    run.feed(Complete("a", 1, job.scheduled_at_ms, run.tick(), 2))
    run.feed(Fail("a", 1, job.scheduled_at_ms, run.tick(), RETRYABLE))
    run.feed(Fire(deadline, deadline.due_at_ms))
    run.signal("go")
    run.cancel()
    return run


@scenario
def http_and_agent_jobs() -> Run:
    """What http and agent jobs carry: the rendered request with a secret left as a marker,
    query, auth, expected status; the agent's command, limits, env vars, workdir; lanes."""
    nodes = {
        "call": {
            "http": {
                "method": "PUT",
                "url": "${{ vars.base }}/items/${{ inputs.id }}",
                "headers": {"X-Token": "${{ secrets.token }}"},
                "query": {"dry": "${{ inputs.flag }}"},
                "body": "raw ${{ inputs.id }}",
                "auth": {"username": "u", "password": "${{ secrets.pw }}"},
                "expect_status": [200, 204],
            },
            "priority": "high",
            "timeout": "2s",
        },
        "work": {
            "agent": {
                "env": "local",
                "command": ["python", "-c", "print(1)", "${{ inputs.id }}"],
                "limits": {"memory": "64Mi", "cpu_seconds": 2},
                "env_vars": {"MODE": "${{ nodes.call.output.status }}"},
                "workdir": "/tmp",
            },
            "with": {"got": "${{ nodes.call.output.body }}"},
            "priority": "low",
        },
    }
    inputs = {"id": {"type": "string"}, "flag": {"type": "boolean", "default": False}}
    run = Run(
        parse_workflow({"name": "kinds", "version": 3, "inputs": inputs, "nodes": nodes}), INLINE
    )
    run.start({"id": "x-1", "flag": True}, {"base": "https://api.example"})
    run.started("call")
    run.ok("call", {"status": 204, "headers": {}, "body": None})
    run.ok("work", {"lines": 1}, cost_cents=7)
    return run
