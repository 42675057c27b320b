"""Send JSON-lines files to a spec's source topics with confluent-kafka, as any producer would.

    mlbus up --spec examples/fraud/mlbus.yaml            # in another terminal
    mlbus example generate --out data --events 20000
    python examples/produce.py data                      # data/<source>.jsonl → its topic

Each line is sent as is (the JSON value), keyed by the source's entity field.
Events dated after now (chargebacks whose verdict is not known yet) are kept
back and counted: ingestion would reject them as `future_event_time`. The
broker is `--bootstrap`, else MLBUS_KAFKA_BOOTSTRAP_SERVERS, else the one of the
`mlbus up` running in the data folder (MLBUS_DATA_DIR, default `.mlbus/`).

Needs confluent-kafka (librdkafka 2.2.0 or newer): `pip install 'confluent-kafka>=2.2'`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bootstrap_servers(explicit: str | None) -> str:
    if explicit:
        return explicit
    from mlbus.config import MlbusSettings, load_settings
    from mlbus.runstate import discover

    found = discover(load_settings(MlbusSettings)).kafka.bootstrap_servers
    if not found:
        sys.exit("no broker: start `mlbus up`, or pass --bootstrap host:port")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="Folder with <source>.jsonl files.")
    parser.add_argument("--spec", type=Path, default=HERE / "fraud" / "mlbus.yaml")
    parser.add_argument("--bootstrap", help="host:port of the broker.")
    args = parser.parse_args()

    try:
        from confluent_kafka import Producer, libversion
    except ImportError:
        sys.exit("this example needs confluent-kafka: pip install 'confluent-kafka>=2.2'")
    if libversion()[1] < 0x020200FF:
        sys.exit(f"librdkafka {libversion()[0]} is too old for the embedded broker: 2.2.0 or newer")
    from mlbus.spec import load_spec

    spec = load_spec(args.spec)
    bootstrap = bootstrap_servers(args.bootstrap)
    # One request in flight per connection: a retried request cannot overtake the next, so
    # each card's events stay in time order (the embedded broker has no idempotent producer).
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            "max.in.flight.requests.per.connection": 1,
        }
    )
    failed: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    # Labels last: a label source names the event it labels, which should be in first.
    sources = sorted(spec.sources.items(), key=lambda item: item[1].kind == "labels")
    for name, source in sources:
        path = args.folder / f"{name}.jsonl"
        if not path.exists():
            continue
        now = datetime.now(UTC) + timedelta(seconds=source.contract.allowed_skew_s)
        sent = held_back = 0
        with path.open("rb") as lines:
            for line in lines:
                event = json.loads(line)
                when = datetime.fromisoformat(str(event[source.event_time]))
                if when > now:
                    held_back += 1
                    continue
                key = event.get(source.entity)
                while True:
                    try:
                        producer.produce(
                            source.topic,
                            value=line.rstrip(b"\n"),
                            key=None if key is None else str(key).encode(),
                            on_delivery=delivered,
                        )
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.5)
                sent += 1
                producer.poll(0)
        producer.flush(60)
        note = f", {held_back:,} dated after now kept back" if held_back else ""
        print(f"{path}: {sent:,} events sent to {source.topic}{note}")
    if failed:
        print(f"{len(failed):,} events not delivered, first: {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
