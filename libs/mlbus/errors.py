"""One exception tree for mlbus.

Every error a service raises on purpose is an `MlbusError`. Its class decides
what happens next, in exactly one place per transport:

- in a Kafka consumer (`mlbus.bus`): `RetryableError` → retry with backoff,
  offset not committed; `PermanentError` → dead-letter topic with the reason;
- in a gRPC server: the status code declared here, mapped by one interceptor.
"""

from __future__ import annotations

import grpc


class MlbusError(Exception):
    """Base of every deliberate mlbus error."""

    grpc_status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class RetryableError(MlbusError):
    """A dependency failed in a way that may pass (broker, Redis, registry down)."""

    grpc_status = grpc.StatusCode.UNAVAILABLE


class PermanentError(MlbusError):
    """Retrying the same input can never succeed."""

    grpc_status = grpc.StatusCode.FAILED_PRECONDITION


class InvalidInput(PermanentError):
    """The input itself is wrong: undecodable bytes, schema violation, bad tensor."""

    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PermanentError):
    """A named thing (model, version, entity, trace) does not exist."""

    grpc_status = grpc.StatusCode.NOT_FOUND


class ModelNotReady(RetryableError):
    """The model exists but cannot serve yet (loading, warming up)."""

    grpc_status = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(PermanentError):
    """A mutating call came without the configured bearer token."""

    grpc_status = grpc.StatusCode.UNAUTHENTICATED


class ConfigError(MlbusError):
    """Settings or a spec file are invalid; the process stops with this message."""
