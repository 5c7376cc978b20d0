"""Making handler output storable: results are checked (with the path of the first problem),
diagnostics are escaped; both never raise, whatever they are given."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tasker.domain.storable import (
    MAX_DEPTH,
    MAX_MESSAGE_CHARS,
    find_unstorable,
    safe_str,
    storable,
    storable_text,
)

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


def _strictly_storable(value: Any) -> bool:
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        return False
    return not any("\x00" in text for text in _strings(value))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [k for k in value if isinstance(k, str)] + [
            t for v in value.values() for t in _strings(v)
        ]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


@settings(max_examples=500)
@given(values)
def test_find_unstorable_agrees_with_a_strict_encoder(value: Any) -> None:
    problem = find_unstorable(value)
    assert (problem is None) == _strictly_storable(value), problem


@given(values)
def test_storable_always_gives_strict_json(value: Any) -> None:
    assert _strictly_storable(storable(value))


@given(any_text)
def test_storable_text_is_valid_unicode_without_nul(text: str) -> None:
    out = storable_text(text)
    out.encode("utf-8")
    assert "\x00" not in out


def test_the_text_of_an_escape_is_not_a_nul() -> None:
    assert find_unstorable({"raw": "a literal \\u0000 is six characters"}) is None


def test_paths_name_the_first_problem() -> None:
    assert (
        str(find_unstorable({"a": [1, {"b": math.nan}]}))
        == "results.a[1].b: is nan, which is not JSON; use null or a string"
    )
    assert "results['odd key'][0]" in str(find_unstorable({"odd key": ["\x00"]}))
    assert "(the key)" in str(find_unstorable({"\udc80": 1}))
    assert "results.big: is an integer" in str(find_unstorable({"big": 10**5000}))
    assert find_unstorable({"big": 10**2000}) is None  # long, but JSON and every store keep it
    assert "is a bytes" in str(find_unstorable({"raw": b"x"}))


def test_self_reference_is_cut_not_followed_forever() -> None:
    loop: dict[str, Any] = {}
    loop["again"] = loop
    assert f"nested deeper than {MAX_DEPTH} levels" in str(find_unstorable(loop))
    assert _strictly_storable(storable(loop))


def test_long_text_is_cut_with_its_size_noted() -> None:
    out = storable_text("x" * 100_000, MAX_MESSAGE_CHARS)
    assert out.endswith("[truncated: 100,000 characters in all]")
    assert len(out) < MAX_MESSAGE_CHARS + 100


def test_safe_str_survives_a_broken_str() -> None:
    class Broken:
        def __str__(self) -> str:
            raise SystemExit(1)

    assert safe_str(Broken()) == "<Broken whose str() raised SystemExit>"
    assert storable({"obj": Broken()})["obj"].startswith("<")
