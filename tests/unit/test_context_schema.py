"""Task context validation: Draft 2020-12 with formats, every violation with its path, defaults
applied."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.context_schema import apply_defaults, validate_context
from tasker.domain.errors import ContextValidationError, TaskerInputError
from tasker.templates.regex_safety import refusal, schema_patterns

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["customer_info", "cart_items"],
    "properties": {
        "customer_info": {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string", "format": "email"},
                "tier": {"type": "string", "enum": ["standard", "gold"], "default": "standard"},
                "preferences": {
                    "type": "object",
                    "default": {},
                    "properties": {"newsletter": {"type": "boolean", "default": False}},
                },
            },
        },
        "cart_items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "quantity"],
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "gift_wrap": {"type": "boolean", "default": False},
                },
            },
        },
        "priority": {"type": "string", "default": "normal"},
        "currency": {"type": "string", "default": "USD"},
        "placed_on": {"type": "string", "format": "date"},
    },
}


def good_order() -> dict[str, Any]:
    return {
        "customer_info": {"email": "ann@example.com"},
        "cart_items": [
            {"sku": "A-1", "quantity": 2},
            {"sku": "B-2", "quantity": 1, "gift_wrap": True},
        ],
    }


def violations(schema: dict[str, Any], context: Any) -> list[tuple[str, str]]:
    with pytest.raises(ContextValidationError) as info:
        validate_context("shop/order@1.0.0", schema, context)
    err = info.value
    assert isinstance(err, TaskerInputError)
    assert err.template == "shop/order@1.0.0"
    assert "shop/order@1.0.0" in str(err)
    assert "\n" not in str(err)
    for path, message in err.violations:
        assert f"{path}: {message}" in str(err)
    return err.violations


def test_valid_context_gets_nested_defaults() -> None:
    out = validate_context("shop/order@1.0.0", ORDER_SCHEMA, good_order())
    assert out["priority"] == "normal" and out["currency"] == "USD"
    assert out["customer_info"] == {
        "email": "ann@example.com",
        "tier": "standard",
        "preferences": {"newsletter": False},  # a default object, then its own defaults
    }
    # Defaults inside the objects of an array's items.
    assert out["cart_items"] == [
        {"sku": "A-1", "quantity": 2, "gift_wrap": False},
        {"sku": "B-2", "quantity": 1, "gift_wrap": True},
    ]


def test_given_values_win_over_defaults() -> None:
    ctx = good_order() | {"priority": "express"}
    ctx["customer_info"]["tier"] = "gold"
    out = validate_context("t", ORDER_SCHEMA, ctx)
    assert out["priority"] == "express" and out["customer_info"]["tier"] == "gold"


def test_input_is_not_mutated() -> None:
    ctx = good_order()
    before = copy.deepcopy(ctx)
    out = validate_context("t", ORDER_SCHEMA, ctx)
    assert ctx == before
    assert out is not ctx
    out["customer_info"]["email"] = "changed"
    assert ctx["customer_info"]["email"] == "ann@example.com"


def test_defaults_are_copies_not_the_schema_objects() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"tags": {"type": "array", "default": []}},
    }
    first = validate_context("t", schema, {})
    first["tags"].append("x")
    assert validate_context("t", schema, {}) == {"tags": []}
    assert schema["properties"]["tags"]["default"] == []


def test_bad_email_format_is_an_error() -> None:
    ctx = good_order()
    ctx["customer_info"]["email"] = "not-an-email"
    found = violations(ORDER_SCHEMA, ctx)
    assert [p for p, _ in found] == ["$.customer_info.email"]
    assert "email" in found[0][1]


def test_bad_date_format_is_an_error() -> None:
    found = violations(ORDER_SCHEMA, good_order() | {"placed_on": "31/12/2024"})
    assert [p for p, _ in found] == ["$.placed_on"]


def test_every_violation_is_reported_with_its_path() -> None:
    ctx = good_order()
    ctx["customer_info"]["email"] = "nope"
    ctx["cart_items"][1]["quantity"] = 0
    ctx["priority"] = 5
    found = violations(ORDER_SCHEMA, ctx)
    paths = [p for p, _ in found]
    assert "$.customer_info.email" in paths
    assert "$.cart_items[1].quantity" in paths
    assert "$.priority" in paths
    assert len(found) == 3


def test_missing_required_fields_are_all_reported() -> None:
    found = violations(ORDER_SCHEMA, {})
    messages = " | ".join(m for _, m in found)
    assert "'customer_info' is a required property" in messages
    assert "'cart_items' is a required property" in messages
    assert all(p == "$" for p, _ in found)
    nested = violations(ORDER_SCHEMA, {"customer_info": {}, "cart_items": []})
    assert {p for p, _ in nested} == {"$.customer_info", "$.cart_items"}


def test_error_message_counts_violations() -> None:
    err = ContextValidationError("t", [("$.a", "bad"), ("$.b", "worse")])
    assert "2 violations" in str(err)
    assert "1 violation)" in str(ContextValidationError("t", [("$.a", "bad")]))


@pytest.mark.parametrize("context", [None, [], "text", 3, ["a"], True])
def test_non_object_context_is_refused(context: Any) -> None:
    found = violations(ORDER_SCHEMA, context)
    assert found[0][0] == "$" and "object" in found[0][1]
    with pytest.raises(ContextValidationError):
        validate_context("t", None, context)


def test_no_schema_accepts_any_object_as_a_copy() -> None:
    ctx = {"a": {"b": 1}}
    out = validate_context("t", None, ctx)
    assert out == ctx and out is not ctx and out["a"] is not ctx["a"]
    assert validate_context("t", {}, ctx) == ctx


def test_default_inside_all_of() -> None:
    schema = {"type": "object", "allOf": [{"properties": {"region": {"default": "eu"}}}]}
    assert validate_context("t", schema, {}) == {"region": "eu"}


def test_defaults_do_not_create_missing_parent_objects() -> None:
    shipping = {"type": "object", "properties": {"speed": {"default": "slow"}}}
    schema = {"type": "object", "properties": {"shipping": shipping}}
    assert validate_context("t", schema, {}) == {}
    assert validate_context("t", schema, {"shipping": {}}) == {"shipping": {"speed": "slow"}}


def test_apply_defaults_ignores_non_schemas() -> None:
    assert apply_defaults(None, {"a": 1}) == {"a": 1}
    assert apply_defaults({"properties": {"a": True}}, {}) == {}


def test_validator_follows_a_new_schema_object() -> None:
    strict = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert validate_context("t", strict, {"n": 1}) == {"n": 1}
    loose = {"type": "object", "properties": {"n": {"type": "string"}}}
    assert validate_context("t", loose, {"n": "1"}) == {"n": "1"}
    violations(strict, {"n": "1"})


# --- property: whatever validates comes back with every top-level default -------------------------

NAMES = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]
VALUES = {
    "string": st.text(max_size=4),
    "integer": st.integers(-1000, 1000),
    "boolean": st.booleans(),
}
any_value = st.one_of(st.none(), *VALUES.values())


@st.composite
def schema_and_context(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    props: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES))):
        kind = draw(st.sampled_from(sorted(VALUES)))
        sub: dict[str, Any] = {"type": kind}
        if draw(st.booleans()):
            sub["default"] = draw(VALUES[kind])
        props[name] = sub
    schema = {"type": "object", "properties": props}
    context: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from([*NAMES, "extra"]), unique=True, max_size=4)):
        # Mostly well-typed values, so that most contexts validate; sometimes anything.
        well_typed = name in props and draw(st.integers(0, 4)) > 0
        context[name] = draw(VALUES[props[name]["type"]] if well_typed else any_value)
    return schema, context


@given(schema_and_context())
def test_validated_context_has_all_top_level_defaults(
    case: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    schema, context = case
    before = copy.deepcopy(context)
    try:
        out = validate_context("t", schema, context)
    except ContextValidationError as err:
        assert err.violations
        assert all(path.startswith("$.") for path, _ in err.violations)
        return
    finally:
        assert context == before
    for name, sub in schema["properties"].items():
        if "default" in sub:
            assert name in out
            assert out[name] == (context[name] if name in context else sub["default"])
    # Nothing is lost or added beyond the defaults.
    assert {k: v for k, v in out.items() if k in context} == context
    assert set(out) - set(context) <= {n for n, s in schema["properties"].items() if "default" in s}


# -- schema patterns: exponential backtracking is refused at template load -------------------------

CATASTROPHIC = [
    r"(a+)+$",
    r"(a*)*b",
    r"(a|a)*$",
    r"(a|aa)*$",
    r"(.*a){20}",
    r"^(\w+\s?)+$",
    r"(x+x+)+y",
    r"^(\s*,\s*)*$",
    r"(a{1,3})*$",
    r"(a|)+$",
    r"^(([a-z])+.)+[A-Z]([a-z])+$",
]
SAFE = [
    r"^[a-z]+(-[a-z]+)*$",
    r"^([a-z0-9-]+\.)+[a-z]{2,}$",
    r"(/[^/]+)*",
    r"^\d{3}-\d{4}$",
    r"^(\d{1,3}\.){3}\d{1,3}$",
    r"(foo|bar)+",
    r"^(?:[a-z]++\d)+$",
    r"(?>a+)+",
    r"^[^@]+@[^@]+\.[a-z]+$",
    r"^[A-Z]{2}\d+$",
    r"^(a|b|c)*$",
    r"^\+?[0-9 ()-]{7,20}$",
    r"^(-[a-z]{1,3})*$",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_are_refused(pattern: str) -> None:
    assert refusal(pattern) is not None


@pytest.mark.parametrize("pattern", SAFE)
def test_common_safe_patterns_are_accepted(pattern: str) -> None:
    assert refusal(pattern) is None


def test_an_invalid_pattern_is_refused_with_the_reason() -> None:
    assert "not a valid regular expression" in (refusal("(") or "")


@given(st.text(alphabet="ab()|*+?{}[]^$.\\,1-", max_size=20))
def test_any_text_is_judged_without_raising(pattern: str) -> None:
    why = refusal(pattern)
    assert why is None or isinstance(why, str)


@given(
    st.lists(st.sampled_from(["a", "b", "[ab]", r"\d", "x"]), min_size=1, max_size=3),
    st.sampled_from(["+", "*", "{2,}"]),
    st.sampled_from(["+", "*", "{1,}"]),
)
def test_an_undelimited_unbounded_repeat_inside_another_is_always_refused(
    atoms: list[str], inner: str, outer: str
) -> None:
    body = "".join(f"{a}{inner}" for a in atoms)
    assert refusal(f"({body}){outer}$") is not None


def test_schema_patterns_finds_pattern_and_pattern_properties_but_not_data() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"pattern": "x+"},
            "pattern": {"type": "string"},
            "b": {"items": [{"pattern": "y"}]},
        },
        "patternProperties": {"^k": {"pattern": "z"}},
        "const": {"pattern": "(a+)+"},
        "default": {"pattern": "(a+)+"},
    }
    found = sorted(schema_patterns(schema))
    assert found == [
        ("/patternProperties", "^k"),
        ("/patternProperties/^k/pattern", "z"),
        ("/properties/a/pattern", "x+"),
        ("/properties/b/items/0/pattern", "y"),
    ]


def test_a_schema_built_in_code_with_a_catastrophic_pattern_is_refused_before_it_runs() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}}
    with pytest.raises(TaskerInputError) as info:
        validate_context("ns/t@1.0.0", schema, {"name": "a" * 40 + "!"})
    msg = str(info.value)
    assert (
        "ns/t@1.0.0" in msg
        and "/properties/name/pattern" in msg
        and "(a+)+" in msg
        and "fix:" in msg
    )
