"""Artifact storage: content-addressed by sha256, confined to its root, verified on read.

    <root>/sha256/ab/abcdef….onnx

The database keeps the *location* (the path relative to the root); the
`artifact_uri` in events and API answers is the store's URL for it
(`file:///…`), for readers on the same machine. Everything else reads through
the registry (`DownloadArtifact`), which verifies the hash on every read.

An `s3://` store is declared but not implemented: setting one fails at start
with a `ConfigError` that says so.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlparse

import grpc

from mlbus.errors import ConfigError, InvalidInput, NotFound, PermanentError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactCorrupted(PermanentError):
    """A stored artifact no longer hashes to the sha256 recorded for it."""

    grpc_status = grpc.StatusCode.DATA_LOSS


@dataclass(frozen=True)
class StoredArtifact:
    location: str
    uri: str
    sha256: str
    size_bytes: int


class ArtifactStore(Protocol):
    def put(self, data: bytes) -> StoredArtifact: ...

    def read(self, location: str, sha256: str) -> bytes: ...

    def read_unverified(self, location: str) -> bytes: ...

    def uri(self, location: str) -> str: ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_location(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise InvalidInput(f"not a sha256 hex digest: {sha256!r}")
    return f"sha256/{sha256[:2]}/{sha256}.onnx"


class LocalArtifactStore:
    """Artifacts in a local (or mounted) folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def put(self, data: bytes) -> StoredArtifact:
        """Store `data` under its hash (idempotent: the same bytes land in the same file)."""
        digest = sha256_hex(data)
        location = content_location(digest)
        path = self._path(location)
        if not (path.is_file() and sha256_hex(path.read_bytes()) == digest):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(tmp).replace(path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredArtifact(location, self.uri(location), digest, len(data))

    def read(self, location: str, sha256: str) -> bytes:
        """The artifact's bytes, or `ArtifactCorrupted` if they do not hash to `sha256`."""
        data = self.read_unverified(location)
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactCorrupted(
                f"artifact {location} is corrupted: its sha256 is {actual}, "
                f"the registry recorded {sha256}"
            )
        return data

    def read_unverified(self, location: str) -> bytes:
        path = self._path(location)
        if not path.is_file():
            raise NotFound(f"no artifact at {location!r} in the store {self.root}")
        return path.read_bytes()

    def uri(self, location: str) -> str:
        return self._path(location).as_uri()

    def _path(self, location: str) -> Path:
        """The file for `location`, refused unless it stays inside the root."""
        relative = PurePosixPath(location)
        if (
            not location
            or "\\" in location
            or "\x00" in location
            or relative.is_absolute()
            or ".." in relative.parts
        ):
            raise InvalidInput(
                f"artifact location {location!r} is not a relative path inside the store"
            )
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidInput(f"artifact location {location!r} leads outside the store")
        return path


def open_artifact_store(setting: str) -> ArtifactStore:
    """The store a setting names: a folder path or file:// URL (s3:// is not implemented)."""
    parsed = urlparse(setting)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(setting)
        return LocalArtifactStore(path)
    if parsed.scheme == "s3":
        raise ConfigError(
            f"MLBUS_REGISTRY_ARTIFACT_STORE={setting}: S3-compatible artifact stores are not "
            "implemented yet; use a folder (shared storage mounted at the same path works)"
        )
    raise ConfigError(
        f"MLBUS_REGISTRY_ARTIFACT_STORE={setting}: expected a folder or a file:// URL"
    )
