"""A consumer's fetch wait, and a producer's linger, follow where the records go
(ADR 0003 addenda, #25).

Every idle consumer fetches once per wait and the embedded broker spends CPU on each
fetch, so consumers off the freshness path wait longer. The client is a recording
fake here: what is checked is the keyword the consumer hands aiokafka.
"""

from __future__ import annotations

from typing import Any

import pytest

from mlbus.bus import Consumer, Publisher, Received, raw_decoder
from mlbus.bus import _consumer as consumer_module
from mlbus.bus import _publisher as publisher_module
from mlbus.config import KafkaSettings, Latency


class Refused(Exception):
    pass


class RecordingClient:
    """Stands in for AIOKafkaConsumer or AIOKafkaProducer: keeps its keywords, refuses
    to start."""

    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        RecordingClient.made.append(kwargs)

    async def start(self) -> None:
        raise Refused

    async def stop(self) -> None:
        return None


async def _fetch_wait_of(latency: Latency, monkeypatch: pytest.MonkeyPatch) -> int:
    RecordingClient.made = []
    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", RecordingClient)

    async def handle(received: Received[bytes | None]) -> None:
        return None

    consumer: Consumer[bytes | None] = Consumer(
        KafkaSettings(
            bootstrap_servers="127.0.0.1:1",
            fetch_max_wait_ms=80,
            background_fetch_max_wait_ms=700,
        ),
        topics=["t"],
        group_id="g",
        handler=handle,
        decoder=raw_decoder,
        publisher=None,  # type: ignore[arg-type]  # nothing is published before start
        latency=latency,
    )
    with pytest.raises(Refused):
        await consumer.run()
    (kwargs,) = RecordingClient.made
    return int(kwargs["fetch_max_wait_ms"])


async def test_a_consumer_on_the_freshness_path_fetches_with_the_short_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _fetch_wait_of("fresh", monkeypatch) == 80


async def test_a_background_consumer_fetches_with_the_long_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _fetch_wait_of("background", monkeypatch) == 700


def test_the_background_wait_is_its_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUS_KAFKA_BACKGROUND_FETCH_MAX_WAIT_MS", "900")
    kafka = KafkaSettings()
    assert kafka.fetch_wait_ms("background") == 900
    assert kafka.fetch_wait_ms("fresh") == 100  # the freshness path keeps its default


@pytest.mark.parametrize(("latency", "linger_ms"), [("fresh", 5), ("background", 120)])
async def test_a_producer_lingers_by_who_reads_its_records(
    latency: Latency, linger_ms: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    RecordingClient.made = []
    monkeypatch.setattr(publisher_module, "AIOKafkaProducer", RecordingClient)
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", linger_ms=5, background_linger_ms=120)
    with pytest.raises(Refused):
        await Publisher(kafka, source="tests", latency=latency).start()
    (kwargs,) = RecordingClient.made
    assert kwargs["linger_ms"] == linger_ms
