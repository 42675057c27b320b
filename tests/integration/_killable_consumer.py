"""A consumer process for the kill test: records each effect, then hangs on `hang`.

Run as: python _killable_consumer.py BOOTSTRAP TOPIC GROUP EFFECTS_FILE
Each handled value is appended (and fsynced) to EFFECTS_FILE before the handler
returns; on the value b"hang" the handler blocks forever after its effect, so the
parent can SIGKILL it after processing but before the offset commit.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mlbus.bus import Consumer, Publisher, Received, raw_decoder
from mlbus.config import KafkaSettings


async def main(bootstrap: str, topic: str, group: str, effects_path: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap, session_timeout_s=6.0)

    async def handle(msg: Received[bytes | None]) -> None:
        with Path(effects_path).open("ab") as out:  # noqa: ASYNC230 - tiny, and must fsync
            out.write((msg.payload or b"") + b"\n")
            out.flush()
            os.fsync(out.fileno())
        if msg.payload == b"hang":
            await asyncio.Event().wait()

    async with Publisher(kafka, source="kill-test") as publisher:
        consumer: Consumer[bytes | None] = Consumer(
            kafka,
            topics=[topic],
            group_id=group,
            handler=handle,
            decoder=raw_decoder,
            publisher=publisher,
        )
        await consumer.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
