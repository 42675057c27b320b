"""`mlbus ingest dlq list|replay` against the real broker."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import typer
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from mlbus.bus import Publisher, ensure_topics, header
from mlbus.cli import _ingest
from mlbus.config import KafkaSettings
from mlbus.events import INGEST_REJECTED, IngestRejected, RejectionReason

pytestmark = pytest.mark.integration


def rejection(source: str, topic: str, offset: int, raw: bytes, code: str) -> IngestRejected:
    return IngestRejected(
        source=source,
        source_topic=topic,
        source_partition=0,
        source_offset=offset,
        raw_b64=base64.b64encode(raw).decode(),
        key_b64=base64.b64encode(b"key-%d" % offset).decode(),
        reasons=(RejectionReason(code=code, message=f"{code} here", field=None),),
    )


async def read_all(kafka: KafkaSettings, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    reader = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()
    got = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                for batch in (await reader.getmany(timeout_ms=200)).values():
                    got.extend(batch)
        for batch in (await reader.getmany(timeout_ms=300)).values():
            got.extend(batch)  # anything beyond `count` would be a bug
    finally:
        await reader.stop()
    for record in got:
        assert header(record.headers, _ingest.REPLAY_HEADER)
    return [(r.key, r.value) for r in got]


async def test_dlq_list_and_replay(kafka: KafkaSettings, unique: str, tmp_path: Path) -> None:
    source, topic = f"src{unique}", f"src.{unique}"
    await ensure_topics(kafka, [INGEST_REJECTED])
    await ensure_topics(kafka, [topic], partitions=1)
    rows = [(b"not json 0", "not_json"), (b'{"amount": -1}', "out_of_range"), (b"nope", "not_json")]
    async with Publisher(kafka, source="tests") as publisher:
        for i, (raw, code) in enumerate(rows):
            await publisher.publish(rejection(source, topic, i, raw, code))

    app = typer.Typer()
    _ingest.register(app)

    @app.callback()
    def main() -> None:
        """Root."""

    env = {
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": kafka.require_bootstrap(),
        "MLBUS_DATA_DIR": str(tmp_path),
    }

    async def cli(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(CliRunner().invoke, app, ["ingest", "dlq", *args], env=env)
        return result.exit_code, result.output

    code, out = await cli("list", "--source", source, "--json")
    assert code == 0, out
    listed = [json.loads(line) for line in out.splitlines()]
    assert sorted(base64.b64decode(d["raw_b64"]) for d in listed) == sorted(r for r, _ in rows)
    assert all(d["source"] == source for d in listed)
    code, out = await cli("list", "--source", source, "--limit", "1")
    assert code == 0
    assert "1 of 3 rejected events" in out

    code, out = await cli("replay", "--source", source, "--reason", "not_json", "--dry-run")
    assert code == 0, out
    assert "would replay 2 events" in out
    code, out = await cli("replay")
    assert code == 2  # no filter: refuses to replay everything by accident

    code, out = await cli("replay", "--source", source, "--reason", "not_json", "--yes")
    assert code == 0, out
    assert sorted(await read_all(kafka, topic, 2)) == [
        (b"key-0", b"not json 0"),
        (b"key-2", b"nope"),
    ]

    position = next(d["position"] for d in listed if d["reasons"][0]["code"] == "out_of_range")
    code, out = await cli("replay", "--offset", position, "--yes")
    assert code == 0, out
    assert (b"key-1", b'{"amount": -1}') in await read_all(kafka, topic, 3)


async def test_dlq_list_reads_every_rejection_of_a_partition_written_in_one_batch(
    kafka: KafkaSettings, unique: str
) -> None:
    source, topic = f"src{unique}", f"src.{unique}"
    await ensure_topics(kafka, [INGEST_REJECTED])
    before = {(d.partition, d.offset) for d in await _ingest.read_dead_letters(kafka)}
    async with Publisher(kafka, source="tests") as publisher:
        # One key, no awaiting per record: the producer puts them in one batch.
        futures = [
            await publisher.send(rejection(source, topic, i, b"x%d" % i, "not_json"), key="one")
            for i in range(40)
        ]
        await asyncio.gather(*futures)

    letters = await _ingest.read_dead_letters(kafka)

    mine = [d for d in letters if (d.partition, d.offset) not in before]
    assert sorted(d.event.source_offset for d in mine if d.event.source == source) == list(
        range(40)
    )
