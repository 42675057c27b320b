"""The registry's answers as domain types: versions, alias moves, lineage, registrations.

Frozen pydantic models, the same on both sides: the registry service returns
them, `mlbus.registry_client.RegistryClient` answers with them, and
`mlbus.registry_proto` converts them to and from the wire.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from mlbus.events import ModelSignature
from mlbus.profiles import ReferenceProfile

AliasChangeKind = Literal["set", "gate", "rollback"]


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GateDecision(_Answer):
    """What the promotion gates said when a version was registered."""

    evaluated: bool = Field(description="False when an explicit alias bypassed the gates.")
    passed: bool
    reason: str
    compared_with_version: int | None = None


class ModelVersionInfo(_Answer):
    """One registered version: artifact, signature, lineage, metrics, reference profile."""

    model: str
    version: int
    artifact_uri: str
    sha256: str
    size_bytes: int
    signature: ModelSignature
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, JsonValue] = Field(default_factory=dict)
    dataset_fingerprint: str | None = None
    feature_views: dict[str, int] = Field(default_factory=dict)
    run_id: str | None = None
    code_version: str | None = None
    created_at: datetime
    created_by: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    reference_profile: ReferenceProfile | None = None
    gate: GateDecision
    evaluation_window: str | None = None


class AliasChange(_Answer):
    """One move of an alias, as recorded in the history and published as an event."""

    model: str
    alias: str
    version: int
    previous_version: int | None
    reason: str
    actor: str
    kind: AliasChangeKind
    at: datetime
    event_id: str


class ModelSummary(_Answer):
    model: str
    latest_version: int
    aliases: dict[str, int]
    created_at: datetime


class Lineage(_Answer):
    version: ModelVersionInfo
    alias_history: tuple[AliasChange, ...]


class Registration(_Answer):
    version: ModelVersionInfo
    promoted: bool
    alias_changes: tuple[AliasChange, ...] = ()
