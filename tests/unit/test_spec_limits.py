"""What a spec, run inputs and patterns may hold: limits that keep one request from freezing
the process or breaking a run for good (issue 19, items 7 and 10).

Time ceilings here are generous: they catch the quadratic and exponential cases (minutes
before the fix), not speed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from headrace.errors import InputError, SpecError
from headrace.spec import MAX_VERSION, ir_hash, load_text, parse_workflow, plan_of

CEILING_S = 5.0
EVIL = "^(a+)+$"
EVIL_TEXT = "a" * 28 + "!"  # Python's re: ~81 s, doubling with each extra a


def wf(**top: Any) -> dict[str, Any]:
    return {"name": "w", "version": 1, "nodes": {"a": {"task": "m.f"}}, **top}


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def refused(doc: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_workflow(doc)
    return info.value


# --- names: a full match, so no trailing newline ---------------------------------------------


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (wf(name="w\n"), "name"),
        ({"name": "w", "nodes": {"a\n": {"task": "m.f"}}}, "nodes.a\n"),
        (wf(inputs={"x\n": {"type": "string"}}), "inputs.x\n"),
        (wf(nodes={"a": {"wait": {"signal": "go\n"}}}), "nodes.a.wait.signal"),
        (
            wf(
                inputs={"xs": {}},
                nodes={"a": {"task": "m.f", "map": "${{ inputs.xs }}", "as": "it\n"}},
            ),
            "nodes.a.as",
        ),
    ],
    ids=["workflow name", "node id", "input name", "signal name", "map item name"],
)
def test_a_name_with_a_trailing_newline_is_refused(doc: dict[str, Any], path: str) -> None:
    assert refused(doc).path == path


# --- versions: what the store's column holds -------------------------------------------------


@pytest.mark.parametrize("version", [2**31, 2**63, -1])
def test_a_version_out_of_range_is_refused(version: int) -> None:
    error = refused(wf(version=version))
    assert error.path == "version" and f"from 1 to {MAX_VERSION}" in error.message


def test_the_largest_version_is_accepted() -> None:
    assert parse_workflow(wf(version=MAX_VERSION)).version == MAX_VERSION


# --- values in a spec: JSON that can be stored and read back ----------------------------------


@pytest.mark.parametrize(
    ("text", "path", "why"),
    [
        ("with: {x: .nan}", "nodes.a.with.x", "is nan"),
        ("with: {x: [1, -.inf]}", "nodes.a.with.x[1]", "is -inf"),
        ('with: {x: "\\ud800"}', "", "invalid YAML at line 3, column 31: found invalid Unicode"),
        ("with: {x: !!set {a}}", "nodes.a.with.x", "Python set"),
        ("with: {x: !!binary aGk=}", "nodes.a.with.x", "Python bytes"),
        ("with: {1: a}", "nodes.a.with", "the key 1"),
        ("with: {x: " + "[" * 61 + "]" * 61 + "}", "nodes.a.with.x" + "[0]" * 60, "deeper"),
    ],
)
def test_a_spec_value_that_json_cannot_hold_is_refused(text: str, path: str, why: str) -> None:
    error = refused(f"name: w\nnodes:\n  a: {{task: m.f, {text}}}\n")
    assert error.path == path and why in error.message


def test_a_lone_surrogate_in_a_spec_is_refused() -> None:
    error = refused(wf(nodes={"a": {"task": "m.f", "with": {"x": ["\ud800"]}}}))
    assert error.path == "nodes.a.with.x[0]" and "lone surrogate" in error.message
    error = refused('{"name": "w", "nodes": {"a": {"task": "m.f", "with": {"x": "\\udc00"}}}}')
    assert "invalid Unicode" in error.message  # JSON too: YAML's parser refuses it


def test_a_spec_at_the_depth_limit_is_accepted() -> None:
    value = "[" * 60 + "]" * 60  # nodes.a.with.x: 4 levels above it, 64 in all
    assert parse_workflow(f"name: w\nnodes:\n  a: {{task: m.f, with: {{x: {value}}}}}\n")


@pytest.mark.parametrize("text", ['{"x": ' + "[" * 5000 + "]" * 5000 + "}", "x: " + "[" * 5000])
def test_a_document_nested_past_the_parsers_is_refused(text: str) -> None:
    error = refused(text)
    assert error.path == "" and "exceeded maximum nesting depth" in error.message


def test_a_date_stays_text() -> None:
    # JSON has no dates: a YAML date is kept as written (and the IR is the one JSON gives)
    ir = parse_workflow("name: w\nnodes:\n  a: {task: m.f, with: {day: 2024-01-31}}\n")
    assert ir.nodes[0].args == {"day": "2024-01-31"}
    assert ir_hash(ir) == ir_hash(
        parse_workflow(wf(nodes={"a": {"task": "m.f", "with": {"day": "2024-01-31"}}}))
    )


@pytest.mark.parametrize(
    "text",
    [
        "name: w\nx: &a [1]\nnodes: {a: {task: m.f, with: {y: *a}}}\n",
        "name: w\nnodes: {a: {task: m.f, with: &a {y: [*a]}}}\n",
        "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n",
    ],
    ids=["alias", "recursive alias", "billion laughs"],
)
def test_yaml_aliases_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match=r"YAML aliases \(\*name\) are not allowed"):
        load_text(text)


def test_a_megabyte_of_json_loads_at_once() -> None:
    nodes = {f"n{i}": {"task": "m.f", "with": {"i": i, "s": "x" * 20}} for i in range(20_000)}
    text = json.dumps({"name": "big", "version": 1, "nodes": nodes})
    assert len(text) > 1_000_000
    began = time.process_time()
    assert len(load_text(text)["nodes"]) == 20_000  # the YAML loader: ~10 s of CPU
    assert time.process_time() - began < CEILING_S / 2


# --- templates: scanned in linear time --------------------------------------------------------


def test_sixty_thousand_unclosed_templates_are_refused_at_once() -> None:
    text = "${{" * 60_000  # 180 KB: the lazy regex took ~210 s
    began = time.monotonic()
    error = refused(wf(nodes={"a": {"task": "m.f", "with": {"x": text}}}))
    assert time.monotonic() - began < CEILING_S
    assert error.path == "nodes.a.with.x" and "unclosed `${{`" in error.message
    assert len(error.message) < 300  # an excerpt, not the 180 KB


@pytest.mark.parametrize(
    "expr", ["-" * 100_000 + "1", "not " * 50_000 + "x", "(" * 300 + "1" + ")" * 300]
)
def test_an_expression_nested_past_the_parser_is_a_spec_error(expr: str) -> None:
    error = refused(wf(nodes={"a": {"task": "m.f", "with": {"x": "${{ " + expr + " }}"}}}))
    assert error.path == "nodes.a.with.x" and len(error.message) < 400


# --- patterns: RE2, in linear time ------------------------------------------------------------


def plan_with(schema: dict[str, Any]) -> Any:
    return plan_of(parse_workflow(wf(inputs={"code": schema})))


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string", "pattern": EVIL}, EVIL_TEXT),
        ({"type": "array", "items": {"pattern": EVIL}}, [EVIL_TEXT]),
        ({"type": "object", "propertyNames": {"pattern": EVIL}}, {EVIL_TEXT: 1}),
        (
            {
                "type": "object",
                "patternProperties": {EVIL: {"type": "string"}},
                "additionalProperties": False,
            },
            {EVIL_TEXT: "x"},
        ),
    ],
    ids=["pattern", "items", "propertyNames", "patternProperties"],
)
def test_a_catastrophic_pattern_is_matched_in_linear_time(
    schema: dict[str, Any], value: Any
) -> None:
    plan = plan_with(schema)
    began = time.monotonic()
    with pytest.raises(InputError) as info:
        plan.validate_inputs({"code": value})
    assert time.monotonic() - began < CEILING_S
    assert info.value.path.startswith("inputs.code")


def test_patterns_still_match() -> None:
    plan = plan_with(
        {
            "type": "object",
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+-[0-9]+$"}},
            "patternProperties": {"^x-": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    plan.validate_inputs({"code": {"sku": "AB-12", "x-count": 3}})
    for bad, path in (({"sku": "ab-12"}, "inputs.code.sku"), ({"x-n": "3"}, "inputs.code.x-n")):
        with pytest.raises(InputError) as info:
            plan.validate_inputs({"code": bad})
        assert info.value.path == path
    with pytest.raises(InputError, match="'other' unexpected"):
        plan.validate_inputs({"code": {"other": 1}})


@pytest.mark.parametrize(
    ("schema", "path", "message"),
    [
        ({"pattern": "(a)\\1"}, "inputs.code.pattern", "not a pattern RE2 can run"),
        ({"items": {"pattern": "a(?=b)"}}, "inputs.code.items.pattern", "lookaround"),
        (
            {"properties": {"p": {"patternProperties": {"(?<!a)b": {}}}}},
            "inputs.code.properties.p.patternProperties",
            "RE2",
        ),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "inputs.code.$schema", "2020-12"),
        (
            {"patternProperties": {"^a": {}}, "unevaluatedProperties": False},
            "inputs.code.unevaluatedProperties",
            "together with patternProperties",
        ),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_at_registration(
    schema: dict[str, Any], path: str, message: str
) -> None:
    error = refused(wf(inputs={"code": schema}))
    assert error.path == path and message in error.message


# --- run inputs: JSON that can be stored and read back ----------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "why"),
    [
        (nested(300), "inputs.x" + "[0]" * 63, "nested deeper than the limit of 64 levels"),
        ({"a": "\ud800"}, "inputs.x.a", "lone surrogate"),
        ({"\udfff": 1}, "inputs.x", "lone surrogate"),
        ([float("nan")], "inputs.x[0]", "is nan"),
    ],
    ids=["300 deep", "surrogate", "surrogate key", "NaN"],
)
def test_inputs_that_cannot_be_stored_are_refused(value: Any, path: str, why: str) -> None:
    plan = plan_of(parse_workflow(wf(inputs={"x": {}})))
    with pytest.raises(InputError) as info:
        plan.validate_inputs({"x": value})
    assert info.value.path == path and why in info.value.message


def test_inputs_at_the_depth_limit_are_accepted() -> None:
    plan_of(parse_workflow(wf(inputs={"x": {}}))).validate_inputs({"x": nested(63)})
