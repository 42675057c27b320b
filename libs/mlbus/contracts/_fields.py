"""One contract field's rule, compiled once per field, in two forms.

- `describing_check(name, spec)` → `check(value, problems)`: the normalised
  value, or `BAD` after appending every reason the value breaks. The reference
  path: what a rejection says comes from here.
- `accepting_check(name, spec, is_id=...)` → `accept(value)`: the same
  normalised value, or `BAD` without saying why. The fast path's yes/no: no
  problem list, and an entity or event id's length (1 to `MAX_ID_LENGTH`
  characters) folded into the field's own check.

Both take a present, non-null value; required and nullable are the caller's.
The two forms of each type sit side by side so that they are read (and changed)
together; tests/unit/test_contract_validator.py holds them to the same answers.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from mlbus.contracts._codes import (
    BAD_TIMESTAMP,
    NON_FINITE_NUMBER,
    NOT_IN_ENUM,
    OUT_OF_RANGE,
    PATTERN_MISMATCH,
    TOO_LONG,
    TOO_SHORT,
    WRONG_TYPE,
)
from mlbus.events import RejectionReason
from mlbus.spec import FieldSpec, parse_timestamp

MAX_ID_LENGTH: Final = 200
"""Longest entity or event id (an `Event.event_id` holds at most 200 characters)."""
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
# Epoch seconds past 9999-12-31: almost always milliseconds sent by mistake.
MAX_EPOCH_S: Final = 253_402_300_799
BAD: Final = object()
"""What a check returns for a value that breaks the field's rule."""

Problems: TypeAlias = list[RejectionReason]
Check: TypeAlias = Callable[[Any, Problems], Any]
Accept: TypeAlias = Callable[[Any], Any]


def shown(value: object, limit: int = 60) -> str:
    """A value for a message: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json gives nothing else


def to_utc_text(moment: datetime) -> str:
    """`2025-01-01T12:00:00.250Z`: the form every validated timestamp takes."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def epoch_to_datetime(seconds: float) -> datetime:
    if not -MAX_EPOCH_S <= seconds <= MAX_EPOCH_S:
        raise ValueError(
            f"expected seconds since the Unix epoch, got {shown(seconds)}"
            + (" (milliseconds? divide by 1000)" if seconds > MAX_EPOCH_S else "")
        )
    return datetime.fromtimestamp(seconds, UTC)


# ── per-type checks: the describing form, then the accepting one ─────────────


def describing_check(name: str, spec: FieldSpec) -> Check:
    """`check(value, problems)`: the normalised value, or `BAD` with every reason appended."""
    kind = spec.type
    if kind == "int":
        return _int_check(name, spec)
    if kind == "float":
        return _float_check(name, spec)
    if kind == "bool":
        return _bool_check(name)
    if kind == "enum":
        return _enum_check(name, spec)
    if kind == "timestamp":
        return _timestamp_check(name)
    return _string_check(name, spec)


def accepting_check(spec: FieldSpec, *, is_id: bool) -> Accept:
    """`accept(value)`: what `describing_check` returns when it finds no problem, else `BAD`.

    A timestamp is always answered as `(moment, its UTC text)`. `is_id`: the
    field is the entity or event id, whose value must also be 1 to
    `MAX_ID_LENGTH` characters as text (an int64 always is).
    """
    kind = spec.type
    if kind == "int":
        return _int_accept(spec)
    if kind == "float":
        return _float_accept(spec)
    if kind == "bool":
        return _bool_accept
    if kind == "enum":
        return _enum_accept(spec)
    if kind == "timestamp":
        return _timestamp_accept
    return _string_accept(spec, is_id=is_id)


def wrong_type(name: str, expected: str, value: object) -> RejectionReason:
    return RejectionReason(
        code=WRONG_TYPE,
        field=name,
        message=f"{name}: expected {expected}, got {json_type(value)} {shown(value)}",
    )


def _not_finite(name: str) -> RejectionReason:
    return RejectionReason(
        code=NON_FINITE_NUMBER, field=name, message=f"{name}: expected a finite number"
    )


def _in_range(
    name: str, value: float, low: float | None, high: float | None, problems: Problems
) -> Any:
    """`value` when within [low, high] (None: unbounded); else BAD, the reason in `problems`."""
    if low is not None and value < low:
        message = f"{name}: expected >= {low:g}, got {shown(value)}"
    elif high is not None and value > high:
        message = f"{name}: expected <= {high:g}, got {shown(value)}"
    else:
        return value
    problems.append(RejectionReason(code=OUT_OF_RANGE, field=name, message=message))
    return BAD


def _int_range(spec: FieldSpec) -> tuple[int, int]:
    low = max(INT64_MIN, math.ceil(spec.min)) if spec.min is not None else INT64_MIN
    high = min(INT64_MAX, math.floor(spec.max)) if spec.max is not None else INT64_MAX
    return low, high


def _int_check(name: str, spec: FieldSpec) -> Check:
    low, high = _int_range(spec)

    def check(value: Any, problems: Problems) -> Any:
        cls = type(value)
        if cls is float and math.isfinite(value) and value.is_integer():
            value = int(value)
        elif cls is float and not math.isfinite(value):
            problems.append(_not_finite(name))
            return BAD
        elif cls is not int:
            problems.append(wrong_type(name, "an integer", value))
            return BAD
        return _in_range(name, value, low, high, problems)

    return check


def _int_accept(spec: FieldSpec) -> Accept:
    low, high = _int_range(spec)

    def accept(value: Any) -> Any:
        cls = type(value)
        if cls is float:
            if not (math.isfinite(value) and value.is_integer()):
                return BAD
            value = int(value)
        elif cls is not int:
            return BAD
        return value if low <= value <= high else BAD

    return accept


def _float_check(name: str, spec: FieldSpec) -> Check:
    low, high = spec.min, spec.max

    def check(value: Any, problems: Problems) -> Any:
        cls = type(value)
        if cls is int:
            try:
                value = float(value)
            except OverflowError:
                problems.append(
                    RejectionReason(
                        code=OUT_OF_RANGE,
                        field=name,
                        message=f"{name}: expected a number a float can hold, got {shown(value)}",
                    )
                )
                return BAD
        elif cls is not float:
            problems.append(wrong_type(name, "a number", value))
            return BAD
        if not math.isfinite(value):
            problems.append(_not_finite(name))
            return BAD
        return _in_range(name, value, low, high, problems)

    return check


def _float_accept(spec: FieldSpec) -> Accept:
    # Unset bounds are infinite: a finite value never fails them, as none is checked.
    low = -math.inf if spec.min is None else spec.min
    high = math.inf if spec.max is None else spec.max
    isfinite = math.isfinite

    def accept(value: Any) -> Any:
        cls = type(value)
        if cls is int:
            try:
                value = float(value)
            except OverflowError:
                return BAD
        elif cls is not float:
            return BAD
        return value if isfinite(value) and low <= value <= high else BAD

    return accept


def _bool_check(name: str) -> Check:
    def check(value: Any, problems: Problems) -> Any:
        if type(value) is not bool:
            problems.append(wrong_type(name, "true or false", value))
            return BAD
        return value

    return check


def _bool_accept(value: Any) -> Any:
    return value if type(value) is bool else BAD


def _enum_check(name: str, spec: FieldSpec) -> Check:
    allowed = frozenset(spec.values or ())
    listed = ", ".join(repr(v) for v in spec.values or ())
    if len(listed) > 200:
        listed = listed[:199] + "…"

    def check(value: Any, problems: Problems) -> Any:
        if type(value) is not str:
            problems.append(wrong_type(name, "a string", value))
            return BAD
        if value not in allowed:
            problems.append(
                RejectionReason(
                    code=NOT_IN_ENUM,
                    field=name,
                    message=f"{name}: expected one of {listed}, got {shown(value)}",
                )
            )
            return BAD
        return value

    return check


def _enum_accept(spec: FieldSpec) -> Accept:
    allowed = frozenset(spec.values or ())

    def accept(value: Any) -> Any:
        return value if type(value) is str and value in allowed else BAD

    return accept


def _string_check(name: str, spec: FieldSpec) -> Check:
    min_length, max_length = spec.min_length, spec.max_length
    matches = re.compile(spec.pattern).fullmatch if spec.pattern is not None else None
    pattern = spec.pattern

    def check(value: Any, problems: Problems) -> Any:
        if type(value) is not str:
            problems.append(wrong_type(name, "a string", value))
            return BAD
        ok = True
        length = len(value)
        if max_length is not None and length > max_length:
            problems.append(
                RejectionReason(
                    code=TOO_LONG,
                    field=name,
                    message=f"{name}: expected at most {max_length} characters, got {length}",
                )
            )
            ok = False
        if min_length is not None and length < min_length:
            problems.append(
                RejectionReason(
                    code=TOO_SHORT,
                    field=name,
                    message=f"{name}: expected at least {min_length} characters, got {length}",
                )
            )
            ok = False
        if ok and matches is not None and matches(value) is None:
            problems.append(
                RejectionReason(
                    code=PATTERN_MISMATCH,
                    field=name,
                    message=f"{name}: expected a match of {pattern!r}, got {shown(value)}",
                )
            )
            ok = False
        return value if ok else BAD

    return check


def _string_accept(spec: FieldSpec, *, is_id: bool) -> Accept:
    # Unset length bounds are 0 and sys.maxsize: every str length is within them.
    shortest = spec.min_length if spec.min_length is not None else 0
    longest = spec.max_length if spec.max_length is not None else sys.maxsize
    if is_id:
        shortest, longest = max(shortest, 1), min(longest, MAX_ID_LENGTH)
    if spec.pattern is None:

        def accept(value: Any) -> Any:
            return value if type(value) is str and shortest <= len(value) <= longest else BAD

        return accept
    matches = re.compile(spec.pattern).fullmatch

    def accept_matching(value: Any) -> Any:
        if type(value) is str and shortest <= len(value) <= longest and matches(value) is not None:
            return value
        return BAD

    return accept_matching


_CANONICAL_UTC = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z"
)


_canonical_utc = _CANONICAL_UTC.fullmatch


def _timestamp_check(name: str) -> Check:
    canonical = _canonical_utc

    def check(value: Any, problems: Problems) -> Any:
        cls = type(value)
        try:
            if cls is str and canonical(value) is not None:
                moment = datetime.fromisoformat(value)  # already UTC with a Z: keep the text
                return (moment, value)
            if cls is str:
                return parse_timestamp(value).astimezone(UTC)
            if cls is int or cls is float:
                return epoch_to_datetime(value)
        except (ValueError, OverflowError, OSError) as exc:
            problems.append(
                RejectionReason(code=BAD_TIMESTAMP, field=name, message=f"{name}: {exc}")
            )
            return BAD
        problems.append(
            wrong_type(name, "an ISO-8601 time string or seconds since the epoch", value)
        )
        return BAD

    return check


def _timestamp_accept(value: Any) -> Any:
    cls = type(value)
    try:
        if cls is str and _canonical_utc(value) is not None:
            return (datetime.fromisoformat(value), value)  # already UTC with a Z: keep the text
        if cls is str:
            moment = parse_timestamp(value).astimezone(UTC)
        elif cls is int or cls is float:
            moment = epoch_to_datetime(value)
        else:
            return BAD
    except (ValueError, OverflowError, OSError):
        return BAD
    return (moment, to_utc_text(moment))
