"""Generated events, held column by column and written one JSON object per line.

Columns keep memory small for 100k+ events; an event dict is built only as
it is written. Lines are compact JSON with keys in contract order: exactly
what a producer would send, and byte-identical for the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from mlbus.example._values import Cell, JsonScalar, Omitted

DriftKind: TypeAlias = Literal["covariate", "concept", "both", "none"]
"""What changes from the drift point on; `none` is the control: nothing does."""
DRIFT_KINDS: tuple[DriftKind, ...] = ("covariate", "concept", "both", "none")


@dataclass(frozen=True)
class SourceEvents:
    """The events of one source, in send order (ascending event time)."""

    source: str
    columns: dict[str, list[Cell]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def events(self) -> Iterator[dict[str, JsonScalar]]:
        names = list(self.columns)
        for row in zip(*self.columns.values(), strict=True):
            yield {k: v for k, v in zip(names, row, strict=True) if not isinstance(v, Omitted)}


@dataclass(frozen=True)
class GeneratedData:
    """What a scenario produced, plus the facts the CLI summarises.

    `label_rate_before`/`after`: share of positive labels among events before and
    from `drift_at` on (None when the label is not boolean or the part is empty).
    """

    scenario: str
    sources: dict[str, SourceEvents]
    drift_at: int | None
    drift_kind: DriftKind
    seed: int
    label_rate_before: float | None = None
    label_rate_after: float | None = None
    notes: tuple[str, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        return {name: len(events) for name, events in self.sources.items()}

    def write_jsonl(
        self, out_dir: Path, on_progress: Callable[[str, int], None] | None = None
    ) -> dict[str, Path]:
        """Write `out_dir/<source>.jsonl` per source; `on_progress(source, lines)` as it goes."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for name, events in self.sources.items():
            path = out_dir / f"{name}.jsonl"
            write_jsonl(events, path, None if on_progress is None else _bind(on_progress, name))
            paths[name] = path
        return paths


def _bind(callback: Callable[[str, int], None], name: str) -> Callable[[int], None]:
    return lambda lines: callback(name, lines)


def write_jsonl(
    events: SourceEvents, path: Path, on_progress: Callable[[int], None] | None = None
) -> int:
    """Write one compact JSON object per line; returns the number of lines."""
    chunk = 5000
    written = 0
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    with path.open("w", encoding="utf-8", newline="\n") as out:
        lines: list[str] = []
        for event in events.events():
            lines.append(encode(event))
            if len(lines) == chunk:
                out.write("\n".join(lines) + "\n")
                written += len(lines)
                lines.clear()
                if on_progress is not None:
                    on_progress(chunk)
        if lines:
            out.write("\n".join(lines) + "\n")
            written += len(lines)
            if on_progress is not None:
                on_progress(len(lines))
    return written
