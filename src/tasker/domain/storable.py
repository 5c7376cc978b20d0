"""What a handler hands back, made storable before it reaches the database.

`json.dumps` accepts things no store keeps: a NUL character (PostgreSQL's jsonb refuses `\\u0000`),
a lone surrogate (not Unicode; jsonb refuses it and SQLite stores text no response can encode), NaN
and Infinity (not JSON), a dict nested in itself. Met inside the completion transaction, any of them
used to roll back every outcome of the cycle and kill the worker. They are met here instead, in pure
code:

- results are a step's promise to its children, so a result that cannot be stored as it is fails the
  step with an `InvalidResultError` naming the path (`results.items[3].price: is nan ...`);
- error messages, error context and event payloads are diagnostics, so they are escaped, never
  refused: a NUL becomes the four characters `\\x00`, a lone surrogate `\\udc80`, NaN the string
  `"NaN"`, and a message longer than `MAX_MESSAGE_CHARS` is cut with its full size noted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Error messages (and a failure's `context` once encoded) longer than this are cut; the note that
#: replaces the rest says how long the whole was.
MAX_MESSAGE_CHARS = 8_192
#: JSON nested deeper than this is refused in results and cut in diagnostics (a self-containing dict
#: would otherwise never end).
MAX_DEPTH = 100
#: Integers in diagnostics beyond this many bits (about 1,000 digits) are replaced by a note.
MAX_INT_BITS = 3_322
_REPR_CHARS = 200


@dataclass(frozen=True)
class Unstorable:
    """Where a value cannot be stored, and why, in words a handler author can act on."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return (
            "contains a NUL character (\\x00), which PostgreSQL cannot store; remove or escape it"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        return (
            f"contains a lone surrogate (\\u{ord(bad):04x}), which is not valid Unicode; decode "
            "bytes with errors='replace' or send them base64-encoded"
        )
    return None


def _scalar_problem(value: object) -> str | None:
    """Why a non-container value cannot be stored, or None if it can."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, int):
        try:
            str(value)
        except (
            ValueError
        ):  # past Python's int-to-text limit (4,300 digits): json.dumps refuses it too
            return (
                f"is an integer of about {int(value.bit_length() * 0.30103):,} digits; send it as a"
                " string"
            )
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"is {value!r}, which is not JSON; use null or a string"
        return None
    return (
        f"is a {type(value).__name__}, which is not JSON; return only dict, list, str, int, float, "
        "bool or None"
    )


def _child(path: str, key: object) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    name = str(key)
    return f"{path}.{name}" if name.isidentifier() else f"{path}[{name!r}]"


def find_unstorable(value: object, root: str = "results") -> Unstorable | None:
    """The first place in `value` that no store can keep as JSON, or None when all of it can be
    kept.

    Storable means: `json.dumps` encodes it (no NaN, no foreign objects, no cycles), the text is
    valid UTF-8 (no lone surrogates) and holds no NUL. That check runs at C speed on every step's
    results; only when it fails is the value walked to name the place.
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        pass
    else:
        if "\\u0000" not in text:
            return None
    return _locate(value, root)


def _locate(value: object, root: str) -> Unstorable | None:
    """Walk `value` to the first thing no store keeps. Iterative, so depth costs no stack."""
    stack: list[tuple[str, object, int]] = [(root, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, Mapping):
            if depth >= MAX_DEPTH:
                return Unstorable(path, f"is nested deeper than {MAX_DEPTH} levels")
            for key, child in reversed(list(item.items())):
                if isinstance(key, str):
                    problem = _text_problem(key)
                elif key is None or isinstance(key, (int, float, bool)):
                    problem = _scalar_problem(key)
                else:
                    problem = f"is a key of type {type(key).__name__}; JSON keys are strings"
                if problem:
                    return Unstorable(_child(path, key), f"(the key) {problem}")
                stack.append((_child(path, key), child, depth + 1))
        elif isinstance(item, (list, tuple)):
            if depth >= MAX_DEPTH:
                return Unstorable(path, f"is nested deeper than {MAX_DEPTH} levels")
            for index in range(len(item) - 1, -1, -1):
                stack.append((_child(path, index), item[index], depth + 1))
        else:
            problem = _scalar_problem(item)
            if problem:
                return Unstorable(path, problem)
    return None


def storable_text(text: object, limit: int | None = None) -> str:
    """`text` as a string any store keeps and any client can decode; cut to `limit` characters if
    given.

    Never raises: an object whose `__str__` fails is described by its type instead.
    """
    if not isinstance(text, str):
        text = safe_str(text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]} ... [truncated: {len(text):,} characters in all]"
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def safe_str(value: object) -> str:
    """`str(value)`, or a description of it when its `__str__` raises (or returns something odd)."""
    try:
        text = str(value)
        if isinstance(text, str):
            return text
    except BaseException as exc:  # a broken __str__ may raise anything, SystemExit included
        return f"<{type(value).__name__} whose str() raised {type(exc).__name__}>"
    return f"<{type(value).__name__} whose str() returned a {type(text).__name__}>"


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except BaseException as exc:
        return f"<{type(value).__name__} whose repr() raised {type(exc).__name__}>"
    return text if isinstance(text, str) else f"<{type(value).__name__}>"


def _storable_key(key: object) -> str:
    """A mapping key as the string `json.dumps` would make of it (or a repr for foreign objects)."""
    if isinstance(key, str):
        return storable_text(key, _REPR_CHARS)
    if key is None or isinstance(key, (bool, int, float)):
        return storable_text(json_key(key))
    return storable_text(_safe_repr(key), _REPR_CHARS)


def json_key(key: bool | float | None) -> str:
    """How `json.dumps` spells a non-string key."""
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return repr(key) if isinstance(key, float) else str(key)


def storable(value: object, depth: int = 0) -> Any:
    """A copy of `value` that every store keeps: text escaped, non-finite numbers and foreign
    objects turned into strings, keys made strings, nesting past `MAX_DEPTH` cut. For diagnostics
    only.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return storable_text(value, MAX_MESSAGE_CHARS)
    if isinstance(value, int):
        return (
            value if value.bit_length() <= MAX_INT_BITS else f"<int of {value.bit_length()} bits>"
        )
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth >= MAX_DEPTH and isinstance(value, (Mapping, list, tuple)):
        return f"<cut: nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, Mapping):
        return {_storable_key(k): storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v, depth + 1) for v in value]
    return storable_text(_safe_repr(value), _REPR_CHARS)
