"""Example data for a spec: what producers would send, seeded, with drift on demand.

    spec = load_spec(fraud_spec_path())
    data = generate(spec, 100_000, drift_at=60_000, seed=7)
    data.write_jsonl(Path("data"))    # data/transactions.jsonl, data/chargebacks.jsonl

A spec that fits the card-fraud scenario (see `mlbus.example._fraud`) gets
realistic, learnable payments and chargebacks; any other spec gets valid
random events from its contracts. The same spec, seed and start always give
byte-identical files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mlbus.example._dataset import (
    DRIFT_KINDS,
    DriftKind,
    GeneratedData,
    SourceEvents,
    write_jsonl,
)
from mlbus.example._fraud import FraudBinding, bind_fraud, generate_fraud
from mlbus.example._generic import generate_generic
from mlbus.example._values import GenerationError, JsonScalar
from mlbus.spec import ProjectSpec

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
"""Fixed, so files are reproducible; pass `start` to place events near now for ingestion."""
DEFAULT_DAYS = 7


def fraud_spec_path() -> Path:
    """The card-fraud spec shipped in the package (a copy of examples/fraud/mlbus.yaml)."""
    return Path(__file__).with_name("fraud.yaml")


def scenario_for(spec: ProjectSpec) -> str:
    """ "fraud" when the spec fits the built-in fraud scenario, else "generic"."""
    return "fraud" if bind_fraud(spec) is not None else "generic"


def generate(
    spec: ProjectSpec,
    events: int,
    *,
    drift_at: int | None = None,
    seed: int = 0,
    drift_kind: DriftKind = "both",
    start: datetime = DEFAULT_START,
    days: int = DEFAULT_DAYS,
) -> GeneratedData:
    """`events` events of the main data source (and its labels), drift from index `drift_at` on.

    Raises `GenerationError` (a ValueError) for arguments out of range or a
    contract the generator cannot satisfy.
    """
    if events < 1:
        raise GenerationError(f"expected at least 1 event, got {events}")
    if drift_at is not None and not 0 <= drift_at <= events:
        raise GenerationError(f"expected drift_at between 0 and {events}, got {drift_at}")
    if drift_kind not in DRIFT_KINDS:
        raise GenerationError(f"expected drift_kind one of {DRIFT_KINDS}, got {drift_kind!r}")
    if days < 1:
        raise GenerationError(f"expected at least 1 day, got {days}")
    if start.tzinfo is None:
        raise GenerationError("expected a start time with a UTC offset")
    start_ms = int(start.timestamp() * 1000)
    binding = bind_fraud(spec)
    if binding is not None:
        return generate_fraud(
            spec,
            binding,
            events,
            drift_at=drift_at,
            drift_kind=drift_kind,
            seed=seed,
            start_ms=start_ms,
            days=days,
        )
    return generate_generic(
        spec,
        events,
        drift_at=drift_at,
        drift_kind=drift_kind,
        seed=seed,
        start_ms=start_ms,
        days=days,
    )


__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_START",
    "DRIFT_KINDS",
    "DriftKind",
    "FraudBinding",
    "GeneratedData",
    "GenerationError",
    "JsonScalar",
    "SourceEvents",
    "bind_fraud",
    "fraud_spec_path",
    "generate",
    "scenario_for",
    "write_jsonl",
]
