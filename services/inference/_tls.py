"""TLS credentials for the gRPC server, from `MLBUS_INFERENCE_TLS_*`.

A module of its own: the supervisor of `--workers N` checks the files before
spawning any worker, without importing the serving stack.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from mlbus.errors import ConfigError

from ._settings import InferenceSettings


def _read_pem(path: Path, variable: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}={path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{variable}={path}: not a PEM file")
    return data


def server_credentials(settings: InferenceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials (client certificates required when a CA is set); None: plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read_pem(settings.tls_cert_file, "MLBUS_INFERENCE_TLS_CERT_FILE")
    key = _read_pem(settings.tls_key_file, "MLBUS_INFERENCE_TLS_KEY_FILE")
    ca = (
        _read_pem(settings.tls_client_ca_file, "MLBUS_INFERENCE_TLS_CLIENT_CA_FILE")
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
