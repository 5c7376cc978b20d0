"""CEL expressions in templates: compiled once when a template loads, evaluated over plain data.

A step's `when:` is a CEL expression (https://cel.dev, the language of Kubernetes' validation rules
and Hatchet's conditions) over two variables: `context`, the task's context, and `results`, the
results of the step's ancestors by step name. CEL is not Turing complete, has no side effects and
cannot reach the process, so evaluating an operator's expression inside the completion transaction
is safe; a wrong type or a missing field is an error, never a silent `false`.

The interpreter is the Rust `cel` crate through its Python bindings (`common-expression-language`).
Its package also ships a command-line REPL whose imports (typer, prompt_toolkit) take a quarter of a
second, so only the compiled extension is loaded (`_interpreter`), and only when a template has an
expression.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

#: The variables an expression may read.
VARIABLES = ("context", "results")
#: Macros that bind a variable of their own (`items.all(i, i.qty > 0)`).
_BINDING_MACROS = ("all", "exists", "exists_one", "map", "filter", "transformList", "transformMap")

_STRING = re.compile(
    r"""[rRbB]{0,2}(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"|'(?:\\.|[^'\\\n])*'"""
    r"""|"(?:\\.|[^"\\\n])*")""",
    re.DOTALL,
)
_RESULTS_MEMBER = re.compile(
    r"(?<![\w.])results\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(\x00\d+\x00)\s*\])"
)
_BOUND = re.compile(
    r"\.\s*(?:" + "|".join(_BINDING_MACROS) + r")\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)
_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")


class ExpressionSyntaxError(ValueError):
    """An expression that does not compile; `line` and `column` count from 1 (0: unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def where(self) -> str:
        return f"line {self.line}, column {self.column}" if self.line else "unknown position"


class ExpressionFailure(ValueError):
    """An expression that failed while evaluating (a missing field, a wrong type)."""


@dataclass(frozen=True)
class StepReference:
    """A `results.<step>` (or `results["<step>"]`) in an expression, and where it is."""

    step: str
    line: int
    column: int


@dataclass(frozen=True)
class Expression:
    """A compiled expression: its source, the program, and the steps whose results it reads."""

    source: str
    references: tuple[StepReference, ...]
    program: Any = field(repr=False, compare=False)

    @property
    def steps(self) -> frozenset[str]:
        return frozenset(r.step for r in self.references)

    @property
    def constant(self) -> bool:
        """Whether the expression reads neither `context` nor `results` (known when loaded)."""
        return not any(v in VARIABLES for v in self.program.variables())

    def evaluate(self, context: Any, results: dict[str, Any]) -> Any:
        """The expression's value over `context` and `results`; raises `ExpressionFailure` with
        the interpreter's reason, said plainly."""
        try:
            return self.program.execute({"context": context, "results": results})
        except KeyError as exc:
            raise ExpressionFailure(f"no such key {exc}") from None
        except RecursionError:
            raise ExpressionFailure("the data is nested too deeply to evaluate") from None
        except Exception as exc:  # the interpreter raises TypeError, ValueError, RuntimeError...
            text = str(exc).split(". ", 1)[0] if isinstance(exc, TypeError) else str(exc)
            raise ExpressionFailure(text or type(exc).__name__) from None


@cache
def _interpreter() -> ModuleType:
    """The compiled `cel` extension, loaded without the package's REPL (see the module's doc)."""
    loaded = sys.modules.get("cel.cel")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("cel")
    locations = spec.submodule_search_locations if spec else None
    if locations:
        for folder in locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = Path(folder) / f"cel{suffix}"
                if path.is_file():
                    ext = importlib.util.spec_from_file_location("cel.cel", path)
                    if ext is not None and ext.loader is not None:
                        module = importlib.util.module_from_spec(ext)
                        ext.loader.exec_module(module)
                        sys.modules["cel.cel"] = module
                        return module
    import cel  # another layout: the package as published

    return cel


def _masked(source: str) -> tuple[str, list[str]]:
    """The source with every string literal replaced by a same-length placeholder (so positions
    hold), and the literals' contents in order."""
    literals: list[str] = []

    def keep(m: re.Match[str]) -> str:
        literals.append(_unquote(m.group(0)))
        marker = f"\x00{len(literals) - 1}\x00"
        return marker + " " * max(0, len(m.group(0)) - len(marker))

    return _STRING.sub(keep, source), literals


def _unquote(literal: str) -> str:
    body = literal.lstrip("rRbB")
    quote = body[:3] if body[:3] in ("'''", '"""') else body[:1]
    return body[len(quote) : len(body) - len(quote)]


def _line_column(source: str, offset: int) -> tuple[int, int]:
    before = source[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


def compile_expression(source: str) -> Expression:
    """Compile `source`; raises `ExpressionSyntaxError` naming the line and column of the fault,
    or a name the expression cannot read (only `context` and `results` exist)."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionSyntaxError("the expression is empty")
    try:
        program = _interpreter().compile(source)
    except (ValueError, RuntimeError) as exc:
        text = str(exc)
        m = _POSITION.search(text)
        if m:
            reason = m.group(3).split(" expecting ", 1)[0].strip()
            raise ExpressionSyntaxError(reason, int(m.group(1)), int(m.group(2))) from None
        raise ExpressionSyntaxError(text.splitlines()[0] if text else "does not compile") from None
    masked, literals = _masked(source)
    bound = set(_BOUND.findall(masked))
    unknown = sorted(set(program.variables()) - set(VARIABLES) - bound)
    if unknown:
        name = unknown[0]
        m = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", masked)
        line, column = _line_column(source, m.start()) if m else (0, 0)
        raise ExpressionSyntaxError(
            f"unknown name '{name}' (an expression reads only context and results)", line, column
        )
    refs = []
    for m in _RESULTS_MEMBER.finditer(masked):
        step = m.group(1) if m.group(1) else literals[int(m.group(2).strip("\x00"))]
        line, column = _line_column(source, m.start())
        refs.append(StepReference(step, line, column))
    return Expression(source, tuple(refs), program)
