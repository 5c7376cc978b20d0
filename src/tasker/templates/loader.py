"""Load task templates from YAML files and refuse bad ones with one line that says where and how to
fix.

Loading is where trust is decided: `handler_class` import paths are resolved here, from files the
operator put on disk, never from API input. Environment blocks are merged and `${VAR}` references
are expanded before validation, so what is validated is what runs.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ValidationError

from tasker.domain.errors import TemplateError
from tasker.domain.graph import GraphError, check_graph
from tasker.domain.templates import StepTemplate, TaskTemplate
from tasker.handlers.base import StepHandler, TaskHandler
from tasker.templates import regex_safety, safe_yaml

TOP_LEVEL_KEYS = {
    "name",
    "namespace_name",
    "version",
    "description",
    "default_dependent_system",
    "schema",
    "task_handler_class",
    "custom_events",
    "step_templates",
    "environments",
    "retry",
    "dependent_systems",
    "namespace_max_in_flight",
    "identity",
    "run_inline",
    "on_failure",
    "timeout_seconds",
    "schedules",
    "retention",
    "priority",
    "concurrency_key",
    "max_in_flight_per_key",
    # Accepted from Tasker YAML for compatibility; they have no effect here.
    "module_namespace",
    "concurrent",
    "named_steps",
    "handler_config",
    "monitoring",
}
STEP_KEYS = {
    "name",
    "description",
    "depends_on_step",
    "depends_on_steps",
    "handler_class",
    "default_retryable",
    "default_retry_limit",
    "skippable",
    "dependent_system",
    "handler_config",
    "custom_events",
    "retry",
    "run_inline",
    "when",
    "join",
    "foreach",
    "max_parallel",
    "max_items",
    "task",
    "context",
    "compensation",
    "on_failure",
    "sleep",
    "wait_for",
    "on_timeout",
    "timeout_seconds",
    "signals",
}
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
YAML_SUFFIXES = (".yaml", ".yml")


def current_environment() -> str:
    return os.environ.get("TASKER_ENV", "development")


def template_files(path: str | Path) -> list[Path]:
    """The YAML files under `path` (itself if a file), in a stable order."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.suffix in YAML_SUFFIXES and f.is_file())
    raise TemplateError(
        f"{p}: no such file or directory; fix: pass a YAML file or a directory of them"
    )


def load_path(
    path: str | Path, *, environment: str | None = None, resolve_handlers: bool = True
) -> list[TaskTemplate]:
    """Every template in a file or directory; the first bad file stops loading with its one-line
    reason."""
    return [
        load_file(f, environment=environment, resolve_handlers=resolve_handlers)
        for f in template_files(path)
    ]


def load_file(
    path: str | Path, *, environment: str | None = None, resolve_handlers: bool = True
) -> TaskTemplate:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(
            f"{p}: cannot read the file ({exc.strerror}); fix: check the path"
        ) from None
    except UnicodeDecodeError as exc:
        raise TemplateError(
            f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); fix: save the file as UTF-8"
        ) from None
    try:
        data = safe_yaml.load(text)
    except safe_yaml.TemplateYamlError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TemplateError(
            f"{p}{where}: {exc.problem}; fix: {exc.note} (see docs/templates.md)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TemplateError(
            f"{p}: invalid YAML{where}: {problem}; fix: correct the YAML syntax"
        ) from None
    return parse_template(
        data, source=str(p), environment=environment, resolve_handlers=resolve_handlers
    )


def parse_template(
    data: Any,
    *,
    source: str = "<template>",
    environment: str | None = None,
    resolve_handlers: bool = True,
) -> TaskTemplate:
    """Validate a template given as plain data (what a YAML file holds)."""
    if not isinstance(data, dict):
        raise TemplateError(
            f"{source}: a template must be a mapping with name and step_templates; fix: see"
            " docs/templates.md"
        )
    _check_values(data, source)
    warnings = _unknown_keys(data, source)
    data = _apply_environment(data, environment or current_environment(), source)
    data.pop("environments", None)
    data = _expand_vars(data, source)
    try:
        template = TaskTemplate.model_validate(data)
    except ValidationError as exc:
        raise TemplateError(_pydantic_message(exc, data, source)) from None
    try:
        check_graph([(s.name, s.parents) for s in template.step_templates])
        template.gated_steps()  # compiles the conditions, checks what they read
    except GraphError as exc:
        raise TemplateError(f"{source}: step '{exc.step}': {exc}") from None
    if template.context_schema is not None:
        _check_schema(template.context_schema, source)
    for step in template.step_templates:
        _check_retry(template, step, source)
    if resolve_handlers:
        for step in template.step_templates:
            if step.handler_class is not None:
                resolve_step_handler(step.handler_class, where=f"{source}: step '{step.name}'")
            if step.compensation is not None:
                resolve_step_handler(
                    step.compensation.handler_class,
                    where=f"{source}: step '{step.name}': compensation",
                )
        if template.task_handler_class:
            resolve_task_handler(template.task_handler_class, where=f"{source}: task_handler_class")
    template._source = source
    template._warnings = warnings
    return template


def import_object(path: str) -> Any:
    """Import `pkg.module:Attr` or `pkg.module.Attr`."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"'{path}' is not an import path like 'package.module:ClassName'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_step_handler(path: str, *, where: str) -> type:
    cls = _resolve(path, where)
    if not isinstance(cls, type) or not issubclass(cls, StepHandler):
        raise TemplateError(
            f"{where}: handler_class '{path}' is not a StepHandler subclass; fix: subclass"
            " tasker.StepHandler"
        )
    return cls


def resolve_task_handler(path: str, *, where: str) -> type:
    cls = _resolve(path, where)
    if not isinstance(cls, type) or not issubclass(cls, TaskHandler):
        raise TemplateError(
            f"{where}: '{path}' is not a TaskHandler subclass; fix: subclass tasker.TaskHandler"
        )
    return cls


def _resolve(path: str, where: str) -> Any:
    try:
        return import_object(path)
    except (
        Exception
    ) as exc:  # the module may fail in any way while importing: a SyntaxError, a bad relative path
        reason = " ".join(str(exc).split())
        if isinstance(exc, ModuleNotFoundError):
            fix = f"check the import path, and that its package is on sys.path ({_search_path()})"
        else:
            fix = (
                "check the import path, and run the module by hand (python -c 'import ...') to see"
                " its error"
            )
        raise TemplateError(
            f"{where}: cannot import '{path}' ({type(exc).__name__}: {reason}); fix: {fix}"
        ) from None


def _search_path(shown: int = 3) -> str:
    """Where Python looks first, as the user can act on it: the current directory is only one
    entry."""
    entries = [repr(entry or os.getcwd()) for entry in sys.path[:shown]]
    more = len(sys.path) - shown
    return (
        "first entries "
        + ", ".join(entries)
        + (f" and {more} more" if more > 0 else "")
        + "; add the project's folder to PYTHONPATH or install its package"
    )


def _unknown_keys(data: Mapping[str, Any], source: str) -> list[str]:
    found = [f"{source}: unknown key '{k}' ignored" for k in data if k not in TOP_LEVEL_KEYS]
    steps = data.get("step_templates")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict):
            label = step.get("name", f"#{i + 1}")
            found += [
                f"{source}: step '{label}': unknown key '{k}' ignored"
                for k in step
                if k not in STEP_KEYS
            ]
    return found


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


def _apply_environment(data: dict[str, Any], env: str, source: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    envs = data.get("environments") or {}
    if not isinstance(envs, dict):
        raise TemplateError(
            f"{source}: 'environments' must map environment names to overrides; fix: write "
            "'environments: {production: {step_templates: [...]}}'"
        )
    block = envs.get(env)
    if not block:
        return data
    if not isinstance(block, dict):
        raise TemplateError(
            f"{source}: environments.{env} must be a mapping; fix: give it a step_templates list"
        )
    overrides = block.get("step_templates") or []
    steps = data.get("step_templates") or []
    if not isinstance(overrides, list):
        raise TemplateError(
            f"{source}: environments.{env}.step_templates must be a list; fix: list step overrides"
            " by 'name'"
        )
    if not isinstance(steps, list):
        return data  # the base step_templates is malformed; its validation says so
    by_name = {
        s["name"]: i
        for i, s in enumerate(steps)
        if isinstance(s, dict) and isinstance(s.get("name"), str)
    }
    for o in overrides:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise TemplateError(
                f"{source}: environments.{env}.step_templates entries need a 'name'; fix: add the"
                " name of the step each entry overrides"
            )
        if o["name"] not in by_name:
            raise TemplateError(
                f"{source}: environments.{env}: override for unknown step '{o['name']}'; fix: use"
                f" one of {', '.join(str(n) for n in by_name)}"
            )
        i = by_name[o["name"]]
        steps[i] = _deep_merge(steps[i], o)
    for k, v in block.items():
        if k != "step_templates":
            data[k] = _deep_merge(data.get(k), v) if k in data else copy.deepcopy(v)
    return data


def _expand_vars(data: dict[str, Any], source: str) -> dict[str, Any]:
    def expand(value: Any, where: str) -> Any:
        if isinstance(value, str):

            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if name in os.environ:
                    return os.environ[name]
                if default is not None:
                    return default
                raise TemplateError(
                    f"{source}: {where}: environment variable {name} is not set; fix: set it or"
                    f" write ${{{name}:-default}}"
                )

            whole = VAR.fullmatch(value)
            result = VAR.sub(sub, value)
            if whole:
                return _scalar(result)
            return result
        if isinstance(value, dict):
            return {k: expand(v, where) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, where) for v in value]
        return value

    steps = data.get("step_templates")
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and isinstance(step.get("handler_config"), dict):
            step["handler_config"] = expand(
                step["handler_config"], f"step '{step.get('name')}': handler_config"
            )
        if isinstance(step, dict) and isinstance(step.get("task"), str):
            # a deployment pins a sub-workflow's version: task: ns/name@${VERSION:-latest}
            step["task"] = expand(step["task"], f"step '{step.get('name')}': task")
        for key in ("timeout_seconds", "sleep"):
            # how long to wait, per deployment: timeout_seconds: ${CONFIRM_TIMEOUT:-2d}
            if isinstance(step, dict) and isinstance(step.get(key), str):
                step[key] = expand(step[key], f"step '{step.get('name')}': {key}")
    if isinstance(data.get("timeout_seconds"), str):
        data["timeout_seconds"] = expand(data["timeout_seconds"], "timeout_seconds")
    schedules = data.get("schedules")
    if isinstance(schedules, list):
        # a deployment's time zone, hour or context: timezone: ${REPORT_TZ:-Europe/Berlin}
        data["schedules"] = [expand(entry, f"schedules[{i}]") for i, entry in enumerate(schedules)]
    return data


def _scalar(text: str) -> Any:
    """A whole-value `${VAR}` keeps a number's or boolean's type, so `timeout_seconds: ${T}` stays a
    number.

    Only plain decimal numbers and true/false convert: YAML's own typing would turn an account
    number '0123' into 83, 'on' into True, '#secret' into None and '2024-01-01' into a date.
    """
    t = text.strip()
    if NUMBER.fullmatch(t):
        if t.lstrip("-").isdigit():
            return int(t)
        number = float(t)
        return number if math.isfinite(number) else text  # '1e999' would be infinity: keep the text
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return text


def _check_schema(schema: dict[str, Any], source: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise TemplateError(
            f"{source}: schema is not valid JSON Schema at {path}: {exc.message}; fix: correct the"
            " schema (Draft 2020-12)"
        ) from None
    for path, pattern in regex_safety.schema_patterns(schema):
        why = regex_safety.refusal(pattern)
        if why:
            shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
            raise TemplateError(
                f"{source}: schema{path}: pattern '{shown}' is refused: {why}, which can take"
                " exponential time on a context string; fix: remove the nested repetition, use a"
                " possessive quantifier or an atomic group, or validate the value in a step (see"
                " docs/templates.md)"
            )


#: Nesting levels of mappings and lists a template may hold (see safe_yaml.MAX_DEPTH).
MAX_DEPTH = safe_yaml.MAX_DEPTH


def _check_values(data: Any, source: str) -> None:
    """Refuse what no later step could store or walk: deep nesting, NaN/Infinity, NUL and lone
    surrogates.

    Runs before anything recursive (environment merging copies the data) and walks with an explicit
    stack. A template's values end up in its JSON snapshot, which PostgreSQL refuses with NaN, NUL
    or a lone surrogate inside, so creating a task from such a template would fail on one store
    only.
    """
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        where = path.removesuffix(": ") or "(template)"
        if depth > MAX_DEPTH:
            raise TemplateError(
                f"{source}: {where}: nested more than {MAX_DEPTH} levels deep; fix: flatten the"
                " value"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise TemplateError(
                f"{source}: {where}: {value!r} is not a finite number; fix: use a finite number"
            )
        if isinstance(value, str) and _unstorable(value):
            raise TemplateError(
                f"{source}: {where}: text holds a NUL character or a lone surrogate; fix: remove it"
            )
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and _unstorable(k):
                    raise TemplateError(
                        f"{source}: {where}: a key holds a NUL character or a lone surrogate; fix:"
                        " rename it"
                    )
                stack.append((_child(path, str(k)), v, depth + 1))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if path == "step_templates" and isinstance(v, dict):
                    label = (
                        f"step '{v['name']}': "
                        if isinstance(v.get("name"), str)
                        else f"step #{i + 1}: "
                    )
                    stack.append((label, v, depth + 1))
                else:
                    stack.append((f"{path}[{i}]", v, depth + 1))


def _child(path: str, key: str) -> str:
    """`a.b` below a field, `step 'x': b` directly below a step."""
    return f"{path}{key}" if not path or path.endswith(": ") else f"{path}.{key}"


def _unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_retry(template: TaskTemplate, step: StepTemplate, source: str) -> None:
    try:
        template.retry_policy(step)
    except ValueError as exc:
        raise TemplateError(
            f"{source}: step '{step.name}': retry: {exc}; fix: use finite, non-negative seconds"
            " with backoff_max_seconds >= backoff_base_seconds (template and step retry blocks are"
            " merged)"
        ) from None


def _pydantic_message(exc: ValidationError, data: Mapping[str, Any], source: str) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    where = source
    if loc and loc[0] == "step_templates" and len(loc) > 1 and isinstance(loc[1], int):
        steps = data.get("step_templates") or []
        step = steps[loc[1]] if loc[1] < len(steps) else {}
        label = (
            step.get("name") if isinstance(step, dict) and step.get("name") else f"#{loc[1] + 1}"
        )
        where += f": step '{label}'"
        loc = loc[2:]
    field = ".".join(str(p) for p in loc) or "(template)"
    msg = err["msg"].removeprefix("Value error, ")
    fix = _fix_for(field, err["type"])
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {field}: {msg}{extra}; fix: {fix}"


def _fix_for(field: str, kind: str) -> str:
    if kind == "missing":
        return f"add '{field}'"
    if field.endswith("default_retry_limit"):
        return "use a whole number of attempts between 1 and 1000"
    if "retry" in field:
        return "use non-negative seconds (at most 7 days), and a jitter between 0 and 1"
    if (
        field.startswith(("dependent_systems", "namespace_max_in_flight"))
        or "timeout_seconds" in field
    ):
        return "use a number in the range above (docs/templates.md lists every range)"
    if field == "version":
        return "use a semantic version like 1.0.0"
    if field == "retention":
        return (
            "map finished states (complete, error, cancelled, resolved_manually, compensated) to"
            " a duration like 30d or P90D, or to never"
        )
    if field == "step_templates":
        return "declare at least one step under step_templates"
    return "correct the value (see docs/templates.md)"


def describe(templates: Iterable[TaskTemplate]) -> list[str]:
    return [t.key for t in templates]
