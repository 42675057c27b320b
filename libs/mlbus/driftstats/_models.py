"""What a DriftMonitor tells and keeps: verdicts, status, and its restorable state (ADR 0016)."""

from __future__ import annotations

from typing import Literal, TypeAlias

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mlbus.driftstats._adwin import AdwinState
from mlbus.driftstats._blocks import BlockAdwinsState
from mlbus.errors import InvalidInput
from mlbus.events import DriftTestResult
from mlbus.seasons import PhaseMinutes, Seasonality

FeatureKind: TypeAlias = Literal["numeric", "categorical"]
Correction: TypeAlias = Literal["none", "bonferroni", "benjamini-hochberg"]
STATE_FORMAT: Literal[1] = 1


class DriftStateMismatch(InvalidInput):
    """A snapshot does not fit the monitor it is restored into (other profile, features, bins)."""


# ── public models ────────────────────────────────────────────────────────────


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowVerdict(_Frozen):
    """What one closed window (or one ADWIN cut) says; `detection` maps onto a DriftDetected."""

    model: str
    version: int
    results: tuple[DriftTestResult, ...] = Field(
        description="Every test run; p_value is the corrected p-value, compared with alpha."
    )
    drifted: bool
    detection: bool
    window_start: AwareDatetime
    window_end: AwareDatetime
    offsets: dict[str, tuple[int, int]] = Field(
        description="source → (lowest, highest) offset observed in the window"
    )
    n_reference: int = Field(ge=0)
    n_live: int = Field(ge=0)
    correction: Correction
    window_index: int = Field(ge=0, description="Numbers every verdict of this monitor.")
    origin: Literal["window", "performance"] = "window"
    samples: dict[str, int] = Field(
        default_factory=dict, description="channel → values counted in the window (missing incl.)"
    )


class TestStatus(_Frozen):
    """One test on the window being filled: its score so far against the threshold."""

    feature: str
    kind: Literal["covariate", "prediction", "performance"]
    test: str
    score: float
    p_value: float | None
    threshold: float
    samples: int
    enough_samples: bool
    streak: int = Field(description="consecutive closed windows in which this test drifted")


class OutcomeGroupStatus(_Frozen):
    """One outcome group's ADWIN (a classifier's positives or negatives, or "all")."""

    outcomes: int
    window: int
    mean_error: float
    detections: int
    reference_error: float | None = Field(
        default=None, description="the holdout's mean error, while it is the window's oldest part"
    )
    reference_outcomes: int = Field(default=0, ge=0, description="the holdout's rows of it")


class PerformanceStatus(_Frozen):
    """Every group together (live means weighed by window), and each group."""

    outcomes: int
    window: int
    mean_error: float
    detections: int
    invalid: int
    groups: dict[str, OutcomeGroupStatus] = Field(default_factory=dict)


class MonitorStatus(_Frozen):
    """What an operator looks at before trusting an alarm."""

    model: str
    version: int
    window_index: int
    window_size: int
    n_in_window: int
    window_start: AwareDatetime | None
    window_end: AwareDatetime | None
    n_reference: int
    seasonality: Seasonality = "none"
    timezone: str = Field(default="UTC", description="the wall clock the phases are hours of")
    phase_minutes: PhaseMinutes = Field(default=60, description="the phases' width, minutes")
    live_rate: float | None = Field(
        default=None,
        description="seasonal references: ρ, this monitor's live rows per cycle over the "
        "reference's rows; its ADWINs count n values as n/(1 + ρ)",
    )
    dependence: dict[str, float] = Field(
        default_factory=dict, description="channel → κ of its reference, where above 1"
    )
    tests: tuple[TestStatus, ...]
    skipped: dict[str, str] = Field(description="feature or feature:test → why it is not tested")
    invalid_values: dict[str, int] = Field(description="channel → values of the wrong type so far")
    adaptive_windows: dict[str, int] = Field(
        default_factory=dict, description="channel → values in its ADWIN window"
    )
    drifted_windows_in_row: int
    performance: PerformanceStatus | None
    recent: tuple[WindowVerdict, ...]
    detections: tuple[WindowVerdict, ...]


class ChannelState(_Frozen):
    layout: str = Field(description="fingerprint of the bins these counts are over")
    counts: tuple[int, ...]
    invalid: int = Field(default=0, ge=0)
    adwin: AdwinState | None = None


class MonitorState(_Frozen):
    """A monitor's whole state: counts over the profile's bins, never raw values."""

    format: Literal[1] = STATE_FORMAT
    model: str
    version: int
    window_index: int = Field(ge=0)
    n_in_window: int = Field(ge=0)
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    offsets: dict[str, tuple[int, int]] = Field(default_factory=dict)
    entity_hashes: tuple[int, ...] = Field(
        default=(), description="the window's smallest entity hashes (a distinct-count sketch)"
    )
    entity_counts: tuple[int, ...] = Field(
        default=(), description="rows of each entity in entity_hashes (none: saved before them)"
    )
    entity_rows: int = Field(default=0, ge=0, description="the window's rows that named an entity")
    phase_rows: tuple[int, ...] = Field(
        default=(), description="the window's rows per phase (seasonal profiles only)"
    )
    channels: dict[str, ChannelState]
    streaks: dict[str, int] = Field(default_factory=dict)
    drifted_windows_in_row: int = Field(default=0, ge=0)
    adwin: AdwinState | None = Field(
        default=None,
        description="the performance ADWIN saved before outcome groups existed: read, not "
        "restored (a classifier's held 0/1 errors, which Brier errors cannot continue)",
    )
    outcome_adwins: dict[str, AdwinState] = Field(
        default_factory=dict, description="the performance ADWIN of each outcome group"
    )
    feature_adwins: BlockAdwinsState | None = Field(
        default=None, description="the numeric channels' ADWINs (adaptive monitors)"
    )
    invalid_outcomes: int = Field(default=0, ge=0)
    live_rows: int = Field(
        default=0, ge=0, description="rows counted for the live rate (seasonal profiles only)"
    )
    live_first: float | None = Field(
        default=None, description="their earliest time (clock seconds, seasons.local_clock)"
    )
    live_last: float | None = Field(default=None, description="their latest time (clock s)")
    live_phase_rows: tuple[float, ...] = Field(
        default=(), description="those rows per phase (none: saved before they were kept)"
    )
    recent: tuple[WindowVerdict, ...] = ()
    detections: tuple[WindowVerdict, ...] = ()
