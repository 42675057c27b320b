"""Values that satisfy a field's contract: the building blocks of every scenario.

Numbers stay within `min`/`max`, enums within `values`, strings match
`pattern` and the length bounds. Everything draws from a seeded numpy
`Generator`, so the same seed gives the same values.
"""

from __future__ import annotations

import importlib
import random
import re
import string
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from mlbus.spec import FieldSpec

JsonScalar: TypeAlias = str | int | float | bool | None
IntArray: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]


class Omitted(Enum):
    """Marks a value whose key is left out of the event (an optional field not sent)."""

    KEY = "omitted"


OMIT = Omitted.KEY
Cell: TypeAlias = JsonScalar | Omitted

NULL_RATE = 0.05
"""Share of nulls in a nullable field."""
OMIT_RATE = 0.10
"""Share of events that leave out an optional field."""


class GenerationError(ValueError):
    """The contract cannot be satisfied by the generator (e.g. an unsupported pattern)."""


def iso_times(ms: IntArray) -> list[str]:
    """Epoch milliseconds → RFC 3339 UTC strings (`2025-01-01T00:00:00.000Z`), vectorised."""
    as_dt = ms.astype("datetime64[ms]")
    return [str(s) for s in np.datetime_as_string(as_dt, unit="ms", timezone="UTC")]


def uuids(rng: np.random.Generator, n: int) -> list[str]:
    """`n` random version-4 UUID strings drawn from `rng` (so they are reproducible)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = raw.tobytes().hex()
    out: list[str] = []
    for i in range(0, 32 * n, 32):
        h = hexed[i : i + 32]
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def fits(spec: FieldSpec, value: str) -> bool:
    """Does `value` satisfy a string field's pattern and length bounds?"""
    if spec.min_length is not None and len(value) < spec.min_length:
        return False
    if spec.max_length is not None and len(value) > spec.max_length:
        return False
    return spec.pattern is None or re.fullmatch(spec.pattern, value) is not None


def unique_strings(
    spec: FieldSpec,
    name: str,
    n: int,
    rng: np.random.Generator,
    preferred: Sequence[Callable[[int], str]] = (),
) -> list[str]:
    """`n` distinct strings for an id field: the first preferred format the contract accepts.

    Formats are tried on a sample; a pattern none of them fits falls back to
    sampling the pattern itself.
    """
    candidates: list[Callable[[int], list[str]]] = [
        *(_format_all(fmt) for fmt in preferred),
        lambda count: uuids(rng, count),
        _format_all(lambda i: f"{name}_{i:06d}"),
        _format_all(lambda i: f"{i:06d}"),
        _format_all(str),
    ]
    for make in candidates:
        sample = make(min(n, 50))
        if all(fits(spec, value) for value in sample):
            values = make(n)
            if all(fits(spec, value) for value in values) and len(set(values)) == n:
                return values
    sampler = PatternSampler(spec, rng)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise GenerationError(
                f"cannot make {n} distinct values for field {name!r} matching {spec.pattern!r}"
            )
        seen[sampler.sample()] = None
    return list(seen)


def _format_all(fmt: Callable[[int], str]) -> Callable[[int], list[str]]:
    return lambda count: [fmt(i) for i in range(1, count + 1)]


def field_values(
    spec: FieldSpec,
    name: str,
    n: int,
    rng: np.random.Generator,
    shifted: BoolArray | None = None,
    times_ms: IntArray | None = None,
) -> list[Cell]:
    """`n` valid values for one field; rows where `shifted` is true come from a moved distribution.

    The shift (covariate drift) pushes numbers towards the top of their range,
    reverses an enum's mix and tilts booleans, so a drift test can see it.
    """
    shift = np.zeros(n, dtype=bool) if shifted is None else shifted
    values: list[Cell]
    if spec.type in ("int", "float"):
        lo, hi = _numeric_range(spec)
        u = rng.random(n)
        u = np.where(shift, np.sqrt(u), u * 0.8)
        if spec.type == "int":
            ints = np.clip(np.floor(lo + u * (hi - lo + 1)), lo, hi).astype(np.int64)
            values = [int(v) for v in ints]
        else:
            floats = np.clip(np.round(lo + u * (hi - lo), 4), lo, hi)
            values = [float(v) for v in floats]
    elif spec.type == "bool":
        values = [bool(v) for v in rng.random(n) < np.where(shift, 0.75, 0.4)]
    elif spec.type == "enum":
        options = list(spec.values or ())
        weights = np.array([0.6**i for i in range(len(options))])
        pre = rng.choice(len(options), size=n, p=weights / weights.sum())
        post = rng.choice(len(options), size=n, p=weights[::-1] / weights.sum())
        values = [options[i] for i in np.where(shift, post, pre)]
    elif spec.type == "timestamp":
        base = times_ms if times_ms is not None else np.zeros(n, dtype=np.int64)
        offsets = rng.integers(0, 3_600_000, size=n)
        values = list(iso_times(base - offsets))
    else:
        sampler = PatternSampler(spec, rng)
        values = [sampler.sample() for _ in range(n)]
    return with_gaps(spec, values, rng)


def with_gaps(spec: FieldSpec, values: list[Cell], rng: np.random.Generator) -> list[Cell]:
    """Nulls in nullable fields and left-out keys in optional ones, as real producers send."""
    n = len(values)
    if spec.nullable:
        for i in np.flatnonzero(rng.random(n) < NULL_RATE):
            values[i] = None
    if not spec.required:
        for i in np.flatnonzero(rng.random(n) < OMIT_RATE):
            values[i] = OMIT
    return values


def _numeric_range(spec: FieldSpec) -> tuple[float, float]:
    lo = spec.min if spec.min is not None else (spec.max - 1000 if spec.max is not None else 0.0)
    hi = spec.max if spec.max is not None else lo + 1000
    if spec.type == "int":
        return float(np.ceil(lo)), float(np.floor(hi))
    return float(lo), float(hi)


# ── strings from a regular expression ────────────────────────────────────────

_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

_ALPHABET = string.ascii_letters + string.digits
_CATEGORY_CHARS: dict[Any, str] = {
    _c.CATEGORY_DIGIT: string.digits,
    _c.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    _c.CATEGORY_SPACE: " ",
    _c.CATEGORY_NOT_DIGIT: string.ascii_letters,
    _c.CATEGORY_NOT_WORD: "-.:/ ",
    _c.CATEGORY_NOT_SPACE: _ALPHABET,
}
_PRINTABLE = string.ascii_letters + string.digits + "-_.:/ "
_MAX_EXTRA_REPEATS = 8


class PatternSampler:
    """Random strings that match a field's `pattern` and length bounds.

    Walks Python's own parse of the regex (literals, classes, repeats, groups,
    alternation, anchors); lookarounds and back-references are not supported
    and raise `GenerationError`. Without a pattern, lowercase words of a fitting length.
    """

    def __init__(self, spec: FieldSpec, rng: np.random.Generator) -> None:
        self._spec = spec
        self._random = random.Random(int(rng.integers(0, 2**63)))
        self._tree = _parser.parse(spec.pattern) if spec.pattern is not None else None

    def sample(self) -> str:
        for _ in range(200):
            value = self._draw()
            if fits(self._spec, value):
                return value
        raise GenerationError(
            f"cannot generate a value matching pattern {self._spec.pattern!r} "
            f"with length {self._spec.min_length}..{self._spec.max_length}"
        )

    def _draw(self) -> str:
        if self._tree is None:
            lo = self._spec.min_length if self._spec.min_length is not None else 6
            hi = self._spec.max_length if self._spec.max_length is not None else max(lo, 12)
            size = self._random.randint(lo, max(lo, min(hi, lo + 8)))
            return "".join(self._random.choices(string.ascii_lowercase, k=size))
        return self._emit(self._tree)

    def _emit(self, items: Any) -> str:
        return "".join(self._emit_one(op, arg) for op, arg in items)

    def _emit_one(self, op: Any, arg: Any) -> str:
        rnd = self._random
        if op is _c.LITERAL:
            return chr(arg)
        if op is _c.NOT_LITERAL:
            return rnd.choice([ch for ch in _PRINTABLE if ord(ch) != arg])
        if op is _c.ANY:
            return rnd.choice(_ALPHABET)
        if op is _c.AT:
            return ""
        if op is _c.IN:
            return rnd.choice(self._class_chars(arg))
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
            low, high, body = arg
            top = low + _MAX_EXTRA_REPEATS if high is _c.MAXREPEAT else high
            return "".join(self._emit(body) for _ in range(rnd.randint(low, max(low, top))))
        if op is _c.SUBPATTERN:
            return self._emit(arg[-1])
        if op is _c.ATOMIC_GROUP:
            return self._emit(arg)
        if op is _c.BRANCH:
            return self._emit(rnd.choice(arg[1]))
        raise GenerationError(
            f"pattern {self._spec.pattern!r} uses {op}, which the generator cannot sample"
        )

    def _class_chars(self, items: Any) -> str:
        chars: set[str] = set()
        negate = False
        for op, arg in items:
            if op is _c.NEGATE:
                negate = True
            elif op is _c.LITERAL:
                chars.add(chr(arg))
            elif op is _c.RANGE:
                low, high = arg
                chars.update(chr(code) for code in range(low, min(high, low + 255) + 1))
            elif op is _c.CATEGORY:
                chars.update(_CATEGORY_CHARS.get(arg, _ALPHABET))
            else:
                raise GenerationError(
                    f"pattern {self._spec.pattern!r}: unsupported class item {op}"
                )
        if negate:
            chars = {ch for ch in _PRINTABLE if ch not in chars}
        if not chars:
            raise GenerationError(f"pattern {self._spec.pattern!r} has an empty character class")
        return "".join(sorted(chars))
