"""The Kafka bus: typed publish and consume of mlbus events (on aiokafka).

    async with Publisher(settings.kafka, source="trainer") as publisher:
        await publisher.publish(TrainingCompleted(...), key=model_name)

    consumer = Consumer.of_events(settings.kafka, types=[ModelPublished],
                                  group_id=None, handler=on_published, publisher=publisher)
    await consumer.run()   # until consumer.stop()

See `_consumer.py` for the delivery guarantees (at-least-once, commit after
effect, retry vs dead-letter) and `_codec.py` for the wire format.
"""

from mlbus.bus._admin import ensure_topics, topic_retention_ms
from mlbus.bus._codec import EventDecoder, encode_event, event_headers, header
from mlbus.bus._consumer import (
    Consumer,
    ConsumerStats,
    Received,
    RetryPolicy,
    dead_letter_event,
    raw_decoder,
)
from mlbus.bus._publisher import OutgoingRecord, Publisher

__all__ = [
    "Consumer",
    "ConsumerStats",
    "EventDecoder",
    "OutgoingRecord",
    "Publisher",
    "Received",
    "RetryPolicy",
    "dead_letter_event",
    "encode_event",
    "ensure_topics",
    "event_headers",
    "header",
    "raw_decoder",
    "topic_retention_ms",
]
