"""Stable rejection reason codes: dashboards, alerts and `mlbus ingest dlq replay --reason`
use them, so a code is never renamed or reused."""

from __future__ import annotations

from typing import Final

EMPTY = "empty"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
TOO_LARGE = "too_large"
TOO_DEEP = "too_deep"
NON_FINITE_NUMBER = "non_finite_number"
DUPLICATE_FIELD = "duplicate_field"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
PATTERN_MISMATCH = "pattern_mismatch"
NOT_IN_ENUM = "not_in_enum"
UNKNOWN_FIELD = "unknown_field"
NULL_NOT_ALLOWED = "null_not_allowed"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_EVENT_TIME = "future_event_time"
TOO_LATE = "too_late"

REASON_CODES: Final = (
    EMPTY,
    NOT_JSON,
    NOT_OBJECT,
    TOO_LARGE,
    TOO_DEEP,
    NON_FINITE_NUMBER,
    DUPLICATE_FIELD,
    MISSING_FIELD,
    WRONG_TYPE,
    OUT_OF_RANGE,
    TOO_LONG,
    TOO_SHORT,
    PATTERN_MISMATCH,
    NOT_IN_ENUM,
    UNKNOWN_FIELD,
    NULL_NOT_ALLOWED,
    BAD_TIMESTAMP,
    FUTURE_EVENT_TIME,
    TOO_LATE,
)
