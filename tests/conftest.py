"""Session fixtures: a real embedded broker and a real Redis, started once.

Integration tests never mock Kafka or Redis. The broker is the embedded Tansu
binary on a free loopback port; Redis is `REDIS_URL` if set, else a server
answering on 127.0.0.1:6379, else an embedded valkey-server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlbus.config import KafkaSettings
from mlbus.runtime import EmbeddedBroker, EmbeddedRedis, local_redis_url

# Consumer-group joins complete after about half the session timeout on the
# embedded broker; 6 s keeps a join near 3 s (see docs/adr/0003).
TEST_SESSION_TIMEOUT_S = 6.0


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def broker(infra_dir: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(infra_dir / "logs") as running:
        yield running


@pytest.fixture(scope="session")
def kafka(broker: EmbeddedBroker) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        session_timeout_s=TEST_SESSION_TIMEOUT_S,
        topic_partitions=3,
        linger_ms=1,
    )


@pytest.fixture(scope="session")
def redis_url(infra_dir: Path) -> Iterator[str]:
    configured = os.environ.get("REDIS_URL") or local_redis_url()
    if configured:
        yield configured
        return
    with EmbeddedRedis(infra_dir / "logs") as embedded:
        yield embedded.url


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names, so tests never share state."""
    return uuid.uuid4().hex[:10]
