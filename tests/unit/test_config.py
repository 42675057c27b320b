"""Settings: one clear error naming the variable, and the S3 endpoint carried in store URLs."""

from __future__ import annotations

import pytest

from mlbus.config import MlbusSettings, load_settings, with_s3_endpoint
from mlbus.errors import ConfigError


def test_an_invalid_shared_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUS_KAFKA_ACKS", "2")
    with pytest.raises(ConfigError, match=r"MLBUS_KAFKA_ACKS: Input should be .* \(got '2'\)"):
        load_settings(MlbusSettings)


def test_redis_url_is_read_from_the_conventional_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLBUS_REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    assert load_settings(MlbusSettings).redis.url == "redis://cache:6379/2"


@pytest.mark.parametrize(
    ("url", "endpoint", "expected"),
    [
        (
            "s3://b/p",
            "http://127.0.0.1:9000",
            "s3://b/p?endpoint_url=http%3A%2F%2F127.0.0.1%3A9000",
        ),
        ("s3://b/p?x=1", "http://h:1", "s3://b/p?x=1&endpoint_url=http%3A%2F%2Fh%3A1"),
        ("s3://b/p?endpoint_url=http://a:1", "http://b:2", "s3://b/p?endpoint_url=http://a:1"),
        ("s3://b/p", None, "s3://b/p"),
        ("/data/offline", "http://h:1", "/data/offline"),
        ("file:///data", "http://h:1", "file:///data"),
    ],
)
def test_with_s3_endpoint(url: str, endpoint: str | None, expected: str) -> None:
    assert with_s3_endpoint(url, endpoint) == expected
