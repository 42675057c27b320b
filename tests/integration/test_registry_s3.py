"""The registry's s3:// artifact store against moto's S3 emulator, over
real HTTP.

Same guarantees as the folder store: content-addressed keys under the prefix,
a hash check on every read (a tampered object is DATA_LOSS), no location that
leads out of the prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mlbus.errors import ConfigError, InvalidInput, NotFound, PermanentError, RetryableError
from mlbus.events import ModelRegistered
from mlbus.registry import NewVersion, Registry, RegistryServer, RegistrySettings
from mlbus.registry import _store as db
from mlbus.registry._artifacts import (
    ArtifactCorrupted,
    S3ArtifactStore,
    content_location,
    open_artifact_store,
)
from mlbus.registry_client import RegistryClient
from tests.integration.s3_server import S3Server, s3_server_fixture  # noqa: F401
from tests.integration.test_registry_store import RecordingSink
from tests.unit.test_registry_onnx import model_spec, tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture
def store_url(s3_server: S3Server, unique: str) -> str:
    """A fresh prefix per test, in the session's bucket."""
    return f"s3://{s3_server.bucket}/models-{unique}"


@pytest.fixture
def settings(s3_server: S3Server, store_url: str, tmp_path: Path) -> RegistrySettings:
    return RegistrySettings(
        data_dir=tmp_path,
        artifact_store=store_url,
        s3_endpoint_url=s3_server.endpoint_url,
        grpc_port=0,
        spec=None,
    )


@pytest.fixture
async def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def registry(settings: RegistrySettings, sink: RecordingSink) -> AsyncIterator[Registry]:
    artifacts = open_artifact_store(settings.resolved_artifact_store())
    assert isinstance(artifacts, S3ArtifactStore)
    store = db.RegistryStore(settings.resolved_database_url())
    await asyncio.to_thread(store.upgrade)
    reg = Registry(store, artifacts, sink, spec=model_spec())
    await reg.start()
    try:
        yield reg
    finally:
        await reg.stop()
        store.dispose()


def prefix_of(url: str) -> str:
    return url.split("/", 3)[3]


async def test_registered_model_lands_under_its_hash_and_reads_back_verified(
    registry: Registry, sink: RecordingSink, s3_server: S3Server, store_url: str
) -> None:
    model = tiny_model(3.0)
    digest = hashlib.sha256(model).hexdigest()
    result = await registry.register(NewVersion(model="fraud", content=model))

    prefix = prefix_of(store_url)
    assert s3_server.keys(f"{prefix}/") == [f"{prefix}/sha256/{digest[:2]}/{digest}.onnx"]
    assert result.version.sha256 == digest
    assert result.version.artifact_uri == f"{store_url}/{content_location(digest)}"
    await registry.publish_pending()
    [event] = [e for _, e in sink.events if isinstance(e, ModelRegistered)]
    assert event.artifact_uri == result.version.artifact_uri

    info, data = await registry.artifact("fraud", 1)
    assert data == model
    assert info.sha256 == digest

    again = await registry.register(NewVersion(model="fraud", content=model))
    assert again.version.version == 2
    assert s3_server.keys(f"{prefix}/") == [f"{prefix}/sha256/{digest[:2]}/{digest}.onnx"]


async def test_a_tampered_object_is_refused_as_data_loss_and_a_new_put_repairs_it(
    registry: Registry, s3_server: S3Server, store_url: str
) -> None:
    model = tiny_model(5.0)
    result = await registry.register(NewVersion(model="fraud", content=model))
    key = f"{prefix_of(store_url)}/{content_location(result.version.sha256)}"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=tiny_model(6.0))

    with pytest.raises(ArtifactCorrupted, match="corrupted") as refused:
        await registry.artifact("fraud", 1)
    assert refused.value.grpc_status == grpc.StatusCode.DATA_LOSS

    await registry.register(NewVersion(model="fraud", content=model))  # same bytes, same key
    assert (await registry.artifact("fraud", 1))[1] == model


async def test_locations_never_leave_the_prefix(
    registry: Registry, s3_server: S3Server, store_url: str
) -> None:
    prefix = prefix_of(store_url)
    client = s3_server.client()
    # A valid model just outside the prefix, and one a trainer uploaded inside it.
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}-sibling/m.onnx", Body=tiny_model())
    client.put_object(Bucket=s3_server.bucket, Key="outside.onnx", Body=tiny_model())
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/incoming/m.onnx", Body=tiny_model())

    for location in (
        f"../{prefix}-sibling/m.onnx",
        "sha256/../../outside.onnx",
        "/outside.onnx",
        "incoming\\..\\..\\outside.onnx",
        "incoming//m.onnx",
        "./incoming/m.onnx",
        "",
        "m\x00.onnx",
    ):
        with pytest.raises(InvalidInput, match="store"):
            await registry.register(NewVersion(model="fraud", location=location))

    with pytest.raises(NotFound, match="no artifact"):
        await registry.register(NewVersion(model="fraud", location="incoming/missing.onnx"))
    by_location = await registry.register(NewVersion(model="fraud", location="incoming/m.onnx"))
    digest = hashlib.sha256(tiny_model()).hexdigest()
    assert by_location.version.sha256 == digest
    # The registry keeps its own content-addressed copy; every key it wrote is under the prefix.
    assert s3_server.keys(f"{prefix}/") == sorted(
        [f"{prefix}/incoming/m.onnx", f"{prefix}/sha256/{digest[:2]}/{digest}.onnx"]
    )

    with pytest.raises(InvalidInput, match="sha256"):
        content_location("../../" + "0" * 58)


async def test_download_through_grpc_with_the_endpoint_setting(
    settings: RegistrySettings, s3_server: S3Server, store_url: str
) -> None:
    model = tiny_model(9.0)
    async with (
        RegistryServer(settings, sink=RecordingSink(), host="127.0.0.1") as server,
        RegistryClient(f"127.0.0.1:{server.port}") as client,
    ):
        registered = await client.register("churn", model)
        assert registered.version.artifact_uri.startswith(f"{store_url}/sha256/")
        assert await client.download_artifact("churn", 1) == model

        key = f"{prefix_of(store_url)}/{content_location(registered.version.sha256)}"
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"tampered")
        with pytest.raises(PermanentError, match="corrupted"):
            await client.download_artifact("churn", 1)


def test_store_urls_and_failures(s3_server: S3Server) -> None:
    store = open_artifact_store(f"s3://{s3_server.bucket}/a/b/?endpoint_url=http://127.0.0.1:1")
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        s3_server.bucket,
        "a/b",
        "http://127.0.0.1:1",
    )
    assert store.uri("sha256/ab/x.onnx") == f"s3://{s3_server.bucket}/a/b/sha256/ab/x.onnx"
    with pytest.raises(RetryableError, match="could not read"):  # nothing listens on port 1
        store.read_unverified("sha256/ab/x.onnx")

    missing_bucket = S3ArtifactStore("no-such-bucket", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        missing_bucket.put(b"model")

    for bad in (
        "s3:///models",
        "s3://bucket/../up",
        "s3://bucket/x?region=eu",
        "s3://bucket/a/./b",
    ):
        with pytest.raises(ConfigError, match=r"s3://bucket/prefix|prefix"):
            open_artifact_store(bad)
    with pytest.raises(ValueError, match="s3_endpoint_url"):
        RegistrySettings(s3_endpoint_url="127.0.0.1:9000")
