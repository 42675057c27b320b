"""Checking one producer record against its source's data contract: pure, no I/O.

A `ContractValidator` is compiled once per source (regexes compiled, one
check closure per field) and then `validate(raw_bytes)` returns `Accepted`
or `Rejected` for any bytes at all: it never raises. Order of checks:

1. size (`max_bytes`) before anything is parsed; empty/absent values;
2. UTF-8, then JSON with NaN/Infinity refused at parse time, duplicate keys
   refused, nesting beyond `MAX_DEPTH` refused (a parse that would recurse
   too deep is refused too), lone surrogates refused;
3. the top level is an object; then every field: required, null, type, range,
   length, pattern, enum; unknown keys per `unknown_fields`;
4. the event time: not later than now + `allowed_skew_s`, not earlier than
   now - `max_lateness_s`.
Every problem found in steps 3-4 is reported, not only the first.

With jiter installed (`mlbus[ingestion]`), step 2 is first tried with jiter and
steps 3-4 without describing problems; only an accepted record is answered that
way. Anything else takes the reference path above, so every reason is the same.

Wire formats (what a producer may send):
- `int`: a JSON integer (or a float with no fraction, `5.0`), within int64;
- `float`: any finite JSON number; `bool`: `true`/`false` (never 0/1);
- `timestamp`: an ISO-8601 string with a UTC offset (`parse_timestamp`) or a
  number of seconds since the Unix epoch (UTC). Milliseconds are refused with
  a hint rather than guessed. Validated payloads carry every timestamp as an
  ISO-8601 UTC string ending in `Z`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

from mlbus.contracts._codes import (
    DUPLICATE_FIELD,
    EMPTY,
    FUTURE_EVENT_TIME,
    MISSING_FIELD,
    NON_FINITE_NUMBER,
    NOT_JSON,
    NOT_OBJECT,
    NULL_NOT_ALLOWED,
    TOO_DEEP,
    TOO_LARGE,
    TOO_LATE,
    TOO_LONG,
    TOO_SHORT,
    UNKNOWN_FIELD,
)
from mlbus.contracts._fields import (
    BAD,
    MAX_ID_LENGTH,
    Accept,
    Check,
    Problems,
    accepting_check,
    describing_check,
    json_type,
    shown,
    to_utc_text,
    wrong_type,
)
from mlbus.events import RejectionReason, Scalar
from mlbus.spec import FieldSpec, Source

MAX_DEPTH: Final = 16
"""Deepest JSON nesting reported as a type problem; deeper is `too_deep`."""
MAX_LISTED_UNKNOWN: Final = 20
"""Unknown keys listed one by one; the rest are summed up in one more reason."""


@dataclass(slots=True)
class Accepted:
    """A record that passed its contract, normalised: what `IngestValidated` carries.

    Not frozen: a frozen dataclass's `__init__` costs about 1 µs more, once per event.
    Treat it as read-only.
    """

    source: str
    contract_version: int
    event_id: str
    entity_id: str
    event_time: datetime
    payload: dict[str, Scalar]
    id_derived: bool
    """True when the source declares no event id and `event_id` was derived from the content."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that broke its contract, with every reason found (at least one)."""

    source: str
    contract_version: int
    reasons: tuple[RejectionReason, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(reason.code for reason in self.reasons)


Outcome: TypeAlias = Accepted | Rejected
_ABSENT: Final = object()
# What a field is to the fast path. _PLAIN: required, not nullable, not a timestamp; its
# accepting check refuses the None `dict.get` gives for a missing key, so no other test.
_PLAIN, _VALUE, _TIME, _EVENT_TIME = 0, 1, 2, 3


class _NonFinite(ValueError):
    pass


class _DuplicateKeys(ValueError):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(", ".join(keys))
        self.keys = keys


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts: dict[str, int] = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
        raise _DuplicateKeys(sorted(key for key, n in counts.items() if n > 1))
    return obj


_decode_json = json.JSONDecoder(
    parse_constant=_refuse_constant, object_pairs_hook=_object_pairs
).decode


def _load_fast_json() -> Callable[[bytes], Any] | None:
    """jiter (the Rust parser inside pydantic-core) with the same refusals as
    `_decode_json` (NaN/Infinity, duplicate keys, lone surrogates): about twice as
    fast. Optional (`mlbus[ingestion]` installs it); without it every record takes
    the reference path."""
    try:
        from jiter import from_json
    except ImportError:  # pragma: no cover - the ingestion extra installs it
        return None
    # Keys repeat from record to record, values rarely: caching only keys is cheapest.
    return functools.partial(
        from_json, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys"
    )


_fast_json = _load_fast_json()
_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _depth(value: object, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counted up to `limit + 1`."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return 0
    if limit <= 0:
        return 1
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


# ── the validator ────────────────────────────────────────────────────────────


class ContractValidator:
    """One source's contract, compiled. `validate(raw)` never raises."""

    def __init__(self, source_name: str, source: Source) -> None:
        contract = source.contract
        self.source_name = source_name
        self.source = source
        self.version = contract.version
        self.max_bytes = contract.max_bytes
        self._unknown = contract.unknown_fields
        self._skew_s = float(contract.allowed_skew_s)
        self._lateness_s = float(contract.max_lateness_s)
        self._entity = source.entity
        self._event_time = source.event_time
        self._event_id = source.event_id
        self._known = frozenset(contract.fields)
        self._fields: tuple[tuple[str, bool, bool, bool, Check], ...] = tuple(
            (
                name,
                spec.required,
                spec.nullable,
                spec.type == "timestamp",
                describing_check(name, spec),
            )
            for name, spec in contract.fields.items()
        )
        ids = (source.entity, source.event_id)
        self._accepts: tuple[tuple[str, int, bool, bool, Accept], ...] = tuple(
            (
                name,
                _field_kind(name, spec, source.event_time),
                spec.required,
                spec.nullable,
                accepting_check(spec, is_id=name in ids),
            )
            for name, spec in contract.fields.items()
        )
        self._plain_fields = sum(1 for _, kind, *_ in self._accepts if kind == _PLAIN)

    def _reject(self, *reasons: RejectionReason) -> Rejected:
        return Rejected(self.source_name, self.version, reasons)

    def _one(self, code: str, message: str, field: str | None = None) -> Rejected:
        return self._reject(RejectionReason(code=code, message=message, field=field))

    def validate(self, raw: bytes | None, *, now_s: float | None = None) -> Outcome:
        """Check one record value; `now_s` (epoch seconds) is the clock for event-time rules."""
        now = time.time() if now_s is None else now_s
        try:
            if _fast_json is not None and raw and len(raw) <= self.max_bytes:
                accepted = self._accept_fast(raw, now)
                if accepted is not None:
                    return accepted
            return self._validate(raw, now)
        except Exception as exc:  # a bug, never a crash: the record is kept with the reason
            return self._one(NOT_JSON, f"could not be checked ({type(exc).__name__}: {exc})")

    def _validate(self, raw: bytes | None, now_s: float) -> Outcome:
        """The reference path: finds and describes every problem."""
        if raw is None or len(raw) == 0:
            return self._one(EMPTY, "the record has no value")
        size = len(raw)
        if size > self.max_bytes:
            return self._one(
                TOO_LARGE, f"expected at most {self.max_bytes} bytes, got {size} bytes"
            )
        parsed = self._parse(raw)
        if isinstance(parsed, Rejected):
            return parsed
        return self._check_object(parsed, now_s)

    def _accept_fast(self, raw: bytes, now_s: float) -> Accepted | None:
        """The common case, cheaply: bytes jiter parses into an object that passes
        every rule. Anything else is None, and the reference path (`_validate`)
        decides it and finds every reason, exactly as without jiter.

        Each field is checked by its accepting form (`_fields.accepting_check`: a
        yes/no with the id length folded in), and this loop gives up at the first
        no. tests/unit/test_contract_validator.py holds the two paths to the same
        answer."""
        assert _fast_json is not None
        try:
            obj = _fast_json(raw)
        except ValueError:  # not JSON, NaN, a duplicate key, a lone surrogate, too deep…
            return None
        if type(obj) is not dict:
            return None
        payload: dict[str, Scalar] = {}
        event_time: datetime | None = None
        present = self._plain_fields  # each is there once the loop is through
        get = obj.get
        for name, kind, required, nullable, accept in self._accepts:
            if kind == _PLAIN:
                checked = accept(get(name))
                if checked is BAD:
                    return None
                payload[name] = checked
                continue
            value = get(name, _ABSENT)
            if value is _ABSENT:
                if required:
                    return None
                continue
            present += 1
            if value is None:
                if not nullable:
                    return None
                payload[name] = None
                continue
            # Arrays and objects fail every check (none accepts them): no separate test.
            checked = accept(value)
            if checked is BAD:
                return None
            if kind == _VALUE:
                payload[name] = checked
            else:  # (moment, its UTC text)
                moment, payload[name] = checked
                if kind == _EVENT_TIME:
                    event_time = moment
        if len(obj) > present:
            if self._unknown == "reject":
                return None
            sink: Problems = []
            self._unknown_keys(obj, payload, sink)
            if sink:
                return None
        if event_time is None:  # the spec makes it required and not nullable
            return None
        at = event_time.timestamp()
        if at > now_s + self._skew_s or at < now_s - self._lateness_s:
            return None  # `_check_event_time` describes it
        event_id, derived = self._id_of(obj, payload)
        return Accepted(
            self.source_name,
            self.version,
            event_id,
            str(payload[self._entity]),
            event_time,
            payload,
            derived,
        )

    def _parse(self, raw: bytes) -> dict[str, Any] | Rejected:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._one(NOT_JSON, f"expected UTF-8 text, got an invalid byte at {exc.start}")
        try:
            parsed = _decode_json(text)
        except _NonFinite as exc:
            return self._one(NON_FINITE_NUMBER, f"expected finite numbers, got {exc}")
        except _DuplicateKeys as exc:
            return self._reject(
                *(
                    RejectionReason(
                        code=DUPLICATE_FIELD,
                        field=_printable(key),
                        message=f"key {shown(key)} appears more than once",
                    )
                    for key in exc.keys[:MAX_LISTED_UNKNOWN]
                )
            )
        except RecursionError:
            return self._one(TOO_DEEP, f"expected JSON nested at most {MAX_DEPTH} levels deep")
        except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
            return self._one(NOT_JSON, f"expected one JSON object: {shown(str(exc), 120)}")
        if not isinstance(parsed, dict):
            return self._one(NOT_OBJECT, f"expected a JSON object, got {json_type(parsed)}")
        if "\\u" in text and not _encodable(parsed):
            return self._one(NOT_JSON, "expected valid Unicode, got a lone surrogate escape")
        return parsed

    def _check_object(self, obj: dict[str, Any], now_s: float) -> Outcome:
        problems: Problems = []
        payload: dict[str, Scalar] = {}
        times: dict[str, datetime] = {}
        present = 0
        get = obj.get
        for name, required, nullable, is_time, check in self._fields:
            value = get(name, _ABSENT)
            if value is _ABSENT:
                if required:
                    problems.append(
                        RejectionReason(
                            code=MISSING_FIELD, field=name, message=f"{name}: required, missing"
                        )
                    )
                continue
            present += 1
            if value is None:
                if nullable:
                    payload[name] = None
                else:
                    problems.append(
                        RejectionReason(
                            code=NULL_NOT_ALLOWED,
                            field=name,
                            message=f"{name}: expected a value, got null",
                        )
                    )
                continue
            cls = type(value)
            if cls is dict or cls is list:
                problems.append(self._nested(name, value, "a scalar value"))
                continue
            checked = check(value, problems)
            if checked is BAD:
                continue
            if is_time:
                if type(checked) is tuple:  # (moment, its canonical text)
                    times[name], payload[name] = checked
                else:
                    times[name] = checked
                    payload[name] = to_utc_text(checked)
            else:
                payload[name] = checked
        if len(obj) > present:
            self._unknown_keys(obj, payload, problems)
        self._check_keys(payload, problems)
        event_time = times.get(self._event_time)
        if event_time is not None:
            self._check_event_time(event_time, now_s, problems)
        if problems:
            return self._reject(*problems)
        assert event_time is not None  # required, not nullable: checked by the spec
        event_id, derived = self._id_of(obj, payload)
        return Accepted(
            source=self.source_name,
            contract_version=self.version,
            event_id=event_id,
            entity_id=str(payload[self._entity]),
            event_time=event_time,
            payload=payload,
            id_derived=derived,
        )

    def _nested(self, name: str, value: object, expected: str) -> RejectionReason:
        if _depth(value, MAX_DEPTH) > MAX_DEPTH:
            return RejectionReason(
                code=TOO_DEEP,
                field=name,
                message=f"{name}: expected JSON nested at most {MAX_DEPTH} levels deep",
            )
        return wrong_type(name, expected, value)

    def _unknown_keys(
        self, obj: dict[str, Any], payload: dict[str, Scalar], problems: Problems
    ) -> None:
        unknown = [key for key in obj if key not in self._known]
        if self._unknown == "drop":
            return
        if self._unknown == "keep":
            for key in unknown:
                value = obj[key]
                if type(value) is dict or type(value) is list:
                    problems.append(self._nested(_printable(key), value, "a scalar value"))
                elif type(value) is float and not math.isfinite(value):
                    problems.append(
                        RejectionReason(
                            code=NON_FINITE_NUMBER,
                            field=_printable(key),
                            message=f"{shown(key)}: expected a finite number",
                        )
                    )
                else:
                    payload[key] = value
            return
        for key in unknown[:MAX_LISTED_UNKNOWN]:
            problems.append(
                RejectionReason(
                    code=UNKNOWN_FIELD,
                    field=_printable(key),
                    message=f"{shown(key)}: not in the contract (unknown_fields: reject)",
                )
            )
        if len(unknown) > MAX_LISTED_UNKNOWN:
            problems.append(
                RejectionReason(
                    code=UNKNOWN_FIELD,
                    message=f"and {len(unknown) - MAX_LISTED_UNKNOWN} more unknown fields",
                )
            )

    def _check_event_time(self, moment: datetime, now_s: float, problems: Problems) -> None:
        at = moment.timestamp()
        name = self._event_time
        if at > now_s + self._skew_s:
            ahead = at - now_s
            problems.append(
                RejectionReason(
                    code=FUTURE_EVENT_TIME,
                    field=name,
                    message=f"{name}: {ahead:.0f}s in the future, more than the allowed "
                    f"clock skew of {self._skew_s:.0f}s",
                )
            )
        elif at < now_s - self._lateness_s:
            behind = now_s - at
            problems.append(
                RejectionReason(
                    code=TOO_LATE,
                    field=name,
                    message=f"{name}: {behind:.0f}s old, more than the maximum lateness "
                    f"of {self._lateness_s:.0f}s",
                )
            )

    def _check_keys(self, payload: dict[str, Scalar], problems: Problems) -> None:
        """Entity and event ids travel as Kafka keys and `event_id`s: 1 to 200 characters."""
        for name in (self._entity, self._event_id):
            if name is None or name not in payload:
                continue
            length = len(str(payload[name]))
            if length == 0:
                problems.append(
                    RejectionReason(
                        code=TOO_SHORT, field=name, message=f"{name}: expected a non-empty id"
                    )
                )
            elif length > MAX_ID_LENGTH:
                problems.append(
                    RejectionReason(
                        code=TOO_LONG,
                        field=name,
                        message=f"{name}: expected an id of at most {MAX_ID_LENGTH} "
                        f"characters, got {length}",
                    )
                )

    def _id_of(self, obj: dict[str, Any], payload: dict[str, Scalar]) -> tuple[str, bool]:
        if self._event_id is not None:
            return str(payload[self._event_id]), False
        return derive_event_id(self.source_name, obj), True


def _field_kind(name: str, spec: FieldSpec, event_time: str) -> int:
    if spec.type == "timestamp":
        return _EVENT_TIME if name == event_time else _TIME
    return _PLAIN if spec.required and not spec.nullable else _VALUE


def derive_event_id(source_name: str, obj: dict[str, Any]) -> str:
    """A deterministic id from an event's content: same fields and values, same id.

    Key order and whitespace do not matter; any value that differs does.
    """
    digest = hashlib.sha256(f"{source_name}\n{_canonical(obj)}".encode()).hexdigest()
    return f"sha256-{digest[:32]}"


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return False
    return True


def _printable(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("utf-8")
