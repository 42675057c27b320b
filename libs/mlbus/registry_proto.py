"""The registry's wire contract: `mlbus.registry.v1.RegistryService` messages ↔ domain types.

One home for the conversions in both directions, used by the registry service
(domain → proto) and by `mlbus.registry_client` (proto → domain), and for the
names both sides agree on (the service, the methods that need the token, the
size of an artifact's chunks).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mlbus.api.registry.v1 import registry_pb2 as pb
from mlbus.events import ModelSignature, TensorSpec
from mlbus.profiles import ReferenceProfile
from mlbus.registry_types import (
    AliasChange,
    GateDecision,
    ModelSummary,
    ModelVersionInfo,
)

SERVICE_NAME = "mlbus.registry.v1.RegistryService"
MUTATING_METHODS = frozenset({"Register", "SetAlias", "Rollback"})
"""RegistryService methods that need the bearer token when the registry has one."""
CHUNK_BYTES = 1 << 20
"""DownloadArtifact streams the artifact in chunks of this size."""


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def _datetime(stamp: Timestamp) -> datetime:
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


def _opt(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _tensor_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


def _tensor_from_proto(message: pb.TensorSpec) -> TensorSpec:
    return TensorSpec.model_validate(
        {"name": message.name, "datatype": message.datatype, "shape": tuple(message.shape)}
    )


def version_to_proto(info: ModelVersionInfo) -> pb.ModelVersion:
    message = pb.ModelVersion(
        model=info.model,
        version=info.version,
        artifact_uri=info.artifact_uri,
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        inputs=[_tensor_to_proto(t) for t in info.signature.inputs],
        outputs=[_tensor_to_proto(t) for t in info.signature.outputs],
        metrics=info.metrics,
        params_json=json.dumps(info.params, sort_keys=True),
        feature_views=info.feature_views,
        created_at=_timestamp(info.created_at),
        created_by=info.created_by,
        description=info.description,
        aliases=list(info.aliases),
        gate=pb.GateDecision(
            evaluated=info.gate.evaluated,
            passed=info.gate.passed,
            reason=info.gate.reason,
            compared_with_version=info.gate.compared_with_version,
        ),
    )
    for field in ("dataset_fingerprint", "run_id", "code_version", "evaluation_window"):
        value = getattr(info, field)
        if value is not None:
            setattr(message, field, value)
    if info.reference_profile is not None:
        message.reference_profile_json = info.reference_profile.model_dump_json()
    return message


def version_from_proto(message: pb.ModelVersion) -> ModelVersionInfo:
    profile = _opt(message, "reference_profile_json")
    return ModelVersionInfo(
        model=message.model,
        version=message.version,
        artifact_uri=message.artifact_uri,
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        signature=ModelSignature(
            inputs=tuple(_tensor_from_proto(t) for t in message.inputs),
            outputs=tuple(_tensor_from_proto(t) for t in message.outputs),
        ),
        metrics=dict(message.metrics),
        params=json.loads(message.params_json) if message.params_json else {},
        dataset_fingerprint=_opt(message, "dataset_fingerprint"),
        feature_views=dict(message.feature_views),
        run_id=_opt(message, "run_id"),
        code_version=_opt(message, "code_version"),
        created_at=_datetime(message.created_at),
        created_by=message.created_by,
        description=message.description,
        aliases=tuple(message.aliases),
        reference_profile=None
        if profile is None
        else ReferenceProfile.model_validate_json(profile),
        gate=GateDecision(
            evaluated=message.gate.evaluated,
            passed=message.gate.passed,
            reason=message.gate.reason,
            compared_with_version=_opt(message.gate, "compared_with_version"),
        ),
        evaluation_window=_opt(message, "evaluation_window"),
    )


def change_to_proto(change: AliasChange) -> pb.AliasChange:
    return pb.AliasChange(
        model=change.model,
        alias=change.alias,
        version=change.version,
        previous_version=change.previous_version,
        reason=change.reason,
        actor=change.actor,
        kind=change.kind,
        at=_timestamp(change.at),
        event_id=change.event_id,
    )


def change_from_proto(message: pb.AliasChange) -> AliasChange:
    return AliasChange.model_validate(
        {
            "model": message.model,
            "alias": message.alias,
            "version": message.version,
            "previous_version": _opt(message, "previous_version"),
            "reason": message.reason,
            "actor": message.actor,
            "kind": message.kind,
            "at": _datetime(message.at),
            "event_id": message.event_id,
        }
    )


def summary_to_proto(summary: ModelSummary) -> pb.ModelSummary:
    return pb.ModelSummary(
        model=summary.model,
        latest_version=summary.latest_version,
        aliases=summary.aliases,
        created_at=_timestamp(summary.created_at),
    )


def summary_from_proto(message: pb.ModelSummary) -> ModelSummary:
    return ModelSummary(
        model=message.model,
        latest_version=message.latest_version,
        aliases=dict(message.aliases),
        created_at=_datetime(message.created_at),
    )
