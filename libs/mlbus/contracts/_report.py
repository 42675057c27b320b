"""Offline validation of a JSON-lines file: the same checks as the ingestion service.

`validate_lines` is what `mlbus ingest validate` runs before a producer is
turned on; it also counts ids seen twice in the file (what the service would
drop as duplicates).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlbus.contracts._validator import Accepted, ContractValidator


@dataclass(frozen=True)
class ReasonExample:
    line: int
    message: str


@dataclass
class ValidationReport:
    """What a file would do at ingestion: accepted, rejected by reason, duplicates."""

    source: str
    contract_version: int
    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    """Rejected events by reason code; an event with several codes counts under each."""
    by_field: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Reasons by (code, field); an event may add several."""
    examples: dict[str, list[ReasonExample]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "contract_version": self.contract_version,
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "reasons": [
                {
                    "code": code,
                    "count": count,
                    "fields": {
                        name: n
                        for (c, name), n in sorted(self.by_field.items())
                        if c == code and name
                    },
                    "examples": [
                        {"line": e.line, "message": e.message} for e in self.examples.get(code, [])
                    ],
                }
                for code, count in self.by_reason.most_common()
            ],
        }


def validate_lines(
    validator: ContractValidator,
    lines: Iterable[bytes],
    *,
    now_s: float | None = None,
    examples_per_reason: int = 3,
) -> ValidationReport:
    """Validate one record per line (blank lines are skipped, as producers would skip them)."""
    report = ValidationReport(validator.source_name, validator.version)
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        record = line.rstrip(b"\r\n")
        if not record.strip():
            continue
        report.lines += 1
        outcome = validator.validate(record, now_s=now_s)
        if isinstance(outcome, Accepted):
            if outcome.event_id in seen:
                report.duplicates += 1
            else:
                seen.add(outcome.event_id)
                report.accepted += 1
            continue
        report.rejected += 1
        report.by_reason.update(set(outcome.codes))
        for reason in outcome.reasons:
            report.by_field[(reason.code, reason.field or "")] += 1
            kept = report.examples.setdefault(reason.code, [])
            if len(kept) < examples_per_reason and (not kept or kept[-1].line != number):
                kept.append(ReasonExample(number, reason.message))
    return report
