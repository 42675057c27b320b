"""Durations in a spec: whole seconds, written as `90`, `"90s"`, `"10m"`, `"1h30m"`, `"7d"`.

Every duration field ends in `_s` and holds an `int` of seconds once parsed, so
no service ever guesses a unit. Aggregation windows keep the label the user
wrote (`"24h"`) because feature names are built from it (`amount_sum_24h`).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

UNIT_SECONDS: dict[str, int] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}

_NUMBER = re.compile(r"[0-9]+")
_PART = re.compile(r"([0-9]+)([wdhms])")
_WHOLE = re.compile(r"(?:[0-9]+[wdhms])+")


def parse_duration(value: object) -> int:
    """Seconds in `value`: a non-negative int, or a string such as `"10m"`, `"1h30m"`, `"7d"`.

    Units: w, d, h, m, s (a bare number string means seconds). Raises `ValueError`
    whose message says what is expected, so spec errors read well.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 600, '10m', '1h' or '7d', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a duration >= 0, got {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if _NUMBER.fullmatch(text):
            return int(text)
        if _WHOLE.fullmatch(text):
            return sum(int(n) * UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    raise ValueError(
        f"expected a duration such as 600, '10m', '1h' or '7d' (units w, d, h, m, s), got {value!r}"
    )


def format_duration(seconds: int) -> str:
    """The shortest label for `seconds` in one unit: 600 → "10m", 86400 → "1d", 90 → "90s"."""
    if seconds < 0:
        raise ValueError(f"expected a duration >= 0, got {seconds}")
    for unit, size in UNIT_SECONDS.items():
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def duration_label(value: object) -> str:
    """The window label a feature name carries: the user's text normalised ("24H" → "24h").

    Numbers become the shortest label (`600` → "10m").
    """
    seconds = parse_duration(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        return f"{text}s" if _NUMBER.fullmatch(text) else text
    return format_duration(seconds)


Seconds = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]
"""A duration field in whole seconds; accepts 600 or "10m"."""

PositiveSeconds = Annotated[int, BeforeValidator(parse_duration), Field(gt=0)]
"""A duration that must be longer than zero."""
