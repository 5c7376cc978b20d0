"""The template registry: namespaces, semantic-version resolution, exact versions and reference
parsing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.errors import TaskerInputError, UnknownTemplateError
from tasker.domain.templates import TaskTemplate, semver_key
from tasker.registry import TemplateRef, TemplateRegistry, parse_ref


def make(
    name: str, version: str = "0.1.0", namespace: str | None = None, description: str | None = None
) -> TaskTemplate:
    data: dict[str, object] = {
        "name": name,
        "version": version,
        "description": description,
        "step_templates": [{"name": "only", "handler_class": "tests.unit.sample_handlers:Ok"}],
    }
    if namespace is not None:
        data["namespace_name"] = namespace
    return TaskTemplate.model_validate(data)


def registry_of(*templates: TaskTemplate) -> TemplateRegistry:
    reg = TemplateRegistry()
    for t in templates:
        reg.register(t)
    return reg


def test_namespace_defaults_to_default() -> None:
    t = make("welcome")
    assert t.namespace_name == "default"
    reg = registry_of(t)
    assert reg.get("welcome") is t
    assert reg.get("default/welcome") is t
    assert reg.get("welcome@0.1.0") is t
    assert "welcome" in reg
    assert parse_ref("welcome") == TemplateRef("default", "welcome", None)


def test_latest_version_is_semantic_not_lexical() -> None:
    reg = registry_of(make("refund", "1.9.0", "payments"), make("refund", "1.10.0", "payments"))
    assert reg.get("payments/refund").version == "1.10.0"
    reg.register(make("refund", "2.0.0-rc.1", "payments"))
    assert reg.get("payments/refund").version == "2.0.0-rc.1"
    reg.register(make("refund", "2.0.0", "payments"))
    assert reg.get("payments/refund").version == "2.0.0"
    assert [t.version for t in reg.versions("payments", "refund")] == [
        "1.9.0",
        "1.10.0",
        "2.0.0-rc.1",
        "2.0.0",
    ]


def test_prerelease_identifiers_compare_numerically() -> None:
    reg = registry_of(
        *(make("refund", v, "payments") for v in ["1.0.0-rc.2", "1.0.0-rc.10", "1.0.0-beta"])
    )
    assert reg.get("payments/refund").version == "1.0.0-rc.10"


SEMVER_PRECEDENCE = [  # the example of semver.org section 11, plus a few more
    "0.9.9",
    "1.0.0-0",
    "1.0.0-1",
    "1.0.0-2",
    "1.0.0-10",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.9.0",
    "1.10.0",
    "2.0.0-rc.1",
    "2.0.0",
    "10.0.0",
]


@given(st.permutations(SEMVER_PRECEDENCE))
def test_semver_key_orders_like_semver_org(versions: list[str]) -> None:
    assert sorted(versions, key=semver_key) == SEMVER_PRECEDENCE


def test_semver_key_ignores_build_metadata_and_refuses_garbage() -> None:
    assert semver_key("1.2.3+build.5") == semver_key("1.2.3")
    for bad in ["1.2", "v1.2.3", "01.2.3", "1.2.3-", "", "latest"]:
        with pytest.raises(ValueError):
            semver_key(bad)


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
        min_size=1,
        unique=True,
    )
)
def test_latest_is_the_numeric_maximum(triples: list[tuple[int, int, int]]) -> None:
    shuffled = list(triples)
    random.Random(0).shuffle(shuffled)
    reg = registry_of(*(make("t", f"{a}.{b}.{c}") for a, b, c in shuffled))
    a, b, c = max(triples)
    assert reg.get("default/t").version == f"{a}.{b}.{c}"
    assert len(reg) == len(triples)


def test_exact_version() -> None:
    old, new = make("refund", "1.3.0", "cs"), make("refund", "1.4.0", "cs")
    reg = registry_of(old, new)
    assert reg.get("cs/refund@1.3.0") is old
    assert reg.get("cs/refund", version="1.3.0") is old
    assert reg.get(TemplateRef("cs", "refund"), version="1.3.0") is old
    assert reg.get(TemplateRef("cs", "refund", "1.4.0")) is new
    with pytest.raises(UnknownTemplateError) as info:
        reg.get("cs/refund@9.9.9")
    assert "cs/refund@1.3.0" in str(info.value) and "cs/refund@1.4.0" in str(info.value)


def test_same_name_in_two_namespaces_coexist() -> None:
    pay = make("process_refund", "2.1.0", "payments", "payments flavour")
    cs = make("process_refund", "1.3.0", "customer_success", "cs flavour")
    reg = registry_of(pay, cs)
    assert reg.get("payments/process_refund") is pay
    assert reg.get("customer_success/process_refund") is cs
    assert reg.get("payments/process_refund@2.1.0") is pay
    assert reg.get("customer_success/process_refund@1.3.0") is cs
    with pytest.raises(UnknownTemplateError):
        reg.get("payments/process_refund@1.3.0")
    assert reg.namespaces() == {"customer_success": 1, "payments": 1}
    assert reg.keys() == ["customer_success/process_refund@1.3.0", "payments/process_refund@2.1.0"]
    assert "process_refund" not in reg  # the default namespace has none


def test_registering_the_same_key_replaces_it() -> None:
    reg = registry_of(make("t", "1.0.0", description="first"))
    reg.register(make("t", "1.0.0", description="second"))
    assert len(reg) == 1
    assert reg.get("t").description == "second"


def test_unknown_template_lists_known_keys() -> None:
    reg = registry_of(make("a", "1.0.0", "ns"), make("b", "0.2.0"))
    with pytest.raises(UnknownTemplateError) as info:
        reg.get("ns/missing")
    err = info.value
    assert isinstance(err, TaskerInputError)
    assert err.requested == "ns/missing"
    assert err.known == ["default/b@0.2.0", "ns/a@1.0.0"]
    assert "ns/missing" in str(err) and "default/b@0.2.0" in str(err) and "ns/a@1.0.0" in str(err)
    assert "\n" not in str(err)


def test_unknown_template_in_an_empty_registry_says_how_to_load() -> None:
    with pytest.raises(UnknownTemplateError) as info:
        TemplateRegistry().get("x")
    assert info.value.known == []
    assert "load" in str(info.value)
    assert len(TemplateRegistry()) == 0
    assert TemplateRegistry().all() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name", TemplateRef("default", "name")),
        ("ns/name", TemplateRef("ns", "name")),
        ("ns/name@1.2.3", TemplateRef("ns", "name", "1.2.3")),
        ("name@2.0.0-rc.1", TemplateRef("default", "name", "2.0.0-rc.1")),
        ("  ns/name@1.0.0 ", TemplateRef("ns", "name", "1.0.0")),
    ],
)
def test_parse_ref(text: str, expected: TemplateRef) -> None:
    assert parse_ref(text) == expected
    assert parse_ref(str(expected)) == expected


def test_parse_ref_version_argument_wins() -> None:
    assert parse_ref("ns/name@1.0.0", "2.0.0") == TemplateRef("ns", "name", "2.0.0")
    assert str(TemplateRef("ns", "name", "2.0.0")) == "ns/name@2.0.0"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/name",
        "ns/",
        "/",
        "ns/a/b",
        "ns/name@",
        "ns/name@1.2",
        "ns/name@latest",
        "ns/name@1.0.0@2.0.0",
        "@1.0.0",
    ],
)
def test_parse_ref_rejects_malformed(text: str) -> None:
    with pytest.raises(TaskerInputError) as info:
        parse_ref(text)
    assert "\n" not in str(info.value)


def test_parse_ref_rejects_non_strings_and_bad_version_argument() -> None:
    with pytest.raises(TaskerInputError):
        parse_ref(None)  # type: ignore[arg-type]
    with pytest.raises(TaskerInputError):
        parse_ref(42)  # type: ignore[arg-type]
    with pytest.raises(TaskerInputError):
        parse_ref("ns/name", "one")


def test_contains_is_false_for_garbage() -> None:
    reg = registry_of(make("t"))
    assert "t" in reg
    assert "ns/" not in reg
    assert 42 not in reg
