"""What every spec model shares, and how cross-field checks report where they failed.

Pydantic gives a model-level validator only the model's own location; a
cross-reference check knows the exact field that is wrong. `CrossFieldError`
carries (relative location, message) pairs through pydantic's `ValueError`
wrapper so the loader can print `features.card.aggregations[0].field`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, TypeAlias

from pydantic import BaseModel, ConfigDict, StringConstraints

Loc: TypeAlias = tuple[int | str, ...]

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER, max_length=100)]
"""Names that end up in feature names, column names and Redis keys."""

_IDENT = re.compile(IDENTIFIER)


class SpecModel(BaseModel):
    """Base of every spec model: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def format_loc(loc: Loc) -> str:
    """`("sources", "tx", "contract", "fields", "amount", "min")` → `sources.tx.contract…`.

    Indexes print as `[0]`; keys that are not identifiers are quoted.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "(top level)"


class CrossFieldError(ValueError):
    """One or more cross-field problems, each at a location relative to the model that raised."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems: tuple[tuple[Loc, str], ...] = tuple(problems)
        super().__init__("; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in self.problems))


class ProblemList:
    """Collects every problem of a model before raising, so a user fixes them in one pass."""

    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, message: str) -> None:
        self.items.append((loc, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise CrossFieldError(self.items)


def one_of(names: Iterable[str]) -> str:
    """`'a', 'b' or 'c'` for messages; says so when there is nothing to choose from."""
    shown = [repr(name) for name in sorted(names)]
    if not shown:
        return "(none defined)"
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]
