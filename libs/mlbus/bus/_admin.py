"""Topic creation: idempotent, partitions and replication from settings."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from mlbus.config import KafkaSettings

log = logging.getLogger(__name__)


async def ensure_topics(
    kafka: KafkaSettings, topics: Iterable[str], partitions: int | None = None
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    wanted = sorted(set(topics))
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(name, partitions or kafka.topic_partitions, kafka.replication_factor)
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
