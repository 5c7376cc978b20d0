"""Loading YAML task templates: a valid round trip, and every broken file refused in one line that
says the fix."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker.domain.errors import TaskerInputError, TemplateError
from tasker.templates import TaskTemplate, load_file, load_path, parse_template
from tasker.templates.loader import STEP_KEYS, TOP_LEVEL_KEYS, template_files

OK = "tests.unit.sample_handlers:Ok"
NOT_HANDLER = "tests.unit.sample_handlers:NotAHandler"

Write = Callable[..., Path]


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKER_ENV", raising=False)


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def _write(text: str, name: str = "template.yaml") -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    return _write


def two_steps(extra_a: str = "", extra_b: str = "", top: str = "") -> str:
    """A minimal valid template (a -> b) with indented extras for each step and top-level keys."""
    return (
        "name: minimal\n"
        + top
        + "step_templates:\n"
        + f"  - name: a\n    handler_class: {OK}\n"
        + extra_a
        + f"  - name: b\n    depends_on_step: a\n    handler_class: {OK}\n"
        + extra_b
    )


def refused(path: Path, *needles: str, **kwargs: Any) -> str:
    with pytest.raises(TemplateError) as info:
        load_file(path, **kwargs)
    msg = str(info.value)
    assert isinstance(info.value, TaskerInputError)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    assert "fix:" in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# --- a valid template -----------------------------------------------------------------------------

FULL = f"""
name: process_order
namespace_name: ecommerce
version: 1.2.0
description: Charge, reserve, create, notify
default_dependent_system: shop_db
task_handler_class: tests.unit.sample_handlers:Workflow
custom_events:
  - order_flagged
  - name: order_vip
    description: a big spender
schema:
  type: object
  required: [order_id]
  properties:
    order_id: {{type: integer}}
    priority: {{type: string, default: normal}}
retry:
  backoff_base_seconds: 2
  backoff_max_seconds: 60
step_templates:
  - name: validate
    description: check the cart
    handler_class: {OK}
  - name: charge
    depends_on_step: validate
    handler_class: tests.unit.sample_handlers.Ok
    default_retry_limit: 5
    dependent_system: payments_api
    handler_config:
      url: https://pay.example.com
      timeout_seconds: 2.5
    retry:
      jitter: 0
    custom_events: [payment_declined]
  - name: reserve
    depends_on_step: validate
    handler_class: {OK}
    default_retryable: false
    skippable: true
  - name: create
    depends_on_step: charge
    depends_on_steps: [charge, reserve]
    handler_class: {OK}
"""


def test_full_template_fields(write: Write) -> None:
    path = write(FULL)
    t = load_file(path)
    assert t.source == str(path)
    assert t.warnings == []
    assert (t.name, t.namespace_name, t.version) == ("process_order", "ecommerce", "1.2.0")
    assert t.key == "ecommerce/process_order@1.2.0"
    assert t.description == "Charge, reserve, create, notify"
    assert t.task_handler_class == "tests.unit.sample_handlers:Workflow"
    assert t.context_schema is not None and t.context_schema["required"] == ["order_id"]
    assert [s.name for s in t.step_templates] == ["validate", "charge", "reserve", "create"]
    assert [e.name for e in t.custom_events] == ["order_flagged", "order_vip"]
    assert t.custom_events[1].description == "a big spender"

    charge = t.step("charge")
    assert charge.parents == ["validate"]
    assert charge.default_retry_limit == 5
    assert t.dependent_system_of(charge) == "payments_api"
    assert t.dependent_system_of(t.step("validate")) == "shop_db"
    assert charge.handler_config == {"url": "https://pay.example.com", "timeout_seconds": 2.5}
    assert charge.timeout_seconds == 2.5
    assert t.declared_events(charge) == {"order_flagged", "order_vip", "payment_declined"}
    assert t.declared_events() == {"order_flagged", "order_vip", "payment_declined"}
    # depends_on_step first, then depends_on_steps, without repeats.
    assert t.step("create").parents == ["charge", "reserve"]

    policy = t.retry_policy(charge)  # the step's retry block merges over the template's
    assert (policy.retry_limit, policy.retryable) == (5, True)
    assert (policy.backoff_base_seconds, policy.backoff_max_seconds, policy.jitter) == (2, 60, 0)
    reserve = t.step("reserve")
    assert reserve.skippable is True and reserve.default_retryable is False
    assert t.retry_policy(reserve).max_attempts == 1
    assert (
        t.retry_policy(reserve).jitter == 0.1
    )  # the default: only the template block applies here
    with pytest.raises(KeyError):
        t.step("nope")


def test_defaults(write: Write) -> None:
    t = load_file(
        write(f"""
        name: hello
        step_templates:
          - name: only
            handler_class: {OK}
    """)
    )
    assert t.namespace_name == "default"
    assert t.version == "0.1.0"
    assert t.key == "default/hello@0.1.0"
    assert t.default_dependent_system == "default"
    assert t.description is None and t.context_schema is None and t.task_handler_class is None
    assert t.custom_events == [] and t.retry is None
    step = t.step_templates[0]
    assert step.default_retry_limit == 3
    assert step.default_retryable is True and step.skippable is False
    assert step.handler_config == {} and step.parents == [] and step.timeout_seconds is None
    assert t.dependent_system_of(step) == "default"
    policy = t.retry_policy(step)
    assert (policy.retry_limit, policy.backoff_base_seconds, policy.backoff_max_seconds) == (
        3,
        1.0,
        30.0,
    )


def test_cached_policies_and_positions_match_the_per_step_answers(write: Write) -> None:
    """`retry_policies` and `positions` (what every new task's steps start with) are the per-step
    `retry_policy` and the execution order, computed once."""
    t = load_file(
        write(f"""
        name: shaped
        retry: {{backoff_base_seconds: 2}}
        step_templates:
          - name: last
            depends_on_steps: [left, right]
            handler_class: {OK}
          - name: left
            depends_on_step: first
            default_retry_limit: 1
            retry: {{backoff_base_seconds: 4}}
            handler_class: {OK}
          - name: right
            depends_on_step: first
            handler_class: {OK}
          - name: first
            handler_class: {OK}
    """)
    )
    policies = t.retry_policies()
    assert policies == {s.name: t.retry_policy(s) for s in t.step_templates}
    assert (policies["left"].retry_limit, policies["right"].retry_limit) == (1, 3)
    assert (policies["left"].backoff_base_seconds, policies["right"].backoff_base_seconds) == (4, 2)
    assert t.retry_policies() is policies  # computed once
    positions = t.positions()
    assert sorted(positions, key=positions.__getitem__)[0] == "first"
    assert positions["last"] == 3 and {positions["left"], positions["right"]} == {1, 2}


def test_null_values_take_defaults(write: Write) -> None:
    t = load_file(
        write(f"""
        name: hello
        default_dependent_system:
        custom_events:
        step_templates:
          - name: only
            handler_class: {OK}
            handler_config:
            depends_on_steps:
            custom_events:
    """)
    )
    assert t.default_dependent_system == "default"
    assert t.step_templates[0].handler_config == {}
    assert t.step_templates[0].parents == []


def test_snapshot_round_trip(write: Write) -> None:
    t = load_file(write(FULL))
    snap = t.snapshot()
    assert json.loads(json.dumps(snap)) == snap  # storable as JSON
    assert snap["schema"]["properties"]["priority"]["default"] == "normal"
    restored = TaskTemplate.from_snapshot(snap)
    assert restored == t
    assert restored.snapshot() == snap
    assert restored.key == t.key
    assert restored.retry_policy(restored.step("charge")) == t.retry_policy(t.step("charge"))
    assert restored.step("create").parents == ["charge", "reserve"]
    # And through JSON text, as it comes back from the database.
    assert TaskTemplate.from_snapshot(json.loads(json.dumps(snap))) == t


def test_equality_is_by_value(write: Write) -> None:
    a = load_file(write(FULL, "a.yaml"))
    b = load_file(write(FULL, "b.yaml"))
    assert a == b and a.source != b.source
    c = load_file(write(FULL.replace("version: 1.2.0", "version: 1.2.1"), "c.yaml"))
    assert a != c
    assert a != "not a template"


def test_numeric_version_is_refused_but_quoted_is_fine(write: Write) -> None:
    refused(write(two_steps(top="version: 1.0\n")), "version", "semantic version")
    assert load_file(write(two_steps(top="version: '2.0.0-rc.1'\n"))).version == "2.0.0-rc.1"


# --- broken files ---------------------------------------------------------------------------------


def test_invalid_yaml_names_the_line(write: Write) -> None:
    path = write("name: t\nstep_templates:\n  - name: a\n   handler_class: x\n")
    msg = refused(path, "invalid YAML", "line 4")
    assert "YAML" in msg.split("fix:")[1]


def test_invalid_yaml_unclosed_bracket(write: Write) -> None:
    refused(write("name: [t\nstep_templates: []\n"), "invalid YAML", "line ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", ""])
def test_not_a_mapping(write: Write, text: str) -> None:
    refused(write(text), "mapping")


def test_missing_name(write: Write) -> None:
    refused(write(f"step_templates:\n  - name: a\n    handler_class: {OK}\n"), "name", "required")


def test_missing_step_templates(write: Write) -> None:
    refused(write("name: t\n"), "step_templates", "add 'step_templates'")


def test_empty_step_templates(write: Write) -> None:
    refused(write("name: t\nstep_templates: []\n"), "step_templates", "at least one step")


def test_step_without_handler_class_names_the_step(write: Write) -> None:
    refused(write("name: t\nstep_templates:\n  - name: lonely\n"), "step 'lonely'", "handler_class")


def test_duplicate_step_names(write: Write) -> None:
    path = write(two_steps(extra_b=f"  - name: a\n    handler_class: {OK}\n"))
    refused(path, "step 'a'", "duplicate")


def test_unknown_parent(write: Write) -> None:
    path = write(two_steps().replace("depends_on_step: a", "depends_on_step: ghost"))
    refused(path, "step 'b'", "'ghost'", "unknown")


def test_unknown_parent_in_depends_on_steps(write: Write) -> None:
    refused(write(two_steps(extra_b="    depends_on_steps: [a, ghost]\n")), "step 'b'", "'ghost'")


def test_self_dependency(write: Write) -> None:
    refused(write(two_steps(extra_b="    depends_on_steps: [b]\n")), "step 'b'", "itself")


def test_cycle_names_the_path(write: Write) -> None:
    path = write(two_steps(extra_a="    depends_on_step: b\n"))
    msg = refused(path, "cycle")
    assert "a -> b -> a" in msg or "b -> a -> b" in msg


def test_longer_cycle(write: Write) -> None:
    path = write(f"""
        name: t
        step_templates:
          - {{name: start, handler_class: {OK}}}
          - {{name: x, handler_class: {OK}, depends_on_steps: [start, z]}}
          - {{name: y, handler_class: {OK}, depends_on_step: x}}
          - {{name: z, handler_class: {OK}, depends_on_step: y}}
    """)
    msg = refused(path, "cycle")
    assert any(c in msg for c in ["x -> y -> z -> x", "y -> z -> x -> y", "z -> x -> y -> z"]), msg


@pytest.mark.parametrize(
    "handler",
    [
        "no_such_package.module:Handler",
        "tests.unit.sample_handlers:Missing",
        "NoDots",
        "..relative:X",
        ":X",
        "pkg:",
    ],
)
def test_unimportable_handler_class(write: Write, handler: str) -> None:
    refused(
        write(
            two_steps().replace(
                f"handler_class: {OK}\n  - name: b", f"handler_class: '{handler}'\n  - name: b"
            )
        ),
        "step 'a'",
        "cannot import",
        handler,
    )


def test_handler_module_that_fails_to_import(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "tasker_unit_broken_syntax.py").write_text("def broken(:\n    pass\n")
    (pkg / "tasker_unit_broken_runtime.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(pkg))
    refused(
        write(two_steps().replace(OK, "tasker_unit_broken_syntax:Handler", 1), "s.yaml"),
        "step 'a'",
        "cannot import",
        "SyntaxError",
    )
    msg = refused(
        write(two_steps().replace(OK, "tasker_unit_broken_runtime:Handler", 1), "r.yaml"),
        "step 'a'",
        "RuntimeError",
        "boom",
    )
    assert "second line" in msg


@pytest.mark.parametrize(
    "handler", [NOT_HANDLER, "tests.unit.sample_handlers:NOT_A_CLASS", "tests.unit.sample_handlers"]
)
def test_handler_class_that_is_not_a_step_handler(write: Write, handler: str) -> None:
    refused(
        write(two_steps().replace(OK, handler, 1)),
        "step 'a'",
        "not a StepHandler subclass",
        handler,
    )


def test_handlers_are_not_resolved_when_asked_not_to(write: Write) -> None:
    t = load_file(
        write(two_steps().replace(OK, "no_such_package:Handler", 1)), resolve_handlers=False
    )
    assert t.step("a").handler_class == "no_such_package:Handler"


def test_task_handler_class_must_be_a_task_handler(write: Write) -> None:
    refused(
        write(two_steps(top=f"task_handler_class: {OK}\n")), "task_handler_class", "TaskHandler"
    )
    refused(
        write(two_steps(top="task_handler_class: nope.nope:X\n")),
        "task_handler_class",
        "cannot import",
    )


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ("schema:\n  type: 12\n", "schema"),
        ("schema:\n  type: object\n  properties:\n    a: {type: strang}\n", "properties/a"),
        ("schema:\n  type: object\n  required: yes\n", "required"),
        ("schema:\n  pattern: '('\n", "pattern"),
    ],
)
def test_invalid_json_schema(write: Write, schema: str, needle: str) -> None:
    refused(write(two_steps(top=schema)), "not valid JSON Schema", needle)


def test_schema_that_is_not_a_mapping(write: Write) -> None:
    refused(write(two_steps(top="schema: [1, 2]\n")), "schema")


@pytest.mark.parametrize("value", ["0", "-1", "three", "2.5", "1001"])
def test_bad_retry_limit(write: Write, value: str) -> None:
    refused(
        write(two_steps(extra_b=f"    default_retry_limit: {value}\n")),
        "step 'b'",
        "default_retry_limit",
    )


@pytest.mark.parametrize("value", ["0", "-5", "-0.5", "soon", "true"])
def test_bad_timeout(write: Write, value: str) -> None:
    path = write(two_steps(extra_a=f"    handler_config:\n      timeout_seconds: {value}\n"))
    refused(path, "step 'a'", "timeout_seconds")


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ("    retry:\n      jitter: 2\n", "jitter"),
        ("    retry:\n      jitter: -0.1\n", "jitter"),
        ("    retry:\n      backoff_base_seconds: -1\n", "backoff_base_seconds"),
        (
            "    retry:\n      backoff_base_seconds: 10\n      backoff_max_seconds: 5\n",
            "backoff_max_seconds",
        ),
        (
            "    retry:\n      backoff_max_seconds: 0.5\n",
            "backoff_max_seconds",
        ),  # below the default 1 s base
        ("    retry:\n      backoff_max_seconds: .inf\n", "finite"),
        ("    retry: [1]\n", "retry"),
    ],
)
def test_bad_step_retry_block(write: Write, block: str, needle: str) -> None:
    refused(write(two_steps(extra_b=block)), "step 'b'", needle)


def test_template_retry_block_is_checked_against_each_step(write: Write) -> None:
    top = "retry:\n  backoff_base_seconds: 100\n"
    refused(write(two_steps(top=top)), "step 'a'", "backoff_max_seconds")
    refused(write(two_steps(top="retry:\n  jitter: 2\n")), "retry.jitter")
    t = load_file(
        write(
            two_steps(
                top=top,
                extra_a="    retry:\n      backoff_max_seconds: 500\n",
                extra_b="    retry:\n      backoff_max_seconds: 500\n",
            )
        )
    )
    assert t.retry_policy(t.step("a")).backoff_base_seconds == 100


@pytest.mark.parametrize("version", ["banana", "1.2", "v1.2.3", "1.2.3.4", "01.2.3", "[1]"])
def test_invalid_version(write: Write, version: str) -> None:
    refused(write(two_steps(top=f"version: {version}\n")), "version")


@pytest.mark.parametrize("name", ["'has space'", "'1starts_with_digit'", "''", "[a]"])
def test_invalid_names(write: Write, name: str) -> None:
    refused(write(two_steps(top="").replace("name: minimal", f"name: {name}")), "name")
    refused(
        write(
            two_steps().replace("name: b", f"name: {name}").replace("depends_on_step: a\n", ""),
            "s.yaml",
        ),
        "name",
    )


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\nstep_templates: []\n".encode("latin-1"))
    refused(path, "UTF-8")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nope.yaml", "cannot read")
    with pytest.raises(TemplateError) as info:
        load_path(tmp_path / "nope")
    assert "no such file" in str(info.value) and "fix:" in str(info.value)


def test_malformed_shapes_are_refused_not_crashed(write: Write) -> None:
    refused(write("name: t\nstep_templates: 5\n"), "step_templates")
    refused(write("name: t\nstep_templates: [just_a_name]\n"), "#1")
    refused(write(two_steps(extra_a="    depends_on_steps: 5\n")), "step 'a'", "depends_on_steps")
    refused(write(two_steps(extra_a="    handler_config: [1]\n")), "step 'a'", "handler_config")


# --- warnings -------------------------------------------------------------------------------------


def test_unknown_keys_warn_but_load(write: Write) -> None:
    path = write(two_steps(top="colour: blue\nconcurrent: true\n", extra_b="    retires: 3\n"))
    t = load_file(path)
    assert [s.name for s in t.step_templates] == ["a", "b"]
    warnings = t.warnings
    assert any("'colour'" in w and str(path) in w for w in warnings)
    assert any("step 'b'" in w and "'retires'" in w for w in warnings)
    assert not any("concurrent" in w for w in warnings)  # a Tasker key accepted for compatibility
    assert len(warnings) == 2
    assert all("\n" not in w for w in warnings)


# --- environments ---------------------------------------------------------------------------------

ENV_TEMPLATE = f"""
name: notify
default_dependent_system: mailer
step_templates:
  - name: a
    handler_class: {OK}
    handler_config:
      url: http://localhost:8000
      timeout_seconds: 5
      headers: {{accept: json, region: local}}
  - name: b
    depends_on_step: a
    handler_class: {OK}
environments:
  production:
    default_dependent_system: mailer_prod
    step_templates:
      - name: a
        handler_config:
          url: https://mail.example.com
          headers: {{region: eu}}
        default_retry_limit: 7
  staging:
    step_templates:
      - name: b
        handler_config: {{url: https://staging.example.com}}
"""


def test_environment_block_selected_by_tasker_env(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(ENV_TEMPLATE)
    base = load_file(path)  # TASKER_ENV unset: development, which has no block
    assert base.step("a").handler_config == {
        "url": "http://localhost:8000",
        "timeout_seconds": 5,
        "headers": {"accept": "json", "region": "local"},
    }
    assert base.default_dependent_system == "mailer"
    assert base.step("a").default_retry_limit == 3

    monkeypatch.setenv("TASKER_ENV", "production")
    prod = load_file(path)
    assert prod.step("a").handler_config == {
        "url": "https://mail.example.com",
        "timeout_seconds": 5,
        "headers": {"accept": "json", "region": "eu"},
    }
    assert prod.step("a").default_retry_limit == 7
    assert prod.step("a").handler_class == OK  # untouched keys survive the merge
    assert prod.step("b").handler_config == {}
    assert prod.default_dependent_system == "mailer_prod"
    assert "environments" not in prod.snapshot()

    monkeypatch.setenv("TASKER_ENV", "staging")
    staging = load_file(path)
    assert staging.step("b").handler_config == {"url": "https://staging.example.com"}
    assert staging.step("a").handler_config == base.step("a").handler_config

    # An explicit environment wins over TASKER_ENV.
    assert load_file(path, environment="production") == prod


def test_environment_override_for_unknown_step_is_refused(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging_b = "      - name: b\n        handler_config: {url"
    path = write(ENV_TEMPLATE.replace(staging_b, staging_b.replace("name: b", "name: zz")))
    load_file(path)  # the broken block is not selected
    monkeypatch.setenv("TASKER_ENV", "staging")
    refused(path, "environments.staging", "'zz'", "a, b")


def test_environment_override_is_validated_after_merging(write: Write) -> None:
    path = write(
        two_steps(
            top=(
                "environments:\n  production:\n    step_templates:\n"
                "      - name: b\n        default_retry_limit: 0\n"
            )
        )
    )
    load_file(path)
    refused(path, "step 'b'", "default_retry_limit", environment="production")


@pytest.mark.parametrize(
    "block",
    [
        "environments: 3\n",
        "environments:\n  production: [1]\n",
        "environments:\n  production:\n    step_templates: 5\n",
        "environments:\n  production:\n    step_templates:\n      - handler_config: {}\n",
        "environments:\n  production:\n    step_templates:\n      - name: [a]\n",
    ],
)
def test_malformed_environment_blocks(write: Write, block: str) -> None:
    refused(write(two_steps(top=block)), "environments", environment="production")


# --- ${VAR} expansion -----------------------------------------------------------------------------


def test_variables_are_expanded_in_handler_config(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKER_UT_HOST", "pay.example.com")
    monkeypatch.setenv("TASKER_UT_TIMEOUT", "2.5")
    monkeypatch.setenv("TASKER_UT_RETRIES", "4")
    monkeypatch.setenv("TASKER_UT_FLAG", "true")
    monkeypatch.setenv("TASKER_UT_ACCOUNT", "0123")
    monkeypatch.setenv("TASKER_UT_WORD", "on")
    monkeypatch.setenv("TASKER_UT_SECRET", "#s3cret")
    monkeypatch.delenv("TASKER_UT_UNSET", raising=False)
    path = write(
        two_steps(
            top="description: ${TASKER_UT_HOST}\n",
            extra_a=(
                "    handler_config:\n"
                "      url: https://${TASKER_UT_HOST}/v1?x=${TASKER_UT_UNSET:-fallback}\n"
                "      timeout_seconds: ${TASKER_UT_TIMEOUT}\n"
                "      retries: ${TASKER_UT_RETRIES}\n"
                "      sandbox: ${TASKER_UT_FLAG}\n"
                "      account: ${TASKER_UT_ACCOUNT}\n"
                "      mode: ${TASKER_UT_WORD}\n"
                "      secret: ${TASKER_UT_SECRET}\n"
                "      region: ${TASKER_UT_UNSET:-eu-west-1}\n"
                "      pool: ${TASKER_UT_UNSET:-10}\n"
                "      empty: ${TASKER_UT_UNSET:-}\n"
                "      nested: {list: ['${TASKER_UT_HOST}', '${TASKER_UT_RETRIES}']}\n"
            ),
        )
    )
    cfg = load_file(path).step("a").handler_config
    assert cfg["url"] == "https://pay.example.com/v1?x=fallback"
    assert cfg["timeout_seconds"] == 2.5 and isinstance(cfg["timeout_seconds"], float)
    assert cfg["retries"] == 4 and isinstance(cfg["retries"], int)
    assert cfg["sandbox"] is True
    assert cfg["account"] == "0123"  # not an octal number
    assert cfg["mode"] == "on"  # not YAML 1.1's boolean
    assert cfg["secret"] == "#s3cret"  # not a comment
    assert cfg["region"] == "eu-west-1"
    assert cfg["pool"] == 10
    assert cfg["empty"] == ""
    assert cfg["nested"] == {"list": ["pay.example.com", 4]}
    assert load_file(path).description == "${TASKER_UT_HOST}"  # only handler_config is expanded


def test_expanded_timeout_is_validated(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKER_UT_TIMEOUT", "-3")
    path = write(
        two_steps(extra_b="    handler_config:\n      timeout_seconds: ${TASKER_UT_TIMEOUT}\n")
    )
    refused(path, "step 'b'", "timeout_seconds")
    monkeypatch.setenv("TASKER_UT_TIMEOUT", "30")
    assert load_file(path).step("b").timeout_seconds == 30


def test_missing_variable_without_default_is_refused(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKER_UT_NOT_SET", raising=False)
    path = write(
        two_steps(extra_b="    handler_config:\n      url: http://${TASKER_UT_NOT_SET}/x\n")
    )
    refused(path, "step 'b'", "TASKER_UT_NOT_SET", "${TASKER_UT_NOT_SET:-")


def test_variables_expand_after_the_environment_merge(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKER_UT_PROD_URL", "https://prod.example.com")
    path = write(
        two_steps(
            top=(
                "environments:\n  production:\n    step_templates:\n"
                "      - name: a\n        handler_config: {url: '${TASKER_UT_PROD_URL}'}\n"
            )
        )
    )
    assert load_file(path, environment="production").step("a").handler_config == {
        "url": "https://prod.example.com"
    }


# --- directories ----------------------------------------------------------------------------------


def test_loading_a_directory(tmp_path: Path, write: Write) -> None:
    write(two_steps().replace("name: minimal", "name: first"), "dir/one.yaml")
    write(two_steps().replace("name: minimal", "name: second"), "dir/nested/two.yml")
    write("not: a template", "dir/notes.txt")
    write("garbage: [", "dir/README.md")
    loaded = load_path(tmp_path / "dir")
    assert sorted(t.name for t in loaded) == ["first", "second"]
    assert {Path(t.source or "").name for t in loaded} == {"one.yaml", "two.yml"}
    files = template_files(tmp_path / "dir")
    assert files == sorted(files) and [p.name for p in files] == [
        "two.yml",
        "one.yaml",
    ]  # stable: by path
    assert [t.name for t in load_path(tmp_path / "dir" / "one.yaml")] == ["first"]


def test_a_bad_file_in_a_directory_is_named(tmp_path: Path, write: Write) -> None:
    write(two_steps(), "dir/good.yaml")
    bad = write("name: t\nstep_templates: []\n", "dir/bad.yaml")
    with pytest.raises(TemplateError) as info:
        load_path(tmp_path / "dir")
    assert str(bad) in str(info.value)


def test_empty_directory_loads_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert load_path(tmp_path / "empty") == []


# --- property: no input crashes the loader --------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats()
    | st.text("ab${}:-_ 1\x00", max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("abn", max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
step_names = st.sampled_from(["a", "b", "c", "bad name", ""])
steps = st.fixed_dictionaries(
    {
        "name": step_names | json_values,
        "handler_class": st.sampled_from([OK, NOT_HANDLER]) | json_values,
    },
    optional={
        k: step_names if k.startswith("depends") else json_values
        for k in sorted(STEP_KEYS - {"name", "handler_class"})
    },
)
templates = st.fixed_dictionaries(
    {
        "name": st.just("t") | json_values,
        "step_templates": st.lists(steps, max_size=4) | json_values,
    },
    optional={
        **{
            k: json_values
            for k in sorted(TOP_LEVEL_KEYS - {"name", "step_templates", "environments"})
        },
        "environments": (
            st.dictionaries(
                st.sampled_from(["development", "production"]),
                st.fixed_dictionaries(
                    {}, optional={"step_templates": st.lists(steps, max_size=2) | json_values}
                )
                | json_values,
            )
            | json_values
        ),
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(templates | json_values)
def test_any_data_loads_or_is_refused_in_one_line(data: Any) -> None:
    try:
        t = parse_template(data, source="fuzz.yaml", environment="development")
    except TemplateError as exc:
        msg = str(exc)
        assert msg.startswith("fuzz.yaml"), msg
        assert "\n" not in msg, msg
        return
    assert t.step_templates
    assert TaskTemplate.from_snapshot(t.snapshot()) == t


# --- numbers: NaN, Infinity, booleans and absurd magnitudes are refused ---------------------------


@pytest.mark.parametrize(
    ("extra_b", "needles"),
    [
        ("    handler_config:\n      timeout_seconds: .nan\n", ("timeout_seconds", "finite")),
        ("    handler_config:\n      timeout_seconds: .inf\n", ("timeout_seconds", "finite")),
        (
            "    handler_config:\n      timeout_seconds: 1.0e+300\n",
            ("timeout_seconds", "out of range"),
        ),
        ("    handler_config:\n      timeout_seconds: 604801\n", ("timeout_seconds", "604800")),
        ("    default_retry_limit: true\n", ("default_retry_limit", "not a number")),
        ("    default_retry_limit: .nan\n", ("default_retry_limit", "finite")),
        ("    default_retry_limit: 1.0e+300\n", ("default_retry_limit", "out of range")),
        ("    retry:\n      jitter: .nan\n", ("jitter", "finite")),
        (
            "    retry:\n      backoff_base_seconds: true\n",
            ("backoff_base_seconds", "not a number"),
        ),
        (
            "    retry:\n      max_server_delay_seconds: 1.0e+300\n",
            ("max_server_delay_seconds", "out of range"),
        ),
        ("    handler_config:\n      limit: .nan\n", ("handler_config.limit", "finite")),
        ("    handler_config:\n      nested: [1, -.inf]\n", ("handler_config.nested[1]", "finite")),
        ('    handler_config:\n      url: "a\\0b"\n', ("handler_config.url", "NUL")),
    ],
)
def test_non_finite_boolean_and_absurd_numbers_in_a_step_are_refused(
    write: Write, extra_b: str, needles: tuple[str, ...]
) -> None:
    refused(write(two_steps(extra_b=extra_b)), "step 'b'", *needles)


@pytest.mark.parametrize(
    ("top", "needles"),
    [
        (
            "dependent_systems:\n  pay:\n    cooldown_seconds: .nan\n",
            ("cooldown_seconds", "finite"),
        ),
        (
            "dependent_systems:\n  pay:\n    cooldown_seconds: .inf\n",
            ("cooldown_seconds", "finite"),
        ),
        (
            "dependent_systems:\n  pay:\n    cooldown_seconds: 1.0e+300\n",
            ("cooldown_seconds", "out of range"),
        ),
        ("dependent_systems:\n  pay:\n    max_cooldown_seconds: true\n", ("max_cooldown_seconds",)),
        (
            "dependent_systems:\n  pay:\n    failure_threshold: true\n",
            ("failure_threshold", "not a number"),
        ),
        ("dependent_systems:\n  pay:\n    max_in_flight: 2.5\n", ("max_in_flight", "whole number")),
        ("namespace_max_in_flight: true\n", ("namespace_max_in_flight", "not a number")),
        ("retry:\n  backoff_max_seconds: .inf\n", ("retry", "finite")),
    ],
)
def test_non_finite_boolean_and_absurd_numbers_in_a_template_are_refused(
    write: Write, top: str, needles: tuple[str, ...]
) -> None:
    refused(write(two_steps(top=top)), *needles)


def test_numbers_in_range_still_load(write: Write) -> None:
    top = "dependent_systems:\n  pay:\n    cooldown_seconds: 2\n    failure_threshold: 3.0\n"
    t = load_file(
        write(
            two_steps(
                top=top,
                extra_b=(
                    "    default_retry_limit: 5.0\n"
                    "    handler_config:\n      timeout_seconds: 604800\n"
                ),
            )
        )
    )
    assert t.dependent_systems["pay"].cooldown_seconds == 2.0
    assert t.dependent_systems["pay"].failure_threshold == 3
    assert t.step("b").default_retry_limit == 5 and t.step("b").timeout_seconds == 604800


def test_an_expanded_variable_that_overflows_to_infinity_stays_text(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKER_UT_HUGE", "1e999")
    t = load_file(write(two_steps(extra_b="    handler_config:\n      limit: ${TASKER_UT_HUGE}\n")))
    assert t.step("b").handler_config["limit"] == "1e999"


# --- depth: any chain length loads; nesting is bounded --------------------------------------------


def test_a_chain_of_5000_steps_declared_child_first_loads(write: Write) -> None:
    lines = ["name: long_chain", "step_templates:"]
    for i in reversed(range(5000)):
        lines += [f"  - name: s{i}", f"    handler_class: {OK}"]
        if i:
            lines.append(f"    depends_on_step: s{i - 1}")
    t = load_file(write("\n".join(lines) + "\n"))
    assert len(t.step_templates) == 5000
    assert t.step("s4999").parents == ["s4998"]
    assert TaskTemplate.from_snapshot(t.snapshot()) == t


def test_deeply_nested_yaml_is_refused_in_one_line(write: Write) -> None:
    deep = "[" * 5000 + "]" * 5000
    msg = refused(
        write(two_steps(extra_b=f"    handler_config:\n      x: {deep}\n")), "nested more than 64"
    )
    assert "line 9" in msg


def test_deeply_nested_data_is_refused_by_parse_template() -> None:
    value: Any = 1
    for _ in range(5000):
        value = {"x": value}
    data = {
        "name": "t",
        "step_templates": [{"name": "a", "handler_class": OK, "handler_config": value}],
    }
    with pytest.raises(TemplateError, match=r"step 'a': handler_config(\.x)+: nested more than 64"):
        parse_template(data, source="deep.yaml")


# --- YAML aliases: small reuse is fine, a bomb is refused at once ---------------------------------


def test_small_anchors_aliases_and_merge_keys_load(write: Write) -> None:
    text = f"""
name: shared
step_templates:
  - name: a
    handler_class: {OK}
    retry: &fast
      backoff_base_seconds: 0.5
      backoff_max_seconds: 2
    handler_config: &base
      url: https://pay.example.com
      timeout_seconds: 3
  - name: b
    depends_on_step: a
    handler_class: {OK}
    retry: *fast
    handler_config:
      <<: *base
      timeout_seconds: 9
"""
    t = load_file(write(text))
    assert t.step("b").retry == t.step("a").retry
    assert t.step("b").handler_config == {"url": "https://pay.example.com", "timeout_seconds": 9}


def test_a_billion_laughs_alias_bomb_is_refused_naming_the_line(write: Write) -> None:
    levels = ['    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        levels.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    text = two_steps(extra_b="    handler_config:\n" + "\n".join(levels) + "\n")
    msg = refused(write(text), "aliases expand to more than 10000", "line ")
    assert "alias *l" in msg


def test_a_recursive_alias_is_refused(write: Write) -> None:
    text = two_steps(extra_b="    handler_config:\n      loop: &me [1, *me]\n")
    refused(write(text), "recursive alias", "line 9")


# --- schema patterns that backtrack exponentially are refused -------------------------------------


@pytest.mark.parametrize(
    ("schema", "path", "pattern"),
    [
        (
            "{type: object, properties: {email: {type: string, pattern: '(a+)+$'}}}",
            "schema/properties/email/pattern",
            "(a+)+$",
        ),
        (
            "{type: object, properties: {xs: {type: array, items: {pattern: '(a|a)*'}}}}",
            "schema/properties/xs/items/pattern",
            "(a|a)*",
        ),
        (
            "{type: object, patternProperties: {'(.*a){20}': {type: string}}}",
            "schema/patternProperties",
            "(.*a){20}",
        ),
        (
            "{allOf: [{properties: {n: {pattern: '^(\\w+\\s?)+$'}}}]}",
            "schema/allOf/0/properties/n/pattern",
            "^(\\w+\\s?)+$",
        ),
    ],
)
def test_a_schema_with_a_catastrophic_pattern_is_refused(
    write: Write, schema: str, path: str, pattern: str
) -> None:
    refused(write(two_steps(top=f"schema: {schema}\n")), path, f"'{pattern}'", "exponential")


def test_a_schema_with_safe_patterns_loads(write: Write) -> None:
    schema = (
        "{type: object, properties: {slug: {type: string, pattern: '^[a-z]+(-[a-z]+)*$'}, "
        "ip: {pattern: '^(\\d{1,3}\\.){3}\\d{1,3}$'}, const_is_data: {const: {pattern: '(a+)+'}}}, "
        "patternProperties: {'^x-[a-z]+$': {type: string}}}"
    )
    t = load_file(write(two_steps(top=f"schema: {schema}\n")))
    assert t.context_schema is not None
