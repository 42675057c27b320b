"""The Kafka bus: typed publish and consume of mlbus events (on aiokafka).

    async with Publisher(settings.kafka, source="trainer") as publisher:
        await publisher.publish(TrainingCompleted(...), key=model_name)

    consumer = Consumer.of_events(settings.kafka, types=[ModelPublished],
                                  group_id=None, handler=on_published, publisher=publisher)
    await consumer.run()   # until consumer.stop()

See `_consumer.py` for the delivery guarantees (at-least-once, commit after
effect), `_handling.py` for a record's fate (retry vs dead-letter), `_retry.py`
for the one backoff loop, `_deadletter.py` for the dead-letter record, and
`_codec.py` for the wire format, `_remade.py` for a consumer a service makes again.
"""

from mlbus.bus._admin import ensure_topics, topic_retention_ms
from mlbus.bus._codec import (
    EventDecoder,
    PredictionsAndLabelsDecoder,
    encode_event,
    event_headers,
    header,
)
from mlbus.bus._consumer import BatchProcessor, CommitWork, Consumer
from mlbus.bus._deadletter import DeadLetter, dead_letter_event
from mlbus.bus._handling import ConsumerStats
from mlbus.bus._publisher import OutgoingRecord, Publisher
from mlbus.bus._received import Received, raw_decoder
from mlbus.bus._remade import RemadeConsumer
from mlbus.bus._retry import RETRYABLE, RetryPolicy, until_done

__all__ = [
    "RETRYABLE",
    "BatchProcessor",
    "CommitWork",
    "Consumer",
    "ConsumerStats",
    "DeadLetter",
    "EventDecoder",
    "OutgoingRecord",
    "PredictionsAndLabelsDecoder",
    "Publisher",
    "Received",
    "RemadeConsumer",
    "RetryPolicy",
    "dead_letter_event",
    "encode_event",
    "ensure_topics",
    "event_headers",
    "header",
    "raw_decoder",
    "topic_retention_ms",
    "until_done",
]
