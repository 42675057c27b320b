"""The offline store on s3:// (pyarrow.fs.S3FileSystem) against moto's S3 emulator
over real HTTP."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from mlbus.errors import ConfigError
from mlbus.example import fraud_spec_path
from mlbus.features import FeaturesSettings
from mlbus.featurestore import OfflineRow, OfflineStore
from mlbus.spec import FeatureDef, load_spec
from tests.integration.s3_server import S3Server, s3_server_fixture  # noqa: F401

pytestmark = pytest.mark.integration
T0 = 1_735_689_600_000  # 2025-01-01T00:00Z
DAY_MS = 86_400_000
VIEW = "card_activity"


@pytest.fixture
def features() -> list[FeatureDef]:
    return list(load_spec(fraud_spec_path()).view_features(VIEW))


def sample_rows(features: list[FeatureDef]) -> list[OfflineRow]:
    values = {f.name: None for f in features}
    rows = [
        OfflineRow(
            f"card_{i % 3:06d}",
            f"e{i}",
            T0 + i * (DAY_MS // 3),  # three days of events
            T0 + i * (DAY_MS // 3),
            T0 + i * (DAY_MS // 3) + 5,
            {**values, "count_10m": i},
        )
        for i in range(9)
    ]
    return [*rows, rows[4]]  # a replayed row: readers de-duplicate by event id


def test_rows_round_trip_through_s3_with_the_local_fingerprint(
    s3_server: S3Server, unique: str, tmp_path: Path, features: list[FeatureDef]
) -> None:
    settings = FeaturesSettings(
        data_dir=tmp_path,
        offline_url=f"s3://{s3_server.bucket}/offline-{unique}",
        s3_endpoint_url=s3_server.endpoint_url,
    )
    store = OfflineStore(settings.resolved_offline_url())
    assert isinstance(store.fs, pafs.S3FileSystem)
    local = OfflineStore(tmp_path / "offline")
    rows = sample_rows(features)

    written = store.write_rows(VIEW, 1, features, rows)
    local.write_rows(VIEW, 1, features, rows)

    prefix = f"offline-{unique}/{VIEW}/v1/"
    keys = s3_server.keys(f"offline-{unique}/")
    assert keys == sorted(path.removeprefix(f"{s3_server.bucket}/") for path in written)
    assert [key.removeprefix(prefix).split("/")[0] for key in keys] == [
        "date=2025-01-01",
        "date=2025-01-02",
        "date=2025-01-03",
    ]

    files = store.files(VIEW, 1)
    assert files == sorted(written)
    table = store.read(files)
    assert table.equals(local.read(local.files(VIEW, 1)))
    assert table.column("event_id").to_pylist() == [f"e{i}" for i in range(9)]
    assert table.column("count_10m").to_pylist() == list(range(9))
    assert store.read(files, dedupe=False).num_rows == 10

    fingerprint = store.fingerprint(files)
    client = s3_server.client()
    downloaded = sorted(
        hashlib.sha256(
            client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
        ).hexdigest()
        for key in keys
    )
    assert fingerprint == hashlib.sha256("\n".join(downloaded).encode()).hexdigest()
    reopened = OfflineStore(settings.resolved_offline_url())
    assert reopened.fingerprint(reversed(reopened.files(VIEW, 1))) == fingerprint
    assert local.fingerprint(local.files(VIEW, 1)) == fingerprint  # same rows, same bytes

    jan_2 = datetime(2025, 1, 2, tzinfo=UTC)
    [second_day] = store.files(VIEW, 1, start=jan_2, end=datetime(2025, 1, 3, tzinfo=UTC))
    assert "date=2025-01-02" in second_day
    assert store.read([second_day]).column("event_id").to_pylist() == ["e3", "e4", "e5"]


def test_endpoint_in_the_url_and_bad_urls(
    s3_server: S3Server, unique: str, features: list[FeatureDef]
) -> None:
    url = f"s3://{s3_server.bucket}/inline-{unique}?endpoint_url={s3_server.endpoint_url}"
    store = OfflineStore(url)
    assert store.root == f"{s3_server.bucket}/inline-{unique}"
    store.write_rows(VIEW, 2, features, sample_rows(features)[:2])
    assert len(store.files(VIEW, 2)) == 1
    assert len(s3_server.keys(f"inline-{unique}/")) == 1  # no folder marker objects

    for bad in (
        f"s3://{s3_server.bucket}/x?endpoint_override=127.0.0.1:1",
        f"s3://{s3_server.bucket}/../x?endpoint_url={s3_server.endpoint_url}",
        "s3:///x?endpoint_url=http://127.0.0.1:1",
        f"s3://{s3_server.bucket}/x?endpoint_url=127.0.0.1:1",
    ):
        with pytest.raises(ConfigError):
            OfflineStore(bad)
    with pytest.raises(ValueError, match="s3_endpoint_url"):
        FeaturesSettings(s3_endpoint_url="minio:9000")
