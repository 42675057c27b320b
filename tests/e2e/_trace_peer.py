"""One side of the cross-process trace test: `produce` or `consume`, as a real service would.

    python _trace_peer.py produce BOOTSTRAP TOPIC      # prints the trace id it started
    python _trace_peer.py consume BOOTSTRAP TOPIC GROUP

Each process sets up telemetry the way services do (span file in MLBUS_DATA_DIR).
"""

from __future__ import annotations

import asyncio
import sys

from mlbus.bus import Consumer, Publisher, Received
from mlbus.config import KafkaSettings, MlbusSettings
from mlbus.events import Event, TrainingRequested
from mlbus.telemetry import setup_telemetry, tracer


async def produce(kafka: KafkaSettings, topic: str) -> None:
    async with Publisher(kafka, source="checkout") as publisher:
        with tracer("peer").start_as_current_span("user clicks retrain") as root:
            event = TrainingRequested(model="fraud", reason="manual")
            await publisher.publish(event, key="fraud", topic=topic)
    print(format(root.get_span_context().trace_id, "032x"), flush=True)


async def consume(kafka: KafkaSettings, topic: str, group: str) -> None:
    async with Publisher(kafka, source="trainer") as publisher:
        consumer: Consumer[Event]

        async def handle(msg: Received[Event]) -> None:
            with tracer("peer").start_as_current_span("train model"):
                pass
            consumer.stop()

        consumer = Consumer.of_events(
            kafka,
            types=[TrainingRequested],
            topics=[topic],
            group_id=group,
            handler=handle,
            publisher=publisher,
        )
        await consumer.run()


def main() -> None:
    mode, bootstrap, topic = sys.argv[1:4]
    settings = MlbusSettings()
    telemetry = setup_telemetry("checkout" if mode == "produce" else "trainer", settings)
    kafka = KafkaSettings(bootstrap_servers=bootstrap, session_timeout_s=6.0)
    try:
        if mode == "produce":
            asyncio.run(produce(kafka, topic))
        else:
            asyncio.run(consume(kafka, topic, sys.argv[4]))
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
