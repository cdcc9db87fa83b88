"""JSON parsing with limits, for text a peer sent (a payload header, a JSON value inside its metadata).

``json.loads`` on hostile text escapes as ``RecursionError`` (deep nesting) or a bare ``ValueError``
(an integer beyond Python's digit limit); :func:`load_json` turns every such case, and ``NaN`` /
``Infinity``, into the caller's :class:`~.errors.WireError` (a 400 wherever it is raised).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import NotSafetensors, WireError

#: Deepest nesting accepted; a safetensors header needs 3 (header -> entry -> shape list).
MAX_JSON_DEPTH = 8
#: Longest integer accepted, in digits (an int64 has 19).
MAX_INT_DIGITS = 20

#: A JSON string, or an unterminated one up to the end (so a scan never restarts inside it: linear time).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*\\?(?:"|\Z)', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class _Refused(Exception):
    pass


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose names are unique: RFC 8259 leaves duplicates undefined (Python keeps the last,
    other parsers the first), so a duplicate tensor name could read differently to two parsers."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the name {key[:64]!r} appears twice in one object")
        out[key] = value
    return out


def nesting_depth(text: str, limit: int) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped), counting no further
    than ``limit + 1``."""
    depth = deepest = 0
    for bracket in _BRACKETS.finditer(_STRING.sub('""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


def load_json(
    text: str | bytes,
    *,
    what: str = "header",
    error: type[WireError] = NotSafetensors,
    param: str | None = None,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """The JSON value of ``text``, or ``error(message, param=param)`` when it is not valid UTF-8 JSON,
    nests deeper than ``max_depth``, holds an integer longer than :data:`MAX_INT_DIGITS` digits, or
    uses ``NaN`` / ``Infinity``, or repeats a name within one object. Never raises anything else for any input."""
    try:
        if isinstance(text, bytes | bytearray | memoryview):
            text = bytes(text).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8: {exc.reason} at byte {exc.start}", param=param) from None
    if nesting_depth(text, max_depth) > max_depth:
        raise error(f"{what} nests deeper than {max_depth} levels", param=param)
    try:
        return json.loads(text, parse_int=_int, parse_constant=_constant, object_pairs_hook=_unique_object)
    except _Refused as exc:
        raise error(f"{what} is not acceptable JSON: {exc}", param=param) from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}", param=param) from None
    except (ValueError, RecursionError) as exc:  # anything else json refuses
        raise error(f"{what} is not acceptable JSON ({type(exc).__name__})", param=param) from None
