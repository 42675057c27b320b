"""Artifact storage: content-addressed by sha256, confined to its root, verified on read.

    <root>/sha256/ab/abcdef….onnx

The root is a local (or mounted) folder, or a bucket and key prefix of an
S3-compatible object store (`s3://bucket/prefix`, through boto3). The database
keeps the *location* (the path relative to the root); the `artifact_uri` in
events and API answers is the store's URL for it (`file:///…` or
`s3://bucket/prefix/…`). Everything else reads through the registry
(`DownloadArtifact`), which verifies the hash on every read.

Both stores build the keys they write from the hex digest alone, refuse any
location that is not a plain relative path inside the root (`..`, absolute,
backslashes, NUL), and raise `ArtifactCorrupted` (DATA_LOSS) when the stored
bytes no longer hash to the recorded sha256. Store methods block; the service
calls them in threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

from mlbus.errors import (
    ConfigError,
    InvalidInput,
    NotFound,
    PermanentError,
    RetryableError,
    StatusName,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_S3_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_MAX_LOCATION = 1024  # S3's longest key; a local path this long fits PATH_MAX
_MAX_NAME = 255  # NAME_MAX of ext4, xfs, btrfs


class ArtifactCorrupted(PermanentError):
    """A stored artifact no longer hashes to the sha256 recorded for it."""

    status: StatusName = "DATA_LOSS"


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


def _verified(location: str, data: bytes, sha256: str) -> bytes:
    """`data`, read from `location`, unless it does not hash to the recorded `sha256`."""
    actual = sha256_hex(data)
    if actual != sha256:
        raise ArtifactCorrupted(
            f"artifact {location} is corrupted: its sha256 is {actual}, "
            f"the registry recorded {sha256}"
        )
    return data


def _relative_location(location: str) -> PurePosixPath:
    """`location` as a relative path, refused unless it cannot climb out of a root."""
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
    # Longer names no file system holds: the OSError (ENAMETOOLONG) answered INTERNAL
    # (found by the soak's gRPC fuzz).
    if len(location) > _MAX_LOCATION or any(len(part) > _MAX_NAME for part in relative.parts):
        raise InvalidInput(
            f"artifact location {location[:80]!r}… is longer than a store path can be "
            f"({_MAX_LOCATION} characters, {_MAX_NAME} per name)"
        )
    return relative


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
        return _verified(location, self.read_unverified(location), sha256)

    def read_unverified(self, location: str) -> bytes:
        path = self._path(location)
        if not path.is_file():
            raise NotFound(f"no artifact at {location!r} in the store {self.root}")
        return path.read_bytes()

    def uri(self, location: str) -> str:
        return self._path(location).as_uri()

    def _path(self, location: str) -> Path:
        """The file for `location`, refused unless it stays inside the root."""
        path = (self.root / _relative_location(location)).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidInput(f"artifact location {location!r} leads outside the store")
        return path


class S3ArtifactStore:
    """Artifacts in a bucket of an S3-compatible object store, under a key prefix.

    Keys are `<prefix>/<location>`; a PUT is atomic, so readers never see half
    an object, and `put` always uploads (the same bytes land under the same key,
    which also repairs an object that was tampered with). Credentials and region
    come from boto3's usual chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    `AWS_REGION`, profiles, instance roles); `endpoint_url` points at a server
    other than AWS (MinIO, Ceph, …), addressed path-style.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        timeout_s: float = 30.0,
        client: Any = None,
    ) -> None:
        prefix = prefix.strip("/")
        if not _S3_BUCKET.match(bucket):
            raise ConfigError(f"{bucket!r} is not an S3 bucket name")
        if prefix and (
            "\\" in prefix
            or "\x00" in prefix
            or PurePosixPath(prefix).as_posix() != prefix
            or {".", ".."} & set(prefix.split("/"))
        ):
            raise ConfigError(f"S3 key prefix {prefix!r} is not a plain relative path")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self._client = client if client is not None else _s3_client(endpoint_url, timeout_s)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def put(self, data: bytes) -> StoredArtifact:
        """Upload `data` under its hash (idempotent: the same bytes land under the same key)."""
        digest = sha256_hex(data)
        location = content_location(digest)
        key = self._key(location)
        self._call(
            "store",
            location,
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/octet-stream"
            ),
        )
        return StoredArtifact(location, self.uri(location), digest, len(data))

    def read(self, location: str, sha256: str) -> bytes:
        """The artifact's bytes, or `ArtifactCorrupted` if they do not hash to `sha256`."""
        return _verified(location, self.read_unverified(location), sha256)

    def read_unverified(self, location: str) -> bytes:
        key = self._key(location)

        def get() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        data: bytes = self._call("read", location, get)
        return data

    def uri(self, location: str) -> str:
        return f"s3://{self.bucket}/{self._key(location)}"

    def _key(self, location: str) -> str:
        """The object key for `location`: always `<prefix>/…`, never above the prefix."""
        relative = _relative_location(location)
        if relative.as_posix() != location:  # `a//b`, `./a`, `a/`: keys are taken literally
            raise InvalidInput(
                f"artifact location {location!r} is not a normalized path inside the store"
            )
        return f"{self.prefix}/{location}" if self.prefix else location

    def _call(self, doing: str, location: str, call: Any) -> Any:
        """Run one S3 request, its failures turned into the registry's error classes."""
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"{location!r} in the store {self.url}"
        try:
            return call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = f"could not {doing} artifact {where}: {code} {error.get('Message', '')}"
            if code in ("NoSuchKey", "NotFound") or (status == 404 and code != "NoSuchBucket"):
                raise NotFound(f"no artifact at {where}") from exc
            if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout"):
                raise RetryableError(message) from exc
            raise PermanentError(message) from exc  # NoSuchBucket, AccessDenied, bad signature
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise PermanentError(
                f"could not {doing} artifact {where}: no S3 credentials "
                "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile or role)"
            ) from exc
        except BotoCoreError as exc:  # connection refused, timeouts, …
            raise RetryableError(f"could not {doing} artifact {where}: {exc}") from exc


def _s3_client(endpoint_url: str | None, timeout_s: float) -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - boto3 is in the registry extra
        raise ConfigError("an s3:// artifact store needs boto3: install mlbus[registry]") from exc
    config = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    # A session per store: boto3's default session is shared and not thread-safe.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def open_artifact_store(setting: str, *, s3_endpoint_url: str | None = None) -> ArtifactStore:
    """The store a setting names: a folder path, a file:// URL, or `s3://bucket/prefix`.

    An S3 URL may carry its endpoint as `?endpoint_url=http://host:port` (the
    registry settings add `MLBUS_REGISTRY_S3_ENDPOINT_URL` that way); it wins
    over `s3_endpoint_url`.
    """
    parsed = urlparse(setting)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(setting)
        return LocalArtifactStore(path)
    if parsed.scheme == "s3":
        query = parse_qs(parsed.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"endpoint_url"})
        if unknown or not parsed.netloc or parsed.fragment:
            raise ConfigError(
                f"MLBUS_REGISTRY_ARTIFACT_STORE={setting}: expected "
                "s3://bucket/prefix, optionally with ?endpoint_url=http(s)://host:port"
            )
        endpoint = query.get("endpoint_url", [s3_endpoint_url or ""])[-1] or None
        if endpoint is not None and urlparse(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"S3 endpoint {endpoint!r} is not an http(s):// URL")
        return S3ArtifactStore(parsed.netloc, unquote(parsed.path), endpoint_url=endpoint)
    raise ConfigError(
        f"MLBUS_REGISTRY_ARTIFACT_STORE={setting}: expected a folder, a file:// URL "
        "or s3://bucket/prefix"
    )
