"""One exception tree for mlbus.

Every error a service raises on purpose is an `MlbusError`. Its class decides
what happens next, in exactly one place per transport:

- in a Kafka consumer (`mlbus.bus`): `RetryableError` → retry with backoff,
  offset not committed; `PermanentError` → dead-letter topic with the reason;
- in a gRPC server: the status code named here (`status`), mapped by one
  interceptor (`mlbus.rpc`).

Statuses are names, not `grpc.StatusCode` members, so that a process that
neither serves nor calls gRPC (a stream worker, a supervisor, the CLI) does
not import grpc (~12 MB resident, ~30 ms of start-up) to raise an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import grpc

StatusName = Literal[
    "INTERNAL",
    "UNAVAILABLE",
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "DEADLINE_EXCEEDED",
    "DATA_LOSS",
]
"""The gRPC status codes mlbus errors map to (names of `grpc.StatusCode` members)."""


class MlbusError(Exception):
    """Base of every deliberate mlbus error."""

    status: StatusName = "INTERNAL"

    @property
    def grpc_status(self) -> grpc.StatusCode:
        """The gRPC status a server answers with (imports grpc: servers have it already)."""
        import grpc

        return grpc.StatusCode[self.status]


class RetryableError(MlbusError):
    """A dependency failed in a way that may pass (broker, Redis, registry down)."""

    status: StatusName = "UNAVAILABLE"


class PermanentError(MlbusError):
    """Retrying the same input can never succeed."""

    status: StatusName = "FAILED_PRECONDITION"


class InvalidInput(PermanentError):
    """The input itself is wrong: undecodable bytes, schema violation, bad tensor."""

    status: StatusName = "INVALID_ARGUMENT"


class NotFound(PermanentError):
    """A named thing (model, version, entity, trace) does not exist."""

    status: StatusName = "NOT_FOUND"


class ModelNotReady(RetryableError):
    """The model exists but cannot serve yet (loading, warming up)."""

    status: StatusName = "UNAVAILABLE"


class Unauthenticated(PermanentError):
    """A mutating call came without the configured bearer token."""

    status: StatusName = "UNAUTHENTICATED"


class ConfigError(MlbusError):
    """Settings or a spec file are invalid; the process stops with this message."""
