"""JSON rendering that never fails on what is already stored.

A store may hold text or numbers that `json.dumps` cannot turn into strict UTF-8 JSON: a lone
surrogate kept by SQLite in a step result, a NaN or an infinity written by an older worker. Failing
to render would make `GET /tasks/{id}` answer 500 for as long as the row exists, so the response
class renders such values instead of raising: lone surrogates become U+FFFD (the Unicode replacement
character) and non-finite floats become `null`. The fast path is one `json.dumps`; the repair pass
only runs when it fails. New input never gets here in that state: the API refuses it
(schemas.check_json) and the worker sanitises results before storing them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.responses import JSONResponse

REPLACEMENT = "\ufffd"


def _clean_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def _clean(value: Any) -> Any:
    """A copy of `value` that strict JSON can carry (iterative: depth cannot exhaust the stack)."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]  # (item, container, key in container)
    while stack:
        item, parent, slot = stack.pop()
        if isinstance(item, str):
            parent[slot] = _clean_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            parent[slot] = None
        elif isinstance(item, dict):
            copy: dict[str, Any] = {}
            parent[slot] = copy
            for k, v in item.items():
                key = _clean_text(k) if isinstance(k, str) else k
                copy[key] = None
                stack.append((v, copy, key))
        elif isinstance(item, list | tuple):
            items: list[Any] = [None] * len(item)
            parent[slot] = items
            stack.extend((v, items, i) for i, v in enumerate(item))
        else:
            parent[slot] = item
    return root[0]


def dumps(value: Any, *, default: Any = None) -> str:
    """Strict JSON text of `value` (no NaN, valid Unicode), repairing what cannot be rendered."""
    try:
        text = json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=default
        )
        text.encode("utf-8")
        return text
    except (ValueError, UnicodeEncodeError):  # a non-finite float, or a lone surrogate
        return json.dumps(
            _clean(value),
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
            default=default,
        )


class SafeJSONResponse(JSONResponse):
    """The API's JSON response class: `dumps` instead of Starlette's failing render."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")
