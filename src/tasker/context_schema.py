"""Validate a task context against its template's JSON Schema (Draft 2020-12) and fill in defaults.

Defaults are written into the context that is stored, so a handler reads the same value the schema
promised; every violation is reported with its JSON path rather than the first one only.
"""

from __future__ import annotations

import copy
from typing import Any

from jsonschema import Draft202012Validator

from tasker.domain.errors import ContextValidationError, TaskerInputError
from tasker.templates.regex_safety import refusal, schema_patterns

_validators: dict[int, Draft202012Validator] = {}

#: How a value that fails a `format` is described: "'nope' is not a valid email", with an example
#: where the format has a shape a user may not guess.
FORMAT_NAMES = {
    "email": "email",
    "idn-email": "email",
    "date-time": "date-time (RFC 3339, like 2024-05-01T12:30:00Z)",
    "date": "date (like 2024-05-01)",
    "time": "time (like 12:30:00Z)",
    "uri": "URI (like https://example.com/path)",
    "uri-reference": "URI reference",
    "ipv4": "IPv4 address",
    "ipv6": "IPv6 address",
    "hostname": "hostname",
    "uuid": "UUID",
    "regex": "regular expression",
}


def _validator(template_key: str, schema: dict[str, Any]) -> Draft202012Validator:
    """The cached validator of a schema, built once its patterns are known not to backtrack for
    minutes.

    Templates loaded from files are checked by the loader already; this covers one built in code and
    handed to `engine.templates.register`, whose patterns would otherwise run on API callers'
    strings.
    """
    key = id(schema)
    v = _validators.get(key)
    if v is None or v.schema is not schema:
        for path, pattern in schema_patterns(schema):
            why = refusal(pattern)
            if why:
                raise TaskerInputError(
                    f"the schema of {template_key} is refused at {path or '/'}: pattern"
                    f" '{pattern[:80]}' {why}; fix: correct the template's schema (see"
                    " docs/templates.md)"
                )
        v = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        _validators[key] = v
    return v


def apply_defaults(schema: Any, instance: Any) -> Any:
    """Fill `default`s of object properties, recursively, where the instance leaves them out."""
    if not isinstance(schema, dict):
        return instance
    if isinstance(instance, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            for key, sub in props.items():
                if not isinstance(sub, dict):
                    continue
                if key not in instance and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
                if key in instance:
                    instance[key] = apply_defaults(sub, instance[key])
        for combinator in ("allOf",):
            for sub in schema.get(combinator) or []:
                instance = apply_defaults(sub, instance)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in instance]
    return instance


def validate_context(
    template_key: str, schema: dict[str, Any] | None, context: Any
) -> dict[str, Any]:
    """Return the context with defaults applied, or raise `ContextValidationError` listing every
    violation."""
    if not isinstance(context, dict):
        kind = type(context).__name__
        raise ContextValidationError(
            template_key, [("$", f"the context must be a JSON object, not {kind}")]
        )
    filled = apply_defaults(schema, copy.deepcopy(context)) if schema else copy.deepcopy(context)
    if not schema:
        return filled
    validator = _validator(template_key, schema)
    try:
        errors = sorted(
            validator.iter_errors(filled),
            key=lambda e: (list(map(str, e.absolute_path)), e.message),
        )
    except (
        Exception
    ) as exc:  # e.g. a $ref the schema cannot resolve: the template is at fault, not the context
        raise TaskerInputError(
            f"the schema of {template_key} cannot be applied ({type(exc).__name__}: {exc}); fix:"
            " correct the template's schema"
        ) from None
    if errors:
        raise ContextValidationError(template_key, [(e.json_path, _message(e)) for e in errors])
    return filled


def _message(error: Any) -> str:
    """jsonschema's message, except for formats, where it says "'x' is not a 'email'"."""
    if error.validator == "format" and isinstance(error.validator_value, str):
        shown = repr(error.instance)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        name = FORMAT_NAMES.get(error.validator_value, error.validator_value)
        return f"{shown} is not a valid {name}"
    return str(error.message)
