"""A typed client of the model registry's gRPC API (`mlbus.registry.v1.RegistryService`).

    async with RegistryClient("127.0.0.1:8002", token=None) as registry:
        champion = await registry.resolve_alias("fraud", "champion")
        data = await registry.download_artifact("fraud", champion.version)  # sha256 verified
        result = await registry.register("fraud", onnx_bytes, metrics={"auc": 0.91})

Answers are frozen pydantic models (`ModelVersionInfo`, `AliasChange`, …);
gRPC failures come back as `mlbus.errors` types: NOT_FOUND → `NotFound`,
INVALID_ARGUMENT → `InvalidInput`, UNAUTHENTICATED → `Unauthenticated`,
UNAVAILABLE / DEADLINE_EXCEEDED → `RetryableError`, others → `PermanentError`.
The answers are the registry's domain types (`mlbus.registry_types`, re-exported
here); the proto conversions live in `mlbus.registry_proto`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio
from pydantic import BaseModel, Field, JsonValue, SecretStr

from mlbus.api.registry.v1 import registry_pb2 as pb
from mlbus.api.registry.v1 import registry_pb2_grpc as pb_grpc
from mlbus.errors import (
    InvalidInput,
    MlbusError,
    NotFound,
    PermanentError,
    RetryableError,
    Unauthenticated,
)
from mlbus.profiles import ReferenceProfile
from mlbus.registry_proto import change_from_proto, summary_from_proto, version_from_proto
from mlbus.registry_types import (
    AliasChange,
    AliasChangeKind,
    GateDecision,
    Lineage,
    ModelSummary,
    ModelVersionInfo,
    Registration,
)

DEFAULT_ADDRESS = "127.0.0.1:8002"
DEFAULT_MAX_MESSAGE_MB = 64

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_MESSAGE_MB",
    "AliasChange",
    "AliasChangeKind",
    "GateDecision",
    "Lineage",
    "ModelSummary",
    "ModelVersionInfo",
    "Registration",
    "RegistryClient",
    "error_from_rpc",
]


def error_from_rpc(exc: grpc.aio.AioRpcError, address: str) -> MlbusError:
    """The mlbus error a failed registry call stands for."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(
            f"{details} (set MLBUS_REGISTRY_TOKEN to the registry's token)"
            if "MLBUS_REGISTRY_TOKEN" not in details
            else details
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return RetryableError(f"registry at {address} is not reachable ({code.name}: {details})")
    return PermanentError(f"registry call failed ({code.name}): {details}")


class RegistryClient:
    """Async client of the registry. Use `async with`, or call `close()`."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        from mlbus.telemetry import tracing_client_interceptors

        self.address = address
        self.timeout_s = timeout_s
        self._token = token
        limit = (max_message_mb + 1) << 20
        self._channel = channel or grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
            interceptors=tracing_client_interceptors(),
        )
        self._stub = pb_grpc.RegistryServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(
                request, timeout=self.timeout_s, metadata=self._metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.address) from None

    # ── reads ────────────────────────────────────────────────────────────────

    async def get_version(self, model: str, version: int | None = None) -> ModelVersionInfo:
        """One version (the latest when `version` is None)."""
        request = pb.GetModelVersionRequest(model=model, version=version or 0)
        return version_from_proto(await self._call("GetModelVersion", request))

    async def resolve_alias(self, model: str, alias: str = "champion") -> ModelVersionInfo:
        request = pb.ResolveAliasRequest(model=model, alias=alias)
        return version_from_proto(await self._call("ResolveAlias", request))

    async def list_models(self) -> list[ModelSummary]:
        response = await self._call("ListModels", pb.ListModelsRequest())
        return [summary_from_proto(m) for m in response.models]

    async def list_versions(self, model: str, limit: int = 0) -> list[ModelVersionInfo]:
        """Versions of `model`, newest first (`limit` 0: all)."""
        request = pb.ListModelVersionsRequest(model=model, limit=limit)
        response = await self._call("ListModelVersions", request)
        return [version_from_proto(v) for v in response.versions]

    async def lineage(self, model: str, version: int) -> Lineage:
        response = await self._call(
            "GetLineage", pb.GetLineageRequest(model=model, version=version)
        )
        return Lineage(
            version=version_from_proto(response.version),
            alias_history=tuple(change_from_proto(c) for c in response.alias_history),
        )

    async def alias_history(
        self, model: str, alias: str | None = None, limit: int = 0
    ) -> list[AliasChange]:
        """Alias moves of `model`, newest first."""
        request = pb.ListAliasHistoryRequest(model=model, alias=alias or "", limit=limit)
        response = await self._call("ListAliasHistory", request)
        return [change_from_proto(c) for c in response.changes]

    async def download_artifact(self, model: str, version: int) -> bytes:
        """The ONNX bytes of a version, checked against the sha256 the registry sent."""
        request = pb.DownloadArtifactRequest(model=model, version=version)
        expected_sha = ""
        expected_size = -1
        parts: list[bytes] = []
        try:
            stream = self._stub.DownloadArtifact(
                request, timeout=self.timeout_s, metadata=self._metadata()
            )
            async for chunk in stream:
                if chunk.sha256:
                    expected_sha, expected_size = chunk.sha256, chunk.size_bytes
                parts.append(chunk.data)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.address) from None
        data = b"".join(parts)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha or len(data) != expected_size:
            raise RetryableError(
                f"artifact of {model} v{version} arrived damaged: sha256 {actual} "
                f"({len(data)} bytes), expected {expected_sha} ({expected_size} bytes)"
            )
        return data

    # ── mutations (need the token when the registry has one) ─────────────────

    async def register(
        self,
        model: str,
        artifact: bytes | None = None,
        *,
        location: str | None = None,
        expected_sha256: str | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, JsonValue] | None = None,
        dataset_fingerprint: str | None = None,
        feature_views: Mapping[str, int] | None = None,
        run_id: str | None = None,
        code_version: str | None = None,
        reference_profile: ReferenceProfile | None = None,
        description: str = "",
        champion_version: int | None = None,
        champion_metrics: Mapping[str, float] | None = None,
        evaluation_window: str | None = None,
        alias: str | None = None,
        reason: str = "",
        actor: str = "",
    ) -> Registration:
        """Register `artifact` (ONNX bytes) or a file already in the store (`location`).

        Without `alias`, the registry's promotion gates decide whether the new
        version becomes `champion`; `champion_metrics` (the champion measured
        on the same window as `metrics`) make that comparison fair.
        """
        if (artifact is None) == (location is None):
            raise InvalidInput("give exactly one of artifact bytes or a store location")
        request = pb.RegisterRequest(
            model=model,
            expected_sha256=expected_sha256,
            metrics=dict(metrics or {}),
            params_json=json.dumps(dict(params or {}), sort_keys=True),
            dataset_fingerprint=dataset_fingerprint,
            feature_views=dict(feature_views or {}),
            run_id=run_id,
            code_version=code_version,
            reference_profile_json=None
            if reference_profile is None
            else reference_profile.model_dump_json(),
            description=description,
            champion_version=champion_version,
            champion_metrics=dict(champion_metrics or {}),
            evaluation_window=evaluation_window,
            alias=alias,
            reason=reason,
            actor=actor,
        )
        if artifact is not None:
            request.content = artifact
        else:
            request.location = location or ""
        response = await self._call("Register", request)
        return Registration(
            version=version_from_proto(response.version),
            promoted=response.promoted,
            alias_changes=tuple(change_from_proto(c) for c in response.alias_changes),
        )

    async def set_alias(
        self, model: str, alias: str, version: int, *, reason: str, actor: str = ""
    ) -> AliasChange:
        request = pb.SetAliasRequest(
            model=model, alias=alias, version=version, reason=reason, actor=actor
        )
        return change_from_proto(await self._call("SetAlias", request))

    async def rollback(
        self, model: str, alias: str = "champion", *, reason: str, actor: str = ""
    ) -> AliasChange:
        request = pb.RollbackRequest(model=model, alias=alias, reason=reason, actor=actor)
        return change_from_proto(await self._call("Rollback", request))

    async def check_token(self) -> None:
        """Raise Unauthenticated unless the registry accepts this client's token for changes.

        For a change made elsewhere on the registry's authority (the console's
        labels). The registry has no call that only checks a token, and a new one
        would change the proto; so this sends a registration without an artifact,
        which the registry refuses after the token check and before any effect
        (InvalidInput: the token passed). A registry without a token accepts any.
        """
        try:
            await self._call("Register", pb.RegisterRequest())
        except InvalidInput:
            return
        raise PermanentError("the registry accepted a registration without an artifact")


class RegistryAccess(BaseModel):
    """How a stream service reaches the registry: mixed into its settings, so the
    variables keep its prefix (`MLBUS_<SERVICE>_REGISTRY_ADDRESS`, `_TOKEN`, `_TIMEOUT_S`)."""

    registry_address: str = DEFAULT_ADDRESS
    registry_token: SecretStr | None = None
    registry_timeout_s: float = Field(default=10.0, gt=0)

    def registry_client(self) -> RegistryClient:
        token = self.registry_token
        return RegistryClient(
            self.registry_address,
            token=None if token is None else token.get_secret_value(),
            timeout_s=self.registry_timeout_s,
        )
