"""The `${{ }}` expression language and templates (headrace.spec.expressions / templates)."""

from __future__ import annotations

from typing import Any

import pytest

from headrace.spec import ExprError, resolve_secrets, secret_names
from headrace.spec.expressions import (
    FUNCTIONS,
    Expr,
    Ref,
    compile_expr,
    is_templated,
    split_template,
)
from headrace.spec.templates import SECRET_KEY, SECRET_TEXT_KEY, compile_template

CTX: dict[str, Any] = {
    "inputs": {
        "order": {"id": 7, "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 3}]},
        "name": "Ada",
        "nothing": None,
        "flag": True,
        "tags": ["x", "y"],
        "meta": {"a": 1, "b": [1, 2]},
        "keys": 5,
    },
    "nodes": {"total": {"output": {"amount": 120.5}}},
    "big": 10**400,
}


def ev(source: str, ctx: dict[str, Any] | None = None) -> Any:
    return compile_expr(source).evaluate(CTX if ctx is None else ctx)


# --- reading names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("inputs.name", "Ada"),
        ("inputs.order.id", 7),
        ("inputs.order.items[0].sku", "A"),
        ("inputs.order.items[1]['qty']", 3),
        ("inputs['order']['id']", 7),
        ("inputs.order.items[-1].sku", "B"),
        ("inputs.order.items[-2].sku", "A"),
        ("inputs.order.items[2]", None),
        ("inputs.order.items[-3]", None),
        ("inputs.order.items[99].sku", None),
        ("'abc'[1]", "b"),
        ("'abc'[-1]", "c"),
        ("'abc'[3]", None),
        ("inputs.missing", None),
        ("inputs.missing.deeper.still", None),
        ("inputs.nothing.field", None),
        ("inputs.nothing[0]", None),
        ("inputs.nothing['k']", None),
        ("inputs.keys", 5),  # a dot reads a key, never a dict method
        ("inputs.meta.values", None),
        ("inputs.meta.b[1]", 2),
        ("nodes.total.output.amount", 120.5),
        ("{'1': 'a'}[1]", None),
    ],
)
def test_access(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("inputs.order.items['sku']", "indexed by a whole number"),
        ("inputs.order.items.sku", "indexed by a whole number"),
        ("inputs.order.items[true]", "indexed by a whole number"),
        ("inputs.order.items[0.0]", "indexed by a whole number"),
        ("inputs.name.length", "indexed by a whole number"),
        ("inputs.order.id.x", "cannot read 'x' of number"),
        ("inputs.flag[0]", "cannot read 0 of boolean"),
        ("nowhere", "unknown name 'nowhere'"),
        ("nowhere.x", "unknown name 'nowhere'"),
    ],
)
def test_access_errors(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        ev(source)


# --- literals and operators -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("null", None),
        ("true", True),
        ("false", False),
        ("42", 42),
        ("-1.5", -1.5),
        ("+3", 3),
        ("'text'", "text"),
        ('"dq"', "dq"),
        ("[]", []),
        ("[1, 'a', null, true, [2]]", [1, "a", None, True, [2]]),
        ("{}", {}),
        ("{'a': 1, 'b': [true, null]}", {"a": 1, "b": [True, None]}),
        ("{'n': inputs.order.id, 'tags': inputs.tags}", {"n": 7, "tags": ["x", "y"]}),
        ("[inputs.name, inputs.missing]", ["Ada", None]),
    ],
)
def test_literals(source: str, expected: Any) -> None:
    value = ev(source)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2", 3),
        ("5 - 7", -2),
        ("3 * 4", 12),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("1.5 + 1", 2.5),
        ("inputs.order.id * 2", 14),
        ("-inputs.order.id", -7),
        ("'ab' + 'cd'", "abcd"),
        ("inputs.name + '!'", "Ada!"),
        ("[1] + [2, 3]", [1, 2, 3]),
        ("inputs.tags + []", ["x", "y"]),
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
    ],
)
def test_arithmetic(source: str, expected: Any) -> None:
    value = ev(source)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("'a' + 1", r"cannot apply \+ to text and number"),
        ("1 + 'a'", r"cannot apply \+ to number and text"),
        ("[1] + 'a'", r"cannot apply \+ to list and text"),
        ("'a' + [1]", r"cannot apply \+ to text and list"),
        ("{'a': 1} + {'b': 2}", r"cannot apply \+ to object and object"),
        ("1 + null", r"cannot apply \+ to number and null"),
        ("inputs.missing + 1", r"cannot apply \+ to null and number"),
        ("true + 1", r"cannot apply \+ to boolean and number"),
        ("'ab' * 2", r"cannot apply \* to text and number"),
        ("[1] * 2", r"cannot apply \* to list and number"),
        ("'a' * 'b'", r"cannot apply \* to text and text"),
        ("'ab' - 'a'", "cannot apply - to text and text"),
        ("[1] - [1]", "cannot apply - to list and list"),
        ("'6' / 2", "cannot apply / to text and number"),
        ("'6' // 2", "cannot apply // to text and number"),
        ("'%s' % 1", "cannot apply % to text and number"),
        ("-'a'", "cannot apply - to number and text"),
        ("+'a'", r"cannot apply \+ to number and text"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "division by zero"),
    ],
)
def test_arithmetic_errors(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        ev(source)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 4", False),
        ("4 >= 5", False),
        ("1 == 1.0", True),
        ("'a' != 'b'", True),
        ("'abc' < 'abd'", True),
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("3 > 2 > 1", True),
        ("1 == 1 != 2", True),
        ("1 > 2 < 'x'", False),  # chained comparison stops at the first false link
        ("null == null", True),
        ("null != 0", True),
        ("inputs.missing == null", True),
        ("null < 1", False),
        ("null > 1", False),
        ("1 <= null", False),
        ("1 >= null", False),
        ("null >= null", False),
        ("inputs.missing > 100", False),
        ("nodes.total.output.amount > 100", True),
        ("[1, 2] == [1, 2]", True),
        ("{'a': 1} == {'a': 1}", True),
        ("'x' in inputs.tags", True),
        ("'z' not in inputs.tags", True),
        ("'d' in inputs.name", True),
        ("'a' in inputs.meta", True),
        ("1 in null", False),
        ("1 in 'a1'", False),
    ],
)
def test_comparison(source: str, expected: bool) -> None:
    assert ev(source) is expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("'a' < 1", "cannot compare text < number"),
        ("1 >= 'a'", "cannot compare number >= text"),
        ("[1] < [2]", "cannot compare list < list"),
        ("true > false", "cannot compare boolean > boolean"),
        ("{'a': 1} <= {'a': 1}", "cannot compare object <= object"),
        ("1 < 2 < 'x'", "cannot compare number < text"),
        ("1 in 5", "contains.. takes text, a list or an object, not number"),
        ("1 is 1", "comparison Is is not allowed"),
        ("1 is not 1", "comparison IsNot is not allowed"),
    ],
)
def test_comparison_errors(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        ev(source)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true and false", False),
        ("true and 'x'", "x"),
        ("0 and 1", 0),
        ("1 and 2 and 3", 3),
        ("null or 'fallback'", "fallback"),
        ("false or 0", 0),
        ("'' or [] or {}", {}),
        ("inputs.name or 'anon'", "Ada"),
        ("not null", True),
        ("not []", True),
        ("not 'x'", False),
        ("not 0", True),
        ("not inputs.flag", False),
        ("false and 1 + 'a'", False),  # short-circuits: the error is never evaluated
        ("true or 1 + 'a'", True),
        ("'big' if 5 > 3 else 'small'", "big"),
        ("'yes' if [] else 'no'", "no"),
        ("'yes' if inputs.missing else 'no'", "no"),
        ("1 if true else 1 + 'a'", 1),
        ("1 + 'a' if false else 2", 2),
        ("inputs.order.id if inputs.flag else null", 7),
    ],
)
def test_logic_and_conditional(source: str, expected: Any) -> None:
    value = ev(source)
    assert value == expected
    assert type(value) is type(expected)


# --- functions --------------------------------------------------------------------------------

FUNCTION_CASES: list[tuple[str, Any]] = [
    ("len('abc')", 3),
    ("len(inputs.tags)", 2),
    ("len(inputs.meta)", 2),
    ("len(null)", 0),
    ("default(null, 5)", 5),
    ("default(0, 5)", 0),
    ("default(inputs.missing, 'x')", "x"),
    ("contains('abc', 'b')", True),
    ("contains('abc', 1)", False),
    ("contains(inputs.tags, 'y')", True),
    ("contains(inputs.meta, 'a')", True),
    ("contains(null, 'a')", False),
    ("join(inputs.tags)", "x,y"),
    ("join([1, 'a', null, true, [2]], '-')", "1-a--true-[2]"),
    ("join([], '-')", ""),
    ("str(null)", ""),
    ("str(true)", "true"),
    ("str(1.5)", "1.5"),
    ("str({'a': [1, 2]})", '{"a":[1,2]}'),
    ("int('42')", 42),
    ("int(3.9)", 3),
    ("int(-3.9)", -3),
    ("float('1.5')", 1.5),
    ("float(2)", 2.0),
    ("abs(-3)", 3),
    ("abs(-2.5)", 2.5),
    ("round(2.567, 2)", 2.57),
    ("round(2.4)", 2),
    ("min(3, 1, 2)", 1),
    ("min([3, 1, 2])", 1),
    ("max(3, 1, 2)", 3),
    ("max([3, 1.5])", 3),
    ("sum([1, 2, 3])", 6),
    ("sum([1, 2.5])", 3.5),
    ("sum([])", 0),
    ("lower('AbC')", "abc"),
    ("upper('AbC')", "ABC"),
    ("trim('  a b  ')", "a b"),
    ("startswith('headrace', 'head')", True),
    ("startswith('headrace', 'race')", False),
    ("endswith('headrace', 'race')", True),
    ("split('a,b,c')", ["a", "b", "c"]),
    ("split('a b', ' ')", ["a", "b"]),
    ("keys({'b': 1, 'a': 2})", ["b", "a"]),
    ("values({'b': 1, 'a': 2})", [1, 2]),
    ("tojson({'b': 1, 'a': [1, null]})", '{"a":[1,null],"b":1}'),
    ("tojson('x')", '"x"'),
    ("fromjson('{\"a\": [1, true]}')", {"a": [1, True]}),
    ("fromjson('null')", None),
    ("len(split(upper(inputs.name), 'D'))", 2),
]

FUNCTION_ERRORS: list[tuple[str, str]] = [
    ("len(5)", r"len\(\) takes text, a list or an object, not number"),
    ("default(1)", r"default\(\):"),
    ("contains(5, 1)", r"contains\(\) takes text, a list or an object, not number"),
    ("join('ab')", r"join\(\) takes a list, not text"),
    ("str()", r"str\(\):"),
    ("int('x')", r"int\(\) cannot convert 'x'"),
    ("int(null)", r"int\(\) cannot convert None"),
    ("float('x')", r"float\(\) cannot convert 'x'"),
    ("abs('x')", r"abs\(\) takes numbers, not text"),
    ("abs([1])", r"abs\(\):"),
    ("round('x')", r"round\(\) takes numbers, not text"),
    ("min('a', 'b')", r"min\(\) takes numbers, not text"),
    ("min([])", r"min\(\):"),
    ("max(null)", r"max\(\) takes numbers, not null"),
    ("sum('x')", r"sum\(\) takes numbers, not text"),
    ("sum(['a'])", r"sum\(\):"),
    ("lower(1)", r"lower\(\) takes text, not number"),
    ("upper(null)", r"upper\(\) takes text, not null"),
    ("trim([1])", r"trim\(\) takes text, not list"),
    ("startswith(1, 'a')", r"startswith\(\) takes text, not number"),
    ("endswith('a', 1)", r"endswith\(\):"),
    ("split(1)", r"split\(\) takes text, not number"),
    ("keys([1])", r"keys\(\) takes an object, not list"),
    ("values('a')", r"values\(\) takes an object, not text"),
    ("tojson({1: 'a', 'b': 2})", r"tojson\(\):"),
    ("fromjson('{')", r"fromjson\(\) got invalid JSON"),
    ("fromjson(null)", r"fromjson\(\) got invalid JSON"),
]


@pytest.mark.parametrize(("source", "expected"), FUNCTION_CASES)
def test_functions(source: str, expected: Any) -> None:
    value = ev(source)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("source", "message"), FUNCTION_ERRORS)
def test_function_errors(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        ev(source)


def test_every_function_has_a_case_and_an_error_case() -> None:
    def called(cases: list[tuple[str, Any]]) -> set[str]:
        return {source.split("(", 1)[0] for source, _ in cases}

    assert called(FUNCTION_CASES) == set(FUNCTIONS)
    assert called(FUNCTION_ERRORS) == set(FUNCTIONS)


@pytest.mark.parametrize(
    "source",
    [
        "int(1e999)",  # OverflowError inside a function
        "round(1e999)",
        "float(big)",
        "big / 3",  # OverflowError inside an operator
        "{[1]: 2}",  # unhashable key
        "inputs.meta[[1]]",
        "[1] in inputs.meta",
    ],
)
def test_python_errors_become_expr_errors(source: str) -> None:
    with pytest.raises(ExprError):
        ev(source)


# --- safety -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("__import__('os')", "only these functions may be called"),
        ("'a'.upper()", "only these functions may be called"),
        ("inputs.name.upper()", "only these functions may be called"),
        ("getattr(inputs, 'x')", "only these functions may be called"),
        ("eval('1')", "only these functions may be called"),
        ("len(x=1)", "keyword arguments are not allowed"),
        ("().__class__", "Tuple is not allowed"),
        ("(1, 2)", "Tuple is not allowed"),
        ("{1, 2}", "Set is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("[x for x in inputs.tags]", "ListComp is not allowed"),
        ("{x: 1 for x in inputs.tags}", "DictComp is not allowed"),
        ("(x for x in inputs.tags)", "GeneratorExp is not allowed"),
        ("inputs.tags[0:1]", "slices are not allowed"),
        ("inputs.tags[::-1]", "slices are not allowed"),
        ("(y := 1)", "NamedExpr is not allowed"),
        ("f'{inputs.name}'", "JoinedStr is not allowed"),
        ("[*inputs.tags]", "Starred is not allowed"),
        ("len(*inputs.tags)", "Starred is not allowed"),
        ("{**inputs.meta}", r"\*\* is not allowed"),
        ("2 ** 10", "operator Pow is not allowed"),
        ("1 << 2", "operator LShift is not allowed"),
        ("1 & 2", "operator BitAnd is not allowed"),
        ("~1", "operator ~ is not allowed"),
        ("b'x'", "literal b'x' is not allowed"),
        ("...", "literal Ellipsis is not allowed"),
        ("1j", "literal 1j is not allowed"),
        ("import os", "syntax error"),
        ("1 +", "syntax error"),
        ("a = 1", "syntax error"),
        ("   ", "empty expression"),
        ("-" * 900 + "1", "nested too deeply"),
        ("1" + "+1" * 5000, "nested too deeply"),
    ],
)
def test_rejected_at_compile_time(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        compile_expr(source)


@pytest.mark.parametrize(
    ("source", "ctx", "expected"),
    [
        ("x.__class__", {"x": {"a": 1}}, None),
        ("x.__class__.__bases__", {"x": {}}, None),
        ("x.__dict__", {"x": {}}, None),
        ("x.get", {"x": {"a": 1}}, None),
        ("x['__class__']", {"x": {}}, None),
        ("x.__class__", {"x": {"__class__": "mine"}}, "mine"),
        ("x.__class__", {"x": None}, None),
    ],
)
def test_dunder_reads_are_json_keys(source: str, ctx: dict[str, Any], expected: Any) -> None:
    assert compile_expr(source).evaluate(ctx) == expected


@pytest.mark.parametrize(
    ("source", "ctx"),
    [
        ("x.__class__", {"x": [1]}),
        ("x.__class__", {"x": "text"}),
        ("x.__class__", {"x": 1}),
        ("len.__call__", {}),  # a function name is not a readable value
        ("__builtins__", {}),
        ("str.__class__", {}),
    ],
)
def test_dunder_reads_never_reach_python(source: str, ctx: dict[str, Any]) -> None:
    with pytest.raises(ExprError):
        compile_expr(source).evaluate(ctx)


@pytest.mark.parametrize(
    ("source", "refs"),
    [
        ("inputs.order_id", {Ref("inputs", "order_id")}),
        ("nodes.total.output.amount > 100", {Ref("nodes", "total")}),
        ("nodes['price'].output", {Ref("nodes", "price")}),
        ("nodes[inputs.k].output", {Ref("nodes", None), Ref("inputs", "k")}),
        ("item.sku", {Ref("item", "sku")}),
        ("vars.url + '/x'", {Ref("vars", "url")}),
        ("secrets.token", {Ref("secrets", "token")}),
        ("inputs", {Ref("inputs", None)}),
        ("true and null or false", set()),
        ("len(inputs.items) + max(1, 2)", {Ref("inputs", "items")}),  # calls are not reads
        ("default(nodes.a.output, item)", {Ref("nodes", "a"), Ref("item", None)}),
    ],
)
def test_refs(source: str, refs: set[Ref]) -> None:
    assert compile_expr(source).refs == refs


def test_secret_is_a_marker_not_a_value() -> None:
    from headrace.spec.expressions import SecretRef

    assert ev("secrets.token", {}) == SecretRef("token")
    with pytest.raises(ExprError):
        ev("secrets.token.x", {})


# --- templates --------------------------------------------------------------------------------

TCTX: dict[str, Any] = {
    "inputs": {
        "n": 5,
        "f": 1.5,
        "flag": True,
        "off": False,
        "tags": ["a", "b"],
        "obj": {"b": 1, "a": [1, 2]},
        "none": None,
        "user": "bob",
    }
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("${{ inputs.n }}", 5),
        ("${{inputs.n}}", 5),
        ("${{ inputs.f }}", 1.5),
        ("${{ inputs.tags }}", ["a", "b"]),
        ("${{ inputs.obj }}", {"b": 1, "a": [1, 2]}),
        ("${{ inputs.flag }}", True),
        ("${{ inputs.off }}", False),
        ("${{ inputs.none }}", None),
        ("${{ inputs.missing }}", None),
        ("${{ inputs.n > 3 }}", True),
        ("${{ '5' }}", "5"),
        ("n=${{ inputs.n }}", "n=5"),
        (" ${{ inputs.n }}", " 5"),
        ("${{ inputs.n }} ", "5 "),
        ("${{ inputs.n }}${{ inputs.n }}", "55"),
        ("${{ inputs.user }}:${{ inputs.n }}", "bob:5"),
        ("v=${{ inputs.none }}", "v="),
        ("v=${{ inputs.flag }}", "v=true"),
        ("v=${{ inputs.off }}", "v=false"),
        ("v=${{ inputs.f }}", "v=1.5"),
        ("v=${{ inputs.tags }}", 'v=["a","b"]'),
        ("v=${{ inputs.obj }}", 'v={"b":1,"a":[1,2]}'),
        ("no expressions", "no expressions"),
        ("", ""),
        (7, 7),
        (None, None),
        (True, True),
    ],
)
def test_template_scalars(raw: Any, expected: Any) -> None:
    value = compile_template(raw)(TCTX)
    assert value == expected
    assert type(value) is type(expected)


def test_template_nested() -> None:
    raw: dict[str, Any] = {
        "plain": "text",
        "n": "${{ inputs.n }}",
        "list": ["${{ inputs.n }}", "x${{ inputs.n }}", 3, {"deep": "${{ inputs.tags }}"}],
        "obj": {"flag": "${{ inputs.flag }}", "none": "${{ inputs.none }}", "lit": [1, 2]},
    }
    assert compile_template(raw)(TCTX) == {
        "plain": "text",
        "n": 5,
        "list": [5, "x5", 3, {"deep": ["a", "b"]}],
        "obj": {"flag": True, "none": None, "lit": [1, 2]},
    }
    # the raw template is not modified by compiling or evaluating it
    assert raw["list"][0] == "${{ inputs.n }}"


def test_literal_template_needs_no_context() -> None:
    raw = {"a": [1, {"b": "text"}], "c": None}
    assert compile_template(raw)({}) == raw


def test_template_errors_surface_as_expr_errors() -> None:
    with pytest.raises(ExprError, match="cannot apply"):
        compile_template({"a": ["${{ inputs.user + 1 }}"]})(TCTX)
    with pytest.raises(ExprError, match="only these functions"):
        compile_template({"a": "x ${{ open('f') }}"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("${{ secrets.token }}", {SECRET_KEY: "token"}),
        ("Bearer ${{ secrets.token }}", {SECRET_TEXT_KEY: ["Bearer ", {SECRET_KEY: "token"}]}),
        (
            "${{ inputs.user }}:${{ secrets.pw }}",
            {SECRET_TEXT_KEY: ["bob", ":", {SECRET_KEY: "pw"}]},
        ),
        (
            "${{ inputs.none }}${{ inputs.n }}${{ secrets.a }}",
            {SECRET_TEXT_KEY: ["", "5", {SECRET_KEY: "a"}]},
        ),
    ],
)
def test_secrets_become_markers(raw: str, expected: Any) -> None:
    assert compile_template(raw)(TCTX) == expected


def test_secret_names_and_resolve_secrets() -> None:
    template = compile_template(
        {
            "headers": {
                "Authorization": "Bearer ${{ secrets.token }}",
                "X-Key": "${{ secrets.key }}",
                "X-User": "${{ inputs.user }}",
            },
            "auth": ["${{ secrets.key }}", "${{ inputs.n }}"],
        }
    )
    value = template(TCTX)
    assert "s3cr3t" not in repr(value)
    assert secret_names(value) == {"token", "key"}
    resolved = resolve_secrets(value, {"token": "s3cr3t", "key": "k", "unused": "u"})
    assert resolved == {
        "headers": {"Authorization": "Bearer s3cr3t", "X-Key": "k", "X-User": "bob"},
        "auth": ["k", 5],
    }
    with pytest.raises(KeyError):
        resolve_secrets(value, {"token": "s3cr3t"})


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({SECRET_KEY: "a"}, {"a"}),
        ([{SECRET_KEY: "a"}, {"x": {SECRET_KEY: "b"}}], {"a", "b"}),
        ({SECRET_TEXT_KEY: ["x", {SECRET_KEY: "c"}]}, {"c"}),
        ({SECRET_KEY: "a", "other": 1}, set()),  # not a marker: a marker has one key
        ({"a": "plain", "b": [1, None]}, set()),
        ("text", set()),
        (None, set()),
    ],
)
def test_secret_names(value: Any, names: set[str]) -> None:
    assert secret_names(value) == names


def test_resolve_secrets_leaves_other_values_alone() -> None:
    value = {"a": [1, "x", None, {"b": True}], SECRET_KEY + "x": 1}
    assert resolve_secrets(value, {}) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${{ inputs.x", "unclosed"),
        ("a ${{ inputs.x }} b ${{ inputs.y", "unclosed"),
        ("${{ inputs.x }", "unclosed"),
        ("a ${{ }} b", "empty expression"),
        ("${{ 1 + }}", "syntax error"),
    ],
)
def test_split_template_errors(text: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        split_template(text)
    with pytest.raises(ExprError, match=message):
        compile_template(text)


def test_split_template_parts() -> None:
    parts = split_template("a ${{ inputs.x }} b ${{ 1 + 1 }}")
    assert [p if isinstance(p, str) else p.source for p in parts] == [
        "a ",
        "inputs.x",
        " b ",
        "1 + 1",
    ]
    assert all(isinstance(p, Expr) for p in parts[1::2])
    assert split_template("plain") == ["plain"]
    assert is_templated("x ${{ y }}")
    assert not is_templated("x {{ y }}")
    assert not is_templated(5)
