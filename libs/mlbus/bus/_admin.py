"""Topic creation: idempotent, partitions and replication from settings."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from mlbus.config import KafkaSettings

log = logging.getLogger(__name__)


async def ensure_topics(
    kafka: KafkaSettings,
    topics: Iterable[str],
    partitions: int | None = None,
    *,
    retention_s: Mapping[str, int] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    `retention_s` (topic → seconds, 0 or absent: the broker's default) becomes the
    topic's `retention.ms` when it is created here. A topic that exists already keeps
    its retention; if it is shorter than asked, a warning says so (the embedded broker
    cannot alter configs, and on Kafka `kafka-configs --alter` is the operator's call)."""
    wanted = sorted(set(topics))
    retention_s = {t: s for t, s in (retention_s or {}).items() if s > 0}
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        kept = [name for name in wanted if name in existing and name in retention_s]
        if kept:
            await _warn_short_retention(admin, {name: retention_s[name] for name in kept})
        if not missing:
            return []
        new = [
            NewTopic(
                name,
                partitions or kafka.topic_partitions,
                kafka.replication_factor,
                topic_configs=(
                    {"retention.ms": str(retention_s[name] * 1000)} if name in retention_s else {}
                ),
            )
            for name in missing
        ]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:  # another process won the race: fine
            pass
        log.info("created topics %s", ", ".join(missing))
        return missing
    finally:
        await admin.close()


async def topic_retention_ms(kafka: KafkaSettings, topic: str) -> int | None:
    """The topic's `retention.ms` as the broker reports it (None: not reported)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        return (await _retentions_ms(admin, [topic])).get(topic)
    finally:
        await admin.close()


async def _retentions_ms(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> dict[str, int]:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    )
    out = {}
    for response in responses:
        for _, _, _, name, entries in response.resources:
            for entry in entries:
                if entry[0] == "retention.ms" and entry[1] is not None:
                    out[name] = int(entry[1])
    return out


async def _warn_short_retention(admin: AIOKafkaAdminClient, wanted_s: Mapping[str, int]) -> None:
    try:
        held = await _retentions_ms(admin, wanted_s)
    except Exception as exc:  # a broker without DescribeConfigs: nothing to compare
        log.debug("topic configs not described: %s", exc)
        return
    for topic, seconds in wanted_s.items():
        ms = held.get(topic)
        if ms is not None and 0 <= ms < seconds * 1000:
            log.warning(
                "topic %s keeps events %.1f days, less than the %.1f days asked: "
                "raise its retention.ms to %d",
                topic,
                ms / 86_400_000,
                seconds / 86_400,
                seconds * 1000,
            )
