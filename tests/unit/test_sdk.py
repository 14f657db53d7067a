"""The Python SDK builds the same IR as YAML: one validator, one hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from headrace.errors import SpecError
from headrace.sdk import Expr, Node, Workflow, ref
from headrace.spec.ir import ir_hash
from headrace.spec.parse import parse_workflow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "order-fulfilment.yaml"


def sdk_validate_order(order_id: str) -> dict[str, Any]:
    """A task function named by its module and qualname."""
    return {"order_id": order_id}


def _load_example() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sdk_example", EXAMPLE.with_name("order_fulfilment_sdk.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def order_fulfilment(*, fraud_threshold: int = 100) -> Workflow:
    """The SDK version of examples/order-fulfilment.yaml, as the example file writes it."""
    workflow: Workflow = _load_example().build(fraud_threshold=fraud_threshold)
    return workflow


def test_sdk_order_fulfilment_matches_yaml_hash() -> None:
    from_yaml = parse_workflow(EXAMPLE.read_text())
    from_sdk = order_fulfilment().build()
    assert from_sdk == from_yaml
    assert ir_hash(from_sdk) == ir_hash(from_yaml)


def test_sdk_to_dict_is_plain_spec_mapping() -> None:
    spec = order_fulfilment().to_dict()
    assert spec["nodes"]["fraud_check"]["http"]["url"] == "${{ vars.fraud_url }}/check"
    assert spec["nodes"]["fraud_check"]["when"] == "${{ nodes.total.output.amount > 100 }}"
    assert spec["nodes"]["price"]["map"] == "${{ inputs.items }}"
    assert spec["nodes"]["price"]["as"] == "item"
    assert spec["nodes"]["approve"] == {
        "needs": ["fraud_check"],
        "when": "${{ nodes.total.output.amount > 1000 }}",
        "wait": {"signal": "approval", "timeout": "1h"},
    }
    assert "timeout" not in spec["nodes"]["validate"]
    assert spec["outputs"]["shipment"] == "${{ nodes.ship.output }}"


def test_sdk_changed_value_changes_hash() -> None:
    base = ir_hash(order_fulfilment().build())
    assert ir_hash(order_fulfilment(fraud_threshold=101).build()) != base
    wf = order_fulfilment()
    wf.outputs(extra=ref("inputs").order_id)
    assert ir_hash(wf.build()) != base


def test_sdk_function_task_gets_dotted_name() -> None:
    wf = Workflow("fn-task")
    wf.task("validate", sdk_validate_order)
    node = wf.build().nodes[0]
    assert node.task == f"{sdk_validate_order.__module__}.sdk_validate_order"


def test_sdk_unknown_need_has_yaml_path() -> None:
    yaml_text = "name: bad\nnodes:\n  a: {task: m.f, needs: [nope]}\n"
    with pytest.raises(SpecError) as from_yaml:
        parse_workflow(yaml_text)
    wf = Workflow("bad")
    wf.task("a", "m.f", needs=["nope"])
    with pytest.raises(SpecError) as from_sdk:
        wf.build()
    assert from_sdk.value.path == from_yaml.value.path == "nodes.a.needs[0]"
    assert str(from_sdk.value) == str(from_yaml.value)


def test_sdk_bad_retry_has_field_path() -> None:
    wf = Workflow("bad")
    wf.task("a", "m.f", retry={"max_attempts": 0})
    with pytest.raises(SpecError) as err:
        wf.build()
    assert err.value.path == "nodes.a.retry.max_attempts"


def test_sdk_duplicate_node_id_rejected() -> None:
    wf = Workflow("dup")
    wf.task("a", "m.f")
    with pytest.raises(SpecError) as err:
        wf.task("a", "m.g")
    assert err.value.path == "nodes.a"


def test_sdk_none_options_are_omitted() -> None:
    wf = Workflow("opts")
    wf.task("a", "m.f", when=None, timeout=None, needs=None)
    wf.http("b", url="https://x.test", needs="a", json=None)
    assert wf.to_dict()["nodes"] == {
        "a": {"task": "m.f"},
        "b": {"needs": ["a"], "http": {"url": "https://x.test"}},
    }


def test_sdk_expr_rendering() -> None:
    amount = Node("total").output.amount
    assert str(amount) == "${{ nodes.total.output.amount }}"
    assert f"{ref('vars').url}/x" == "${{ vars.url }}/x"
    assert str(ref("item")["a b"][0]) == "${{ item['a b'][0] }}"
    assert str(ref("item")["sku"]) == "${{ item.sku }}"
    assert str(amount >= 1.5) == "${{ nodes.total.output.amount >= 1.5 }}"
    assert str(ref("x").s == "it's") == "${{ x.s == 'it\\'s' }}"
    assert str(ref("x").n != None) == "${{ x.n != null }}"  # noqa: E711
    assert str(ref("x").b == True) == "${{ x.b == true }}"  # noqa: E712
    assert str(5 < ref("x").n) == "${{ x.n > 5 }}"  # noqa: SIM300 (the reflected form)
    both = (ref("a").x > 1) & (ref("b").y <= 2)
    assert str(both) == "${{ a.x > 1 and b.y <= 2 }}"
    assert str(~(both | ref("c").z)) == "${{ not (a.x > 1 and b.y <= 2 or c.z) }}"
    assert str((ref("a").p | ref("b").q) & ref("c").r) == "${{ (a.p or b.q) and c.r }}"
    assert str((ref("a").p > 1) == True) == "${{ (a.p > 1) == true }}"  # noqa: E712
    assert str(ref("a").v == [1, "t", None]) == "${{ a.v == [1, 't', null] }}"
    assert repr(ref("a").b) == "Expr('a.b')"


def test_sdk_expr_guards_against_python_misuse() -> None:
    expr = ref("inputs").flag
    with pytest.raises(TypeError):
        bool(expr)
    with pytest.raises(TypeError):
        list(expr)
    with pytest.raises(AttributeError):
        _ = expr._private
    with pytest.raises(TypeError):
        hash(expr)
    assert isinstance(expr.items, Expr)


def test_sdk_expressions_evaluate_as_written() -> None:
    wf = Workflow("eval", inputs={"n": {"type": "integer"}})
    n = wf.inputs.n
    wf.task("a", "m.f", when=(n > 1) & ~(n == 3) | (n < -5))
    ir = wf.build()
    assert ir.nodes[0].when == "${{ inputs.n > 1 and not inputs.n == 3 or inputs.n < -5 }}"
