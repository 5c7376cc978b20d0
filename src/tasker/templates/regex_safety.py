"""Refuse JSON Schema regexes that can backtrack for minutes: the `pattern`s of a template's schema.

Python's `re` backtracks, and a pattern such as `(a+)+$`, `(a|a)*` or `(.*a){20}` takes exponential
time on a short string that almost matches. Task contexts come from API callers, so one such pattern
in a template lets any caller stall the server. The check is static, at template load, on the parsed
pattern (`re._parser`), and conservative: it refuses

- an unbounded repetition (`*`, `+`, `{n,}`, or more than `LARGE_REPEAT` times) nested inside
  another repetition (`(a+)+`, `(.*a){20}`), and a repetition of variable length (`a{1,3}`, `a?`)
  nested inside an unbounded one, unless the outer body is delimited: it holds exactly one such
  inner repetition, of a single character class, beside a mandatory separator character that this
  class cannot match (`(-[a-z]+)*`, `([a-z0-9-]+\\.)+`, `(/[^/]+)*` are accepted);
- inside an unbounded repetition, an alternation whose branches can begin with the same character or
  match nothing (`(a|a)*`, `(\\w|\\d)+`, `(a|)+`).

Possessive quantifiers and atomic groups never backtrack into their body and are not refused.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# The parser behind `re` (Python >= 3.11, as the project requires); untyped internals, hence Any.
c: Any = importlib.import_module("re._constants")
sre_parse: Any = importlib.import_module("re._parser")

#: A bounded repetition above this many times counts as unbounded.
LARGE_REPEAT = 100
#: Characters sampled to decide whether two character classes overlap (ASCII, Latin-1, a few more).
_SAMPLE = [chr(i) for i in range(0x250)] + ["\u0394", "\u4e00", "\u2028", "\U0001f600"]

Pattern = Any  # re._parser.SubPattern: untyped internals
Item = tuple[Any, Any]
CharTest = Callable[[str], bool]

_REPEATS = (c.MAX_REPEAT, c.MIN_REPEAT)


def refusal(pattern: str) -> str | None:
    """Why `pattern` is refused (one clause, no trailing period), or None when it is accepted."""
    try:
        with (
            warnings.catch_warnings()
        ):  # FutureWarnings about `[[`: not the template author's concern here
            warnings.simplefilter("ignore")
            parsed = sre_parse.parse(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        return f"it is not a valid regular expression ({exc})"
    for op, av in _walk(list(parsed)):
        if op not in _REPEATS or av[1] <= 1:
            continue
        outer_large = _large(av[1])
        body = _unwrap(list(av[2]))
        inner = [
            (iop, iav)
            for iop, iav in _walk(body)
            if iop in _REPEATS and (_large(iav[1]) or (outer_large and iav[0] != iav[1]))
        ]
        if inner and not _delimited(body, inner):
            if any(_large(iav[1]) for _, iav in inner):
                return "it nests an unbounded repetition inside another repetition"
            return "it repeats without bound a part of variable length"
        if outer_large and any(bop == c.BRANCH and _ambiguous(bav[1]) for bop, bav in _walk(body)):
            return "it repeats without bound alternatives that can match the same text"
    return None


def _unwrap(items: list[Item]) -> list[Item]:
    """The items of a repeated group: `(x)+` and `(?:x)+` repeat x."""
    while len(items) == 1 and items[0][0] == c.SUBPATTERN:
        items = list(items[0][1][3])
    return items


def _large(high: int) -> bool:
    return bool(high == c.MAXREPEAT or high > LARGE_REPEAT)


def _walk(items: list[Item]) -> Iterator[Item]:
    """Every item of a parsed pattern, depth-first, except inside atomic groups and possessive
    repeats."""
    stack = list(reversed(items))
    while stack:
        op, av = stack.pop()
        yield op, av
        stack.extend(reversed(_sub_items(op, av)))


def _sub_items(op: Any, av: Any) -> list[Item]:
    if op in _REPEATS:
        return list(av[2])
    if op == c.SUBPATTERN:
        return list(av[3])
    if op == c.BRANCH:
        return [item for alt in av[1] for item in alt]
    if op in (c.ASSERT, c.ASSERT_NOT):
        return list(av[1])
    if op == c.GROUPREF_EXISTS:
        return [*av[1], *(av[2] or [])]
    return []  # ATOMIC_GROUP and POSSESSIVE_REPEAT do not backtrack; atoms have no children


def _delimited(body: list[Item], inner: list[Item]) -> bool:
    """Whether the repeated `body` is one character-class run beside a separator it cannot
    consume."""
    if len(inner) != 1:
        return False
    run = inner[0][1]  # compared by identity: _walk re-packs the (op, av) tuples
    runs_here = [av for op, av in body if op in _REPEATS]
    if len(runs_here) != 1 or runs_here[0] is not run:
        return False
    run_items = list(run[2])
    run_chars = _char_test(run_items[0]) if len(run_items) == 1 else None
    if run_chars is None:
        return False
    for op, av in body:
        if av is not run and op in (
            *_REPEATS,
            c.BRANCH,
            c.SUBPATTERN,
            c.GROUPREF,
            c.GROUPREF_EXISTS,
        ):
            return False  # anything else variable or compound: no claim of safety
    for op, av in body:
        sep = None if av is run else _char_test((op, av))
        if sep is not None and not any(sep(ch) and run_chars(ch) for ch in _SAMPLE):
            return True
    return False


def _ambiguous(alternatives: list[Pattern]) -> bool:
    """Whether two branches can start with the same character, or one can match the empty string."""
    firsts: list[CharTest] = []
    for alt in alternatives:
        if alt.getwidth()[0] == 0:
            return True
        first = _first_chars(list(alt))
        for other in firsts:
            if any(first(ch) and other(ch) for ch in _SAMPLE):
                return True
        firsts.append(first)
    return False


def _first_chars(items: list[Item]) -> CharTest:
    """The characters a sequence can begin with (conservatively: any character when unsure)."""
    for op, av in items:
        if op == c.AT:
            continue  # anchors consume nothing
        test = _char_test((op, av))
        if test is not None:
            return test
        if op == c.SUBPATTERN:
            return _first_chars(list(av[3]))
        if op in _REPEATS and av[0] >= 1:
            return _first_chars(list(av[2]))
        if op == c.BRANCH:
            tests = [_first_chars(list(alt)) for alt in av[1]]
            return lambda ch: any(t(ch) for t in tests)
        break
    return _anything


def _anything(ch: str) -> bool:
    return True


def _char_test(item: Item) -> CharTest | None:
    """A test for the characters one single-character item matches, or None if it is not one."""
    op, av = item
    if op == c.LITERAL:
        return lambda ch: ord(ch) == av
    if op == c.NOT_LITERAL:
        return lambda ch: ord(ch) != av
    if op == c.ANY:
        return _anything
    if op == c.IN:
        return _class_test(av)
    return None


def _class_test(members: list[Item]) -> CharTest:
    negate = bool(members) and members[0][0] == c.NEGATE
    tests: list[CharTest] = []
    for op, av in members[1:] if negate else members:
        if op == c.LITERAL:
            tests.append(_range_test(av, av))
        elif op == c.RANGE:
            tests.append(_range_test(av[0], av[1]))
        elif op == c.CATEGORY:
            tests.append(_CATEGORIES.get(av, _anything))
        else:
            tests.append(_anything)  # unknown member: assume it may match anything
    if negate:
        return lambda ch: not any(t(ch) for t in tests)
    return lambda ch: any(t(ch) for t in tests)


def _range_test(low: int, high: int) -> CharTest:
    return lambda ch: low <= ord(ch) <= high


_CATEGORIES: dict[Any, CharTest] = {
    c.CATEGORY_DIGIT: lambda ch: bool(re.match(r"\d", ch)),
    c.CATEGORY_NOT_DIGIT: lambda ch: not re.match(r"\d", ch),
    c.CATEGORY_SPACE: lambda ch: bool(re.match(r"\s", ch)),
    c.CATEGORY_NOT_SPACE: lambda ch: not re.match(r"\s", ch),
    c.CATEGORY_WORD: lambda ch: bool(re.match(r"\w", ch)),
    c.CATEGORY_NOT_WORD: lambda ch: not re.match(r"\w", ch),
}


def schema_patterns(schema: Any) -> Iterator[tuple[str, str]]:
    """(JSON path, pattern) of every `pattern` and `patternProperties` key in a schema, iteratively.

    Values that are data rather than schema (`const`, `enum`, `default`, `examples`) are not
    searched.
    """
    stack: list[tuple[str, Any]] = [("", schema)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, list):
            stack.extend((f"{path}/{i}", v) for i, v in reversed(list(enumerate(node))))
            continue
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("pattern"), str):
            yield f"{path}/pattern", node["pattern"]
        props = node.get("patternProperties")
        if isinstance(props, dict):
            for key in props:
                if isinstance(key, str):
                    yield f"{path}/patternProperties", key
        for key, value in reversed(list(node.items())):
            if key not in ("const", "enum", "default", "examples", "pattern"):
                stack.append((f"{path}/{key}", value))
