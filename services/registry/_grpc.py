# ruff: noqa: N802 - method names are the proto's RPC names
"""The gRPC face of the registry: `mlbus.registry.v1.RegistryService`, thin over `Registry`.

Handlers translate messages to domain calls and back (the conversions live in
`mlbus.registry_proto`, shared with the client) and raise `mlbus.errors`;
`mlbus.rpc.server_interceptors` turns those into status codes and guards the
mutating methods with the bearer token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from mlbus.api.registry.v1 import registry_pb2 as pb
from mlbus.api.registry.v1 import registry_pb2_grpc as pb_grpc
from mlbus.errors import InvalidInput
from mlbus.profiles import ReferenceProfile
from mlbus.registry_proto import (
    CHUNK_BYTES,
    MUTATING_METHODS,
    SERVICE_NAME,
    change_to_proto,
    summary_to_proto,
    version_to_proto,
)

from ._service import NewVersion, Registry


def protects(method: str) -> bool:
    """Whether a full method name (`/pkg.Service/Method`) needs the bearer token."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service == SERVICE_NAME and name in MUTATING_METHODS


def _opt(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _required(value: str, what: str) -> str:
    if not value:
        raise InvalidInput(f"{what} is required")
    return value


def parse_reference_profile(text: str | None) -> ReferenceProfile | None:
    if not text:
        return None
    try:
        return ReferenceProfile.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidInput(f"reference profile is not a valid ReferenceProfile: {exc}") from None


def parse_params(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"params are not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise InvalidInput("params must be a JSON object")
    return params


class RegistryServicer(pb_grpc.RegistryServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        which = request.WhichOneof("artifact")
        if which is None:
            raise InvalidInput("the artifact is missing: send its bytes or a store location")
        result = await self.registry.register(
            NewVersion(
                model=_required(request.model, "model"),
                content=request.content if which == "content" else None,
                location=request.location if which == "location" else None,
                expected_sha256=_opt(request, "expected_sha256"),
                metrics=dict(request.metrics),
                params=parse_params(request.params_json),
                dataset_fingerprint=_opt(request, "dataset_fingerprint"),
                feature_views=dict(request.feature_views),
                run_id=_opt(request, "run_id"),
                code_version=_opt(request, "code_version"),
                reference_profile=parse_reference_profile(_opt(request, "reference_profile_json")),
                description=request.description,
                champion_version=_opt(request, "champion_version"),
                champion_metrics=dict(request.champion_metrics) or None,
                evaluation_window=_opt(request, "evaluation_window"),
                alias=_opt(request, "alias") or None,
                reason=request.reason,
                actor=request.actor,
            )
        )
        return pb.RegisterResponse(
            version=version_to_proto(result.version),
            promoted=result.promoted,
            alias_changes=[change_to_proto(c) for c in result.alias_changes],
        )

    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: Any
    ) -> pb.ModelVersion:
        info = await self.registry.get_version(
            _required(request.model, "model"), request.version or None
        )
        return version_to_proto(info)

    async def ResolveAlias(self, request: pb.ResolveAliasRequest, context: Any) -> pb.ModelVersion:
        info = await self.registry.resolve_alias(
            _required(request.model, "model"), _required(request.alias, "alias")
        )
        return version_to_proto(info)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        models = await self.registry.list_models()
        return pb.ListModelsResponse(models=[summary_to_proto(m) for m in models])

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: Any
    ) -> pb.ListModelVersionsResponse:
        versions = await self.registry.list_versions(
            _required(request.model, "model"), max(request.limit, 0)
        )
        return pb.ListModelVersionsResponse(versions=[version_to_proto(v) for v in versions])

    async def SetAlias(self, request: pb.SetAliasRequest, context: Any) -> pb.AliasChange:
        change = await self.registry.set_alias(
            _required(request.model, "model"),
            _required(request.alias, "alias"),
            request.version,
            reason=request.reason,
            actor=request.actor,
        )
        return change_to_proto(change)

    async def Rollback(self, request: pb.RollbackRequest, context: Any) -> pb.AliasChange:
        change = await self.registry.rollback(
            _required(request.model, "model"),
            _required(request.alias, "alias"),
            reason=request.reason,
            actor=request.actor,
        )
        return change_to_proto(change)

    async def GetLineage(self, request: pb.GetLineageRequest, context: Any) -> pb.Lineage:
        lineage = await self.registry.lineage(_required(request.model, "model"), request.version)
        return pb.Lineage(
            version=version_to_proto(lineage.version),
            alias_history=[change_to_proto(c) for c in lineage.alias_history],
        )

    async def ListAliasHistory(
        self, request: pb.ListAliasHistoryRequest, context: Any
    ) -> pb.ListAliasHistoryResponse:
        changes = await self.registry.alias_history(
            _required(request.model, "model"), request.alias or None, max(request.limit, 0)
        )
        return pb.ListAliasHistoryResponse(changes=[change_to_proto(c) for c in changes])

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Any
    ) -> AsyncIterator[pb.ArtifactChunk]:
        info, data = await self.registry.artifact(
            _required(request.model, "model"), request.version
        )
        yield pb.ArtifactChunk(sha256=info.sha256, size_bytes=info.size_bytes, version=info.version)
        for start in range(0, len(data), CHUNK_BYTES):
            yield pb.ArtifactChunk(data=data[start : start + CHUNK_BYTES])
