"""The soak's settings (`SoakConfig`) and the constants its parts share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlbus.example import fraud_spec_path

ACTOR = "mlbus-soak"
CHAMPION = "champion"
CANDIDATE = "soak-candidate"
"""The alias a soak-made version is registered under before it is promoted (no gate, and
no service serves it)."""
LABEL_DELAY_S = 4.0
"""A chargeback follows its payment this long after (longer than the offline flush, as in
the demo: a label before its payment's row would be joined to an older row)."""
WARMUP_S = 10.0
"""Live traffic before the first fault: the steady state the faults break."""
GRACE_S = 3.0
"""A fault's window ends this long after its recovery (stragglers of the fault)."""
HEALTHY_S = 2.0
"""Requests work again once every request sent for this long was answered."""


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    """Live traffic lasts this long (with faults: at least one round of every kind)."""
    faults: bool = False
    hostile: bool = False
    """Hostile bursts at every gRPC server (`_surfaces`); with `faults` they are one of the
    fault kinds anyway, without it the only one."""
    hostile_burst_s: float = 8.0
    """How long each hostile burst fuzzes."""
    rate: float = 500.0
    """Events per second sent to the source topics: payments and their labels."""
    requests: float = 300.0
    """Predict and ModelInfer calls per second."""
    seed: int = 7
    deadline_s: float = 2.0
    """The deadline every request carries."""
    slack_s: float = 1.0
    """How far past its deadline a request may return before it counts as late: the
    soak's own event loop, on a busy machine, notices an expired deadline late."""
    train_every_s: float = 90.0
    infer_every: int = 5
    """One request in this many is a ModelInfer (the rest are Predict)."""
    bootstrap: int = 12_000
    data_dir: Path | None = None
    spec_path: Path = field(default_factory=fraud_spec_path)
    fault_gap_s: float = 5.0
    recovery_timeout_s: float = 120.0
    drain_timeout_s: float = 240.0
    start_timeout_s: float = 90.0
    serving_timeout_ms: int | None = None
    """Replaces the spec's `serving.timeout_ms` (the online store's budget in Predict)
    in a copy of the spec in the data folder; None: the spec's own."""
