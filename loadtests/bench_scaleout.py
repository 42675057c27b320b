"""Scale-out: events/s with one versus two replicas, and recovery after a replica dies.

Real `python -m mlbus.ingestion` / `python -m mlbus.features` processes (as
`mlbus up` runs them) on one embedded broker and a real Redis; topics have 3
partitions. Same run, interleaved, so machine load hits every variant alike:

- throughput, per stage: 1 or 2 replicas join their group (3 partitions); once
  the broker reports it stable with all of them, a backlog of N records is sent
  at once (a producer is several times faster than a replica) and timed until
  every record is processed (per the replicas' own /metrics). Ingestion gets
  raw payments; features gets the `ingest.validated` events ingestion would
  write. The ratio two/one is the speed-up: every replica is one
  single-threaded Python process, so it is bounded by the free cores.
- recovery: 2 replicas of each, a steady stream below capacity; one replica of
  each is stopped — SIGTERM (graceful: it leaves the group, the baseline) or
  SIGKILL (its partitions stay held until its session expires). Measured from
  the stop: takeover (the survivor processes a partition it did not own before,
  per its /metrics) and caught up (every event sent so far is validated, and
  counted in Redis).

    python loadtests/bench_scaleout.py [--events 40000] [--repeats 2] [--rate 500]
                                       [--only throughput|recovery] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from _harness import Benchmark, console
from mlbus.bus import encode_event, ensure_topics, event_headers
from mlbus.config import KafkaSettings
from mlbus.events import INGEST_REJECTED, INGEST_VALIDATED, IngestValidated
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OnlineStore
from mlbus.runtime import EmbeddedBroker, EmbeddedRedis, free_port, local_redis_url
from mlbus.runtime._process import spawn, terminate

SESSION_TIMEOUT_S = 6.0  # as the tests: the embedded broker joins in about half of it
SESSION = "session timeout"
PARTITIONS = 3
CARDS = 200
VIEW, VIEW_VERSION = "card_activity", 1
Headers = list[tuple[str, bytes]]


@dataclass(eq=False)
class Replica:
    name: str
    group: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def scrape(self, topic: str) -> tuple[int, set[int]]:
        """Records this replica processed from `topic`, and the partitions they came from."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        processed, partitions = 0, set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("topic") != topic:
                    continue
                if sample.name == "mlbus_consumer_processed_total":
                    processed += int(sample.value)
                elif sample.name == "mlbus_consumer_lag" and labels.get("group") == self.group:
                    partitions.add(int(labels["partition"]))
        return processed, partitions

    async def poll(self, topic: str) -> tuple[int, set[int]]:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}; see {self.log}")
        return await asyncio.to_thread(self.scrape, topic)


@dataclass
class Run:
    """One spec (source topic, source name), groups and key prefix of its own."""

    root: Path
    kafka: KafkaSettings
    redis_url: str
    tag: str

    def __post_init__(self) -> None:
        self.source_topic = f"bench.tx.{self.tag}"
        self.source_name = f"tx_{self.tag}"
        self.spec = self.root / f"mlbus-{self.tag}.yaml"
        self.spec.write_text(
            fraud_spec_path()
            .read_text()
            .replace("payments.transactions.v1", self.source_topic)
            .replace("payments.chargebacks.v1", f"bench.cb.{self.tag}")
            .replace("  transactions:\n", f"  {self.source_name}:\n")
            .replace("source: transactions", f"source: {self.source_name}")
        )
        self.groups = {"ingestion": f"ingest-{self.tag}", "features": f"features-{self.tag}"}
        self.prefix = f"bench-scale-{self.tag}"

    def env(self) -> dict[str, str]:
        return {
            "MLBUS_SPEC": str(self.spec),
            "MLBUS_DATA_DIR": str(self.root / "data"),
            "MLBUS_KAFKA_BOOTSTRAP_SERVERS": self.kafka.require_bootstrap(),
            "MLBUS_KAFKA_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
            "MLBUS_KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
            "MLBUS_REDIS_URL": self.redis_url,
            "MLBUS_REDIS_KEY_PREFIX": self.prefix,
            "MLBUS_INGESTION_GROUP_ID": self.groups["ingestion"],
            "MLBUS_FEATURES_GROUP_ID": self.groups["features"],
            "MLBUS_FEATURES_GRPC_PORT": "0",
            "MLBUS_FEATURES_GRPC_HOST": "127.0.0.1",
            "MLBUS_FEATURES_OFFLINE_URL": str(self.root / "offline" / self.tag),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, service: str, side: str) -> Replica:
        name = f"{service}-{side}-{self.tag}"
        port = free_port()
        env = {**self.env(), "MLBUS_KAFKA_CLIENT_ID": name}
        env["MLBUS_TELEMETRY_METRICS_PORT"] = str(port)
        log = self.root / "logs" / f"{name}.log"
        proc = spawn([sys.executable, "-m", f"mlbus.{service}"], log, env=env)
        return Replica(name, self.groups[service], proc, port, log)


def payments(n: int, tag: str, start: int = 0) -> list[tuple[bytes, bytes]]:
    """(key, JSON) of n valid payments over the last minutes, keyed by card."""
    base = datetime.now(UTC) - timedelta(minutes=30)
    out = []
    for i in range(start, start + n):
        card = f"card_{i % CARDS:06d}"
        event = {
            "transaction_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{tag}/{i}")),
            "card_id": card,
            "merchant_id": f"m_{i % 997:05d}",
            "amount": round(1 + (i * 7919 % 50000) / 100, 2),
            "merchant_category": "retail",
            "country": "US",
            "channel": "online",
            "ts": (base + timedelta(milliseconds=i)).isoformat(),
        }
        out.append((card.encode(), json.dumps(event).encode()))
    return out


async def send_all(
    producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    futures = [await producer.send(topic, value, key=key) for key, value in records]
    await asyncio.gather(*futures)


async def wait_stable(
    kafka: KafkaSettings, group: str, replicas: list[Replica], hold_s: float = 2.0
) -> None:
    """Until the broker has reported the group Stable with exactly these members for
    `hold_s` (it says Stable a moment before the members have their assignments)."""
    names = sorted(r.name for r in replicas)
    stable_since: float | None = None
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        async with asyncio.timeout(90):
            while True:
                for replica in replicas:
                    if replica.proc.poll() is not None:
                        raise RuntimeError(f"{replica.name} exited; see {replica.log}")
                (response,) = await admin.describe_consumer_groups([group])
                state, members = response.groups[0][2], response.groups[0][-1]
                owners = sorted(str(m[0]).rsplit("-", 5)[0] for m in members)
                if state == "Stable" and owners == names:
                    stable_since = stable_since or time.perf_counter()
                    if time.perf_counter() - stable_since >= hold_s:
                        return
                else:
                    stable_since = None
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def start_group_at_end(kafka: KafkaSettings, group: str, topic: str) -> None:
    """Commit the topic's end offsets for `group`, so it reads only what comes next."""
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        # The embedded broker answers ListOffsets(latest) with the last batch's first
        # offset + 1, so `end_offsets` can fall short; the high watermark a fetch
        # reports is right. Start one batch short at most, and fetch until it is known.
        for tp, offset in (await consumer.end_offsets(partitions)).items():
            consumer.seek(tp, offset)
        async with asyncio.timeout(30):
            while any(consumer.highwater(tp) is None for tp in partitions):
                await consumer.getmany(timeout_ms=200)
        await consumer.commit({tp: consumer.highwater(tp) for tp in partitions})
    finally:
        await consumer.stop()


def validated_records(run: Run, n: int) -> list[tuple[bytes, bytes, Headers]]:
    """(key, value, headers) of n `ingest.validated` events of this run's source, as the
    ingestion service writes them, for the feature stage's backlog."""
    out = []
    for i, (key, raw) in enumerate(payments(n, run.tag)):
        payload = json.loads(raw)
        event = IngestValidated(
            event_id=payload["transaction_id"],
            source=run.source_name,
            contract_version=1,
            entity_id=payload["card_id"],
            event_time=datetime.fromisoformat(payload["ts"]),
            payload=payload,
            source_topic=run.source_topic,
            source_partition=0,
            source_offset=i,
        )
        out.append((key, encode_event(event), event_headers(event, "bench")))
    return out


async def stage_rate(
    kafka: KafkaSettings,
    replicas: list[Replica],
    group: str,
    topic: str,
    backlog: list[tuple[bytes, bytes, Headers]],
) -> float:
    """Records/s: the replicas' group is stable first, then the backlog is sent at once
    (a producer is several times faster than a replica) and timed until all is processed."""
    await wait_stable(kafka, group, replicas)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=20, max_batch_size=262_144)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in backlog
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    while True:
        done = sum([(await r.poll(topic))[0] for r in replicas])
        if done >= len(backlog):
            return len(backlog) / (time.perf_counter() - started)
        await asyncio.sleep(0.02)


async def throughput(
    root: Path, kafka: KafkaSettings, redis_url: str, n: int, replicas: int
) -> tuple[float, float]:
    """(ingestion events/s, features events/s) with `replicas` replicas of each, per stage."""
    run = Run(root, kafka, redis_url, uuid.uuid4().hex[:8])
    await ensure_topics(
        kafka, [run.source_topic, INGEST_VALIDATED, INGEST_REJECTED], partitions=PARTITIONS
    )
    await start_group_at_end(kafka, run.groups["features"], INGEST_VALIDATED)
    sides = "ab"[:replicas]
    raw = [(key, value, []) for key, value in payments(n, run.tag)]
    ingest = [run.start("ingestion", s) for s in sides]
    try:
        ingest_rate = await stage_rate(
            kafka, ingest, run.groups["ingestion"], run.source_topic, raw
        )
    finally:
        for r in ingest:
            terminate(r.proc, grace_s=20)
    # The feature stage gets a backlog of its own (the ingestion stage's output would
    # be consumed while the group is still joining).
    await start_group_at_end(kafka, run.groups["features"], INGEST_VALIDATED)
    validated = validated_records(run, n)
    features = [run.start("features", s) for s in sides]
    try:
        features_rate = await stage_rate(
            kafka, features, run.groups["features"], INGEST_VALIDATED, validated
        )
    finally:
        for r in features:
            terminate(r.proc, grace_s=20)
    return ingest_rate, features_rate


class ValidatedReader:
    """Distinct event ids validated from one source topic (reads the topic from the start)."""

    def __init__(self, kafka: KafkaSettings, source_topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            INGEST_VALIDATED, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
        )
        self._source = source_topic.encode()
        self.ids: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.start()
        try:
            while not stop.is_set():
                for batch in (await self._consumer.getmany(timeout_ms=100)).values():
                    for record in batch:
                        if self._source in record.value:  # cheap filter before parsing
                            body = json.loads(record.value)
                            if body["source_topic"] == self._source.decode():
                                self.ids.add(body["event_id"])
        finally:
            await self._consumer.stop()


async def recovery(
    root: Path, kafka: KafkaSettings, redis_url: str, rate: float, stop_signal: signal.Signals
) -> dict[str, float]:
    """Seconds from stopping one replica of each service to the survivor's takeover of its
    partitions, and until the whole path has caught up with the stream again."""
    run = Run(root, kafka, redis_url, uuid.uuid4().hex[:8])
    await ensure_topics(
        kafka, [run.source_topic, INGEST_VALIDATED, INGEST_REJECTED], partitions=PARTITIONS
    )
    await start_group_at_end(kafka, run.groups["features"], INGEST_VALIDATED)
    services = ("ingestion", "features")
    replicas: dict[tuple[str, str], Replica] = {}
    topics = {"ingestion": run.source_topic, "features": INGEST_VALIDATED}
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    reader = ValidatedReader(kafka, run.source_topic)
    chunk = max(1, int(rate / 20))  # 20 chunks a second
    slack = 2 * chunk  # what is always in flight in a steady stream
    sent = 0

    async def stream(stop: asyncio.Event) -> None:
        nonlocal sent
        while not stop.is_set():
            tick = time.perf_counter()
            await send_all(producer, run.source_topic, payments(chunk, run.tag, sent))
            sent += chunk
            await asyncio.sleep(max(0.0, 0.05 - (time.perf_counter() - tick)))

    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        # One replica first, then the second: the group rebalances once, as a real scale-out
        # does. (The embedded broker numbers its first generation 0, and aiokafka sends no
        # LeaveGroup from generation 0, so a SIGTERM there would wait out the session too.)
        for sides in ("a", "ab"):
            for svc in services:
                replicas[(svc, sides[-1])] = run.start(svc, sides[-1])
            await asyncio.gather(
                *(
                    wait_stable(kafka, run.groups[svc], [replicas[(svc, x)] for x in sides])
                    for svc in services
                )
            )
        tasks = [asyncio.create_task(stream(stop)), asyncio.create_task(reader.run(stop))]
        await asyncio.sleep(3.0)  # steady state: both replicas of each busy
        owned = {key: (await r.poll(topics[key[0]]))[1] for key, r in replicas.items()}
        for svc in services:
            if not owned[(svc, "a")] or not owned[(svc, "b")]:
                raise RuntimeError(f"{svc}: work not shared before the stop: {owned}")
        console.print(
            "  partitions before the stop: "
            + ", ".join(f"{svc}-{side} {sorted(p)}" for (svc, side), p in owned.items())
        )
        stopped_at = time.perf_counter()
        for svc in services:
            replicas[(svc, "b")].proc.send_signal(stop_signal)
        seconds: dict[str, float] = {}
        cards = [f"card_{i:06d}" for i in range(CARDS)]
        counted = 0

        async def measure(store: OnlineStore) -> None:
            nonlocal counted
            while len(seconds) < 4:
                await asyncio.sleep(0.05)
                now = time.perf_counter() - stopped_at
                target = sent - slack
                for svc in services:
                    _, partitions = await replicas[(svc, "a")].poll(topics[svc])
                    if owned[(svc, "b")] <= partitions:
                        seconds.setdefault(f"takeover {svc}", now)
                # Caught up counts only after the takeover: before it, the stopped replica's
                # partitions may simply have had nothing due.
                if len(reader.ids) >= target and "takeover ingestion" in seconds:
                    seconds.setdefault("caught up ingestion", now)
                rows = await store.get_many(VIEW, VIEW_VERSION, cards, ["count_24h"])
                counted = sum(int(str(r.values.get("count_24h", 0))) for r in rows)
                if counted >= target and "takeover features" in seconds:
                    seconds.setdefault("caught up features", now)

        async with OnlineStore.from_url(redis_url, key_prefix=run.prefix) as store:
            try:
                await asyncio.wait_for(measure(store), 120)
            except TimeoutError:
                raise RuntimeError(
                    f"no recovery after {stop_signal.name}: {seconds}, sent {sent}, "
                    f"validated {len(reader.ids)}, counted {counted}; logs in {run.root / 'logs'}"
                ) from None
        seconds["caught up"] = max(seconds["caught up ingestion"], seconds["caught up features"])
        return seconds
    finally:
        stop.set()
        for task in tasks:
            await task
        await producer.stop()
        for r in replicas.values():
            terminate(r.proc, grace_s=20)


async def main(events: int, repeats: int, rate: float, keep: Path | None, parts: set[str]) -> bool:
    bench = Benchmark(
        "scaleout" if len(parts) > 1 else f"scaleout_{next(iter(parts))}",
        "events/s with 1 vs 2 replicas; recovery after SIGKILL vs SIGTERM of a replica",
        events=events,
        repeats=repeats,
        stream_rate=rate,
        partitions=PARTITIONS,
        session_timeout_s=SESSION_TIMEOUT_S,
    )
    with tempfile.TemporaryDirectory(prefix="mlbus-bench-scaleout-") as tmp:
        root = Path(keep or tmp)
        with EmbeddedBroker(root / "logs") as broker:
            redis_url = local_redis_url()
            embedded = None if redis_url else EmbeddedRedis(root / "logs")
            if embedded is not None:
                redis_url = embedded.__enter__().url
            assert redis_url is not None
            kafka = KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers, session_timeout_s=SESSION_TIMEOUT_S
            )
            try:
                for run in range(repeats):
                    for replicas in (1, 2) if "throughput" in parts else ():
                        variant = f"{replicas} replica" + ("s" if replicas > 1 else "")
                        ingest, features = await throughput(
                            root, kafka, redis_url, events, replicas
                        )
                        bench.record(
                            variant, "ingestion", ingest, "events/s", higher_is_better=True
                        )
                        bench.record(
                            variant, "features", features, "events/s", higher_is_better=True
                        )
                        console.print(
                            f"run {run + 1}/{repeats}, {variant}: ingestion {ingest:,.0f}, "
                            f"features {features:,.0f} events/s"
                        )
                    for sig in (signal.SIGTERM, signal.SIGKILL) if "recovery" in parts else ():
                        variant = f"{sig.name} one of 2"
                        for name, seconds in (
                            await recovery(root, kafka, redis_url, rate, sig)
                        ).items():
                            bench.record(variant, name, seconds, "s", higher_is_better=False)
                        console.print(f"run {run + 1}/{repeats}, {variant}: recovered")
            finally:
                if embedded is not None:
                    embedded.__exit__(None, None, None)
    for stage in ("ingestion", "features") if "throughput" in parts else ():
        bench.goal(f"{stage}: 2 replicas vs 1", "2 replicas", "1 replica", stage, ">=", 1.3)
    kill, term = "SIGKILL one of 2", "SIGTERM one of 2"
    for what in (
        ("takeover ingestion", "takeover features", "caught up") if "recovery" in parts else ()
    ):
        # The configured session timeout as a baseline: a killed member's partitions are
        # held until it expires, so that is what a crash's recovery is measured against.
        bench.record(SESSION, what, SESSION_TIMEOUT_S, "s", higher_is_better=False)
        bench.notes.append(
            f"{what}: SIGKILL/SIGTERM = {bench.ratio(kill, term, what):.2f}, "
            f"SIGKILL/session timeout = {bench.median(kill, what) / SESSION_TIMEOUT_S:.2f}"
        )
    for svc in ("ingestion", "features") if "recovery" in parts else ():
        # docs/operations.md: a graceful stop leaves the group at once (takeover 4-5 s with
        # a 6 s session), a crash holds its partitions until the session expires (~10 s).
        bench.goal(
            f"takeover {svc}: a crash waits out the session, a graceful stop does not",
            kill,
            term,
            f"takeover {svc}",
            ">=",
            1.3,
        )
        bench.goal(
            f"takeover {svc} after a crash: the session expiry and one rejoin",
            kill,
            SESSION,
            f"takeover {svc}",
            "<=",
            2.0,
        )
    if "recovery" in parts:
        bench.goal(
            "caught up after a crash: the takeover, then the held-back stream",
            kill,
            SESSION,
            "caught up",
            "<=",
            3.0,
        )
    if "recovery" in parts:
        bench.notes.append(
            f"a killed member holds its partitions until its session ({SESSION_TIMEOUT_S:.0f} s) "
            "expires; a stopped one leaves the group at once; either way the group then rejoins"
        )
    bench.notes.append(
        f"{os.cpu_count()} cores shared with other work; every replica is one "
        "Python process, so 2 replicas cannot exceed the cores the machine gives them"
    )
    return bench.report()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0, help="stream events/s in recovery")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs)")
    parser.add_argument(
        "--only", choices=["throughput", "recovery"], help="run one half (default: both)"
    )
    args = parser.parse_args()
    parts = {args.only} if args.only else {"throughput", "recovery"}
    ok = asyncio.run(main(args.events, args.repeats, args.rate, args.keep, parts))
    sys.exit(0 if ok else 1)
