"""Data contracts at run time: checking producers' records against a source's contract.

    contracts = SourceContracts(load_spec("mlbus.yaml"))
    outcome = contracts.for_topic("payments.transactions.v1").validate(raw_bytes)
    if isinstance(outcome, Accepted): ...   # normalised payload, entity id, event id, UTC time
    else: outcome.reasons                   # every RejectionReason found, stable codes

Pure code, no I/O: the ingestion service and `mlbus ingest validate` run the
very same checks. See `_validator.py` for the wire formats, `_codes.py` for
the reason codes and `_fields.py` for the per-field rules.
"""

from __future__ import annotations

from mlbus.contracts._codes import (
    BAD_TIMESTAMP,
    DUPLICATE_FIELD,
    EMPTY,
    FUTURE_EVENT_TIME,
    MISSING_FIELD,
    NON_FINITE_NUMBER,
    NOT_IN_ENUM,
    NOT_JSON,
    NOT_OBJECT,
    NULL_NOT_ALLOWED,
    OUT_OF_RANGE,
    PATTERN_MISMATCH,
    REASON_CODES,
    TOO_DEEP,
    TOO_LARGE,
    TOO_LATE,
    TOO_LONG,
    TOO_SHORT,
    UNKNOWN_FIELD,
    WRONG_TYPE,
)
from mlbus.contracts._fields import to_utc_text
from mlbus.contracts._report import ReasonExample, ValidationReport, validate_lines
from mlbus.contracts._validator import (
    MAX_DEPTH,
    Accepted,
    ContractValidator,
    Outcome,
    Rejected,
    derive_event_id,
)
from mlbus.spec import ProjectSpec


class SourceContracts:
    """Every source of a spec, compiled once: look validators up by topic or by source name."""

    def __init__(self, spec: ProjectSpec) -> None:
        self.by_source: dict[str, ContractValidator] = {
            name: ContractValidator(name, source) for name, source in spec.sources.items()
        }
        self.by_topic: dict[str, ContractValidator] = {
            v.source.topic: v for v in self.by_source.values()
        }

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self.by_topic)

    def for_topic(self, topic: str) -> ContractValidator | None:
        return self.by_topic.get(topic)

    def for_source(self, name: str) -> ContractValidator:
        return self.by_source[name]


__all__ = [
    "BAD_TIMESTAMP",
    "DUPLICATE_FIELD",
    "EMPTY",
    "FUTURE_EVENT_TIME",
    "MAX_DEPTH",
    "MISSING_FIELD",
    "NON_FINITE_NUMBER",
    "NOT_IN_ENUM",
    "NOT_JSON",
    "NOT_OBJECT",
    "NULL_NOT_ALLOWED",
    "OUT_OF_RANGE",
    "PATTERN_MISMATCH",
    "REASON_CODES",
    "TOO_DEEP",
    "TOO_LARGE",
    "TOO_LATE",
    "TOO_LONG",
    "TOO_SHORT",
    "UNKNOWN_FIELD",
    "WRONG_TYPE",
    "Accepted",
    "ContractValidator",
    "Outcome",
    "ReasonExample",
    "Rejected",
    "SourceContracts",
    "ValidationReport",
    "derive_event_id",
    "to_utc_text",
    "validate_lines",
]
