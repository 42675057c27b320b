"""Scale-out: two replicas per consumer group, real processes, one of each SIGKILLed mid-stream.

The whole stream path runs as separate `python -m mlbus.<service>` processes
(started like `mlbus up` starts them) against the embedded broker and a real
Redis: a producer → source topic (3 partitions) → two ingestion replicas →
`mlbus.ingest.validated.v1` → two feature replicas → Redis. Each replica has
its own Kafka client id and Prometheus port, so the test can tell them apart.

- work is shared: once each group is stable with both members, each replica
  reports (its own `/metrics`) records processed on partitions the other
  does not hold;
- SIGKILL one replica of each service mid-stream (no commit, no leave-group):
  once its session expires (6 s) the survivor takes over its partitions;
- nothing lost, nothing double counted: every input's event id reaches
  validated (re-publication bounded by one batch per kill, producer retries
  dropped by the shared de-duplication store), every broken record is
  rejected, and each card's counts and sums in Redis equal a brute-force
  count of the input (so replays after the kill are not counted twice); the
  offline rows hold each event once;
- the survivors stop cleanly (exit 0) on SIGTERM afterwards.

Plus `mlbus topics ensure` (the command the Kubernetes Job runs), and a
rebalance landing between two partitions of a fetched batch: the revoke waits
for the batch in hand, so it never commits records that were not flushed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from mlbus.bus import Consumer, Publisher, Received, ensure_topics, raw_decoder
from mlbus.config import KafkaSettings
from mlbus.events import ALL_TOPICS, INGEST_REJECTED, INGEST_VALIDATED
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineRow, OfflineStore, OnlineStore
from mlbus.runtime import free_ports
from mlbus.runtime._process import spawn, terminate
from mlbus.spec import load_spec
from tests.integration._topics import read_to_end

pytestmark = pytest.mark.integration

VIEW, VIEW_VERSION = "card_activity", 1
PARTITIONS = 3
MAX_BATCH = 100  # ingestion records per fetch: the bound on re-publication per kill
CARDS = 60


# ---------------------------------------------------------------- the replicas


@dataclass(eq=False)  # hashable by identity: a replica is a process
class Replica:
    """One service process with its own client id (member-id prefix) and metrics port."""

    name: str
    module: str
    group: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def scrape(self) -> dict[str, Any]:
        """Records processed and the partitions they came from, per its own /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        processed: Counter[str] = Counter()
        partitions: set[tuple[str, int]] = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "mlbus_consumer_processed_total":
                    processed[labels["topic"]] += int(sample.value)
                elif sample.name == "mlbus_consumer_lag" and labels.get("group") == self.group:
                    partitions.add((labels["topic"], int(labels["partition"])))
        return {"processed": processed, "partitions": partitions}

    async def poll_metrics(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.scrape)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.proc.poll()}) ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )


def start_replica(
    name: str, module: str, group: str, env: dict[str, str], logs: Path, port: int
) -> Replica:
    """`port`: its metrics port, picked with the other replicas' (`free_ports`): a port
    picked alone is not bound until the replica starts, so a second pick can return it."""
    replica_env = {
        **env,
        "MLBUS_KAFKA_CLIENT_ID": name,  # member ids start with it: who is in the group
        "MLBUS_TELEMETRY_METRICS_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    log = logs / f"{name}.log"
    proc = spawn([sys.executable, "-m", module], log, env=replica_env)
    return Replica(name, module, group, proc, port, log)


async def group_members(kafka: KafkaSettings, group: str) -> tuple[str, list[str]]:
    """(state, member ids) of a consumer group, as the broker reports it."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        (_, _, state, *_rest, members) = response.groups[0]
        return str(state), [str(m[0]) for m in members]
    finally:
        await admin.close()


async def start_group_at_end(kafka: KafkaSettings, group: str, topic: str) -> None:
    """Commit the topic's end offsets for a new group: it skips what other tests wrote."""
    count = (await partition_counts(kafka, [topic]))[topic]
    partitions = [TopicPartition(topic, p) for p in range(count)]
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


async def wait_stable(
    kafka: KafkaSettings,
    group: str,
    replicas: list[Replica],
    timeout_s: float = 60,
    hold_s: float = 2.0,
) -> None:
    """Until the group has been Stable with exactly these replicas as members for `hold_s`
    (the broker reports Stable a moment before the members have their assignments)."""
    names = sorted(r.name for r in replicas)
    stable_since: float | None = None
    async with asyncio.timeout(timeout_s):
        while True:
            for replica in replicas:
                assert replica.alive(), replica.tail()
            state, members = await group_members(kafka, group)
            owners = sorted(m.rsplit("-", 5)[0] for m in members)
            if state == "Stable" and owners == names:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= hold_s:
                    return
            else:
                stable_since = None
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------- the input


@dataclass
class Input:
    """What the producer sent, and what a correct system must end up with."""

    valid: list[dict[str, Any]] = field(default_factory=list)
    broken_at: set[tuple[int, int]] = field(default_factory=set)  # (partition, offset)
    retried: list[str] = field(default_factory=list)  # event ids sent a second time

    def expected_counts(self) -> dict[str, tuple[int, float]]:
        """Brute force: per card, the number of payments and their total amount."""
        out: dict[str, tuple[int, float]] = {}
        for event in self.valid:
            count, total = out.get(event["card_id"], (0, 0.0))
            out[event["card_id"]] = (count + 1, total + event["amount"])
        return out


def payments(n: int, seed: str) -> list[dict[str, Any]]:
    """Payments of CARDS cards over the last minutes, in event-time order."""
    base = datetime.now(UTC) - timedelta(minutes=15)
    categories = ["grocery", "fuel", "retail", "travel"]
    return [
        {
            "transaction_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{seed}/{i}")),
            "card_id": f"card_{i % CARDS:06d}",
            "merchant_id": f"m_{i % 997:05d}",
            "amount": round(1 + (i * 7919 % 50000) / 100, 2),
            "merchant_category": categories[i % len(categories)],
            "country": "US",
            "channel": "online",
            "ts": (base + timedelta(milliseconds=10 * i)).isoformat(),
        }
        for i in range(n)
    ]


async def produce_stream(
    producer: AIOKafkaProducer,
    topic: str,
    events: list[dict[str, Any]],
    sent: Input,
    *,
    chunk: int = 250,
    pause_s: float = 0.05,
) -> None:
    """Send `events` keyed by card at a steady pace, one broken record per chunk."""
    for start in range(0, len(events), chunk):
        futures = []
        for event in events[start : start + chunk]:
            value = json.dumps(event).encode()
            futures.append(await producer.send(topic, value, key=event["card_id"].encode()))
        broken = await producer.send(topic, b"{not json %d" % start, key=b"card_broken")
        await asyncio.gather(*futures)
        sent.valid.extend(events[start : start + chunk])
        meta = await broken
        sent.broken_at.add((meta.partition, meta.offset))
        await asyncio.sleep(pause_s)


# ---------------------------------------------------------------- the output


class Outputs:
    """Reads validated and rejected from the start, keeping records from our source topics."""

    def __init__(self, kafka: KafkaSettings, sources: set[str]) -> None:
        self._consumer = AIOKafkaConsumer(
            INGEST_VALIDATED,
            INGEST_REJECTED,
            **kafka.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
        )
        self._sources = sources
        self.validated: list[str] = []  # event ids, one per record
        self.rejected: list[tuple[int, int]] = []  # (source partition, offset), one per record

    async def __aenter__(self) -> Outputs:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        for batch in (await self._consumer.getmany(timeout_ms=200)).values():
            for record in batch:
                self._keep(record)

    async def read_to_end(self) -> None:
        """Everything both topics hold now: once the writers stopped, all they ever wrote."""
        await read_to_end(self._consumer, self._keep)

    def _keep(self, record: ConsumerRecord[bytes, bytes]) -> None:
        body = json.loads(record.value)
        if body.get("source_topic") not in self._sources:
            return
        if record.topic == INGEST_VALIDATED:
            self.validated.append(body["event_id"])
        else:
            self.rejected.append((body["source_partition"], body["source_offset"]))


async def online_counts(store: OnlineStore, cards: list[str]) -> dict[str, tuple[int, float]]:
    rows = await store.get_many(VIEW, VIEW_VERSION, cards, ["count_24h", "amount_sum_24h"])
    return {
        row.entity_id: (int(row.values["count_24h"]), float(row.values["amount_sum_24h"]))  # type: ignore[arg-type]
        for row in rows
        if row.found
    }


def same_counts(got: dict[str, tuple[int, float]], want: dict[str, tuple[int, float]]) -> bool:
    return got.keys() == want.keys() and all(
        got[c][0] == want[c][0] and math.isclose(got[c][1], want[c][1], rel_tol=1e-9) for c in want
    )


# ---------------------------------------------------------------- fixtures


@dataclass
class Stack:
    spec: Path
    source_topic: str
    source_name: str
    prefix: str
    offline: Path
    env: dict[str, str]
    logs: Path
    replicas: list[Replica] = field(default_factory=list)


def write_spec(folder: Path, unique: str) -> tuple[Path, str, str]:
    """The fraud spec with source topics and a source name of this test's own, so other
    tests' events on the shared validated topic feed none of our views."""
    source_topic, name = f"tx.scale.{unique}", f"tx_{unique}"
    text = (
        fraud_spec_path()
        .read_text()
        .replace("payments.transactions.v1", source_topic)
        .replace("payments.chargebacks.v1", f"cb.scale.{unique}")
        .replace("  transactions:\n", f"  {name}:\n")
        .replace("source: transactions", f"source: {name}")
    )
    path = folder / "mlbus.yaml"
    path.write_text(text)
    assert name in load_spec(path).sources
    return path, source_topic, name


@pytest.fixture
def stack(kafka: KafkaSettings, redis_url: str, unique: str, tmp_path: Path) -> Iterator[Stack]:
    spec, source_topic, source_name = write_spec(tmp_path, unique)
    prefix = f"scale{unique}"
    offline = tmp_path / "offline"
    env = {
        "MLBUS_SPEC": str(spec),
        "MLBUS_DATA_DIR": str(tmp_path / "data"),
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": kafka.require_bootstrap(),
        "MLBUS_KAFKA_SESSION_TIMEOUT_S": str(kafka.session_timeout_s),
        "MLBUS_KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
        "MLBUS_REDIS_URL": redis_url,
        "MLBUS_REDIS_KEY_PREFIX": prefix,
        "MLBUS_INGESTION_GROUP_ID": f"ingest-{unique}",
        "MLBUS_INGESTION_MAX_BATCH": str(MAX_BATCH),
        "MLBUS_INGESTION_DEDUPE_HORIZON_S": "900",  # ids of this test expire soon after it
        "MLBUS_FEATURES_GROUP_ID": f"features-{unique}",
        "MLBUS_FEATURES_GRPC_PORT": "0",
        "MLBUS_FEATURES_GRPC_HOST": "127.0.0.1",
        "MLBUS_FEATURES_OFFLINE_URL": str(offline),
    }
    built = Stack(spec, source_topic, source_name, prefix, offline, env, tmp_path / "logs")
    yield built
    for replica in built.replicas:
        terminate(replica.proc, grace_s=10)


async def redis_cleanup(redis_url: str, prefix: str, cards: list[str]) -> None:
    """Delete the feature keys we wrote (no SCAN: the Redis may be shared and large);
    de-duplication keys expire after the short horizon set above."""
    async with OnlineStore.from_url(redis_url, key_prefix=prefix) as store:
        keys = store.keys
        doomed = [keys.spool(VIEW, VIEW_VERSION), keys.spool_lock(VIEW, VIEW_VERSION)]
        for card in cards:
            doomed += [keys.online(VIEW, VIEW_VERSION, card), keys.state(VIEW, VIEW_VERSION, card)]
        await store.client.delete(*doomed)


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await client.start()
    yield client
    await client.stop()


# ---------------------------------------------------------------- the proof


async def test_two_replicas_share_the_work_and_a_kill_loses_and_double_counts_nothing(
    kafka: KafkaSettings,
    redis_url: str,
    unique: str,
    stack: Stack,
    producer: AIOKafkaProducer,
) -> None:
    groups = {
        "mlbus.ingestion": stack.env["MLBUS_INGESTION_GROUP_ID"],
        "mlbus.features": stack.env["MLBUS_FEATURES_GROUP_ID"],
    }
    # The shared validated topic holds other tests' events: our feature group starts after them.
    await ensure_topics(kafka, [INGEST_VALIDATED])
    await start_group_at_end(kafka, groups["mlbus.features"], INGEST_VALIDATED)
    started_at = time.monotonic()
    ports = iter(free_ports(2 * len(groups)))
    for module, group in groups.items():
        short = module.removeprefix("mlbus.")
        for side in ("a", "b"):
            stack.replicas.append(
                start_replica(f"{short}-{side}", module, group, stack.env, stack.logs, next(ports))
            )
    ingestion_a, ingestion_b, features_a, features_b = stack.replicas
    try:
        await asyncio.gather(
            wait_stable(kafka, groups["mlbus.ingestion"], [ingestion_a, ingestion_b]),
            wait_stable(kafka, groups["mlbus.features"], [features_a, features_b]),
        )
    except TimeoutError:
        pytest.fail("groups never stable:\n" + "\n".join(r.tail() for r in stack.replicas))

    stable_s = time.monotonic() - started_at
    sent = Input()
    events = payments(9000, unique)
    stream = asyncio.create_task(produce_stream(producer, stack.source_topic, events, sent))
    watched = {ingestion_a: stack.source_topic, ingestion_b: stack.source_topic}
    watched |= {features_a: INGEST_VALIDATED, features_b: INGEST_VALIDATED}

    # Work is shared: every replica processes records of its own partitions.
    before_kill: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(60):
        while True:
            assert not stream.done() or stream.exception() is None
            for replica in stack.replicas:
                assert replica.alive(), replica.tail()
            scraped = {r.name: await r.poll_metrics() for r in stack.replicas}
            if all(scraped[r.name]["processed"][topic] > 0 for r, topic in watched.items()):
                before_kill = scraped
                break
            await asyncio.sleep(0.2)
    assert not stream.done(), "the stream ended before the kill: send more events"

    def owned(replica: Replica) -> set[int]:
        topic = watched[replica]
        return {p for t, p in before_kill[replica.name]["partitions"] if t == topic}

    for a, b in ((ingestion_a, ingestion_b), (features_a, features_b)):
        assert owned(a), f"{a.name} owns no partition"
        assert owned(b), f"{b.name} owns no partition"
        assert owned(a).isdisjoint(owned(b)), f"{a.name} and {b.name} share partitions"

    # SIGKILL one replica of each mid-stream: no flush, no commit, no leave-group.
    for victim in (ingestion_b, features_b):
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
    killed_at = time.monotonic()
    await stream
    assert len(sent.valid) == len(events)

    # Producer retries of events accepted earlier: the shared de-duplication store drops them.
    retried = sent.valid[:200]
    await asyncio.gather(
        *[
            await producer.send(
                stack.source_topic, json.dumps(e).encode(), key=e["card_id"].encode()
            )
            for e in retried
        ]
    )
    sent.retried = [e["transaction_id"] for e in retried]

    want_ids = {e["transaction_id"] for e in sent.valid}
    want_counts = sent.expected_counts()
    cards = sorted(want_counts)
    async with (
        Outputs(kafka, {stack.source_topic}) as outputs,
        OnlineStore.from_url(redis_url, key_prefix=stack.prefix) as store,
    ):
        counts: dict[str, tuple[int, float]] = {}
        try:
            async with asyncio.timeout(90):
                while not (
                    set(outputs.validated) >= want_ids
                    and set(outputs.rejected) >= sent.broken_at
                    and same_counts(counts, want_counts)
                ):
                    for survivor in (ingestion_a, features_a):
                        assert survivor.alive(), survivor.tail()
                    await outputs.poll()
                    counts = await online_counts(store, cards)
        except TimeoutError:
            wrong = {
                c: (counts.get(c), want_counts[c]) for c in cards if counts.get(c) != want_counts[c]
            }
            pytest.fail(
                f"not done: {len(set(outputs.validated))}/{len(want_ids)} validated, "
                f"{len(set(outputs.rejected) & sent.broken_at)}/{len(sent.broken_at)} rejected, "
                f"cards wrong {dict(list(wrong.items())[:5])}\n"
                + "\n".join(r.tail() for r in stack.replicas)
            )
        recovered_s = time.monotonic() - killed_at
        # The survivors took over the killed replicas' partitions.
        for survivor, victim in ((ingestion_a, ingestion_b), (features_a, features_b)):
            now_owned = {
                p
                for t, p in (await survivor.poll_metrics())["partitions"]
                if t == watched[survivor]
            }
            assert owned(victim) <= now_owned, (survivor.name, owned(victim), now_owned)
        # The survivors stop cleanly, flushing the offline rows they hold. Stopped, they
        # can publish and count nothing more: anything published or counted twice, even
        # while stopping, shows up now.
        for survivor in (ingestion_a, features_a):
            assert terminate(survivor.proc, grace_s=20) == 0, survivor.tail()
        await outputs.read_to_end()
        assert same_counts(await online_counts(store, cards), want_counts)

    # Nothing lost, nothing invented; re-publication bounded by the batch in flight at the kill.
    assert set(outputs.validated) == want_ids
    republished = len(outputs.validated) - len(want_ids)
    assert 0 <= republished <= MAX_BATCH, republished
    assert set(outputs.rejected) == sent.broken_at
    assert len(outputs.rejected) - len(sent.broken_at) <= MAX_BATCH

    offline = OfflineStore(stack.offline)
    files = offline.files(VIEW, VIEW_VERSION)
    written = set(offline.read(files)["event_id"].to_pylist()) if files else set()
    async with OnlineStore.from_url(redis_url, key_prefix=stack.prefix) as store:
        spool = await store.client.lrange(store.keys.spool(VIEW, VIEW_VERSION), 0, -1)
    waiting = {OfflineRow.from_json(raw).event_id for raw in spool}
    assert written | waiting == want_ids
    await redis_cleanup(redis_url, stack.prefix, cards)
    print(  # shown with -s
        f"groups stable after {stable_s:.1f}s; "
        f"recovered {recovered_s:.1f}s after the kill; re-published {republished}, "
        f"rejected again {len(outputs.rejected) - len(sent.broken_at)}, "
        f"offline rows {len(written)} written + {len(waiting)} in the spool"
    )


# ---------------------------------------------------------------- the topics Job's command


async def partition_counts(kafka: KafkaSettings, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
    finally:
        await admin.close()


async def test_topics_ensure_creates_every_topic_with_its_partitions_once(
    kafka: KafkaSettings, unique: str, tmp_path: Path
) -> None:
    spec, source_topic, _ = write_spec(tmp_path, unique)
    labels_topic = f"cb.scale.{unique}"
    env = {
        **os.environ,
        "MLBUS_DATA_DIR": str(tmp_path / "data"),
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": kafka.require_bootstrap(),
        "MLBUS_KAFKA_TOPIC_PARTITIONS": "4",
    }
    argv = [sys.executable, "-m", "mlbus.cli", "topics", "ensure", "--spec", str(spec)]

    async def ensure(*extra: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, *extra, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await ensure("--control-partitions", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert {source_topic, labels_topic} <= set(report["created"])  # new to this broker
    assert set(report["partitions"]) == set(ALL_TOPICS) | {source_topic, labels_topic}
    assert report["partitions"][source_topic] == 4  # MLBUS_KAFKA_TOPIC_PARTITIONS
    assert report["partitions"]["mlbus.model.published.v1"] == 2
    assert report["partitions"]["mlbus.ingest.validated.v1"] == 4
    counts = await partition_counts(kafka, [*ALL_TOPICS, source_topic, labels_topic])
    assert set(counts) == set(ALL_TOPICS) | {source_topic, labels_topic}  # all exist now
    assert counts[source_topic] == counts[labels_topic] == 4

    # Idempotent: a second run creates nothing and changes nothing.
    code, out, err = await ensure("--partitions", "6", "--json")
    assert code == 0, err
    assert json.loads(out)["created"] == []
    assert (await partition_counts(kafka, [source_topic]))[source_topic] == 4

    # No broker configured: a clear error and exit code 2, not a traceback.
    env["MLBUS_KAFKA_BOOTSTRAP_SERVERS"] = ""
    code, _, err = await ensure()
    assert code == 2
    assert "MLBUS_KAFKA_BOOTSTRAP_SERVERS" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- a rebalance mid-batch


RECORDS = 300


class HeldFirstBatch(Consumer[bytes | None]):
    """The hook that sets up the race: the first fetch is held until it holds every
    record produced, so one batch spans every partition (left to the broker, a fetch
    may hold a single partition, and then no revoke can land between two of them)."""

    held = False

    async def _work_through(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[Any]],
    ) -> bool:
        if not self.held:
            self.held = True
            batch = {tp: list(records) for tp, records in batch.items()}
            while sum(map(len, batch.values())) < RECORDS:
                more = await consumer.getmany(timeout_ms=200, max_records=RECORDS)
                for tp, records in more.items():
                    batch.setdefault(tp, []).extend(records)
        return await super()._work_through(consumer, batch)


async def test_a_rebalance_landing_mid_batch_commits_nothing_it_has_not_flushed(
    kafka: KafkaSettings, unique: str
) -> None:
    """Scaling out rebalances the running replicas. aiokafka runs the revoke callback
    (`_CommitOnRevoke`, which flushes and commits) on its coordinator task, at any await
    of the consume loop, e.g. between two partitions of one fetch. The handlers here
    queue and flush like ingestion's and the features' (build what to write from the
    queue, await the writes, clear the queue): every committed record must be written.

    The race is set up every run: the first batch spans the three partitions, the
    revoke is called back while the second one is handled, and the flush's writes are
    acknowledged only once that batch's last partition is queued (the worst case).
    Without the batch lock the revoke flushes in the middle and commits the third
    partition's records, which its flush dropped."""
    from mlbus.bus._consumer import _CommitOnRevoke
    from mlbus.telemetry._sampling import set_data_sample_ratio

    topic = f"t.rebalance.{unique}"
    await ensure_topics(kafka, [topic], partitions=PARTITIONS)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=20)
    await producer.start()
    futures = [
        await producer.send(topic, b"%d" % i, partition=i % PARTITIONS) for i in range(RECORDS)
    ]
    await asyncio.gather(*futures)
    await producer.stop()

    queue: list[bytes] = []
    written: list[bytes] = []
    flushing = asyncio.Lock()
    revoked: list[asyncio.Task[None]] = []
    first_batch_queued = asyncio.Event()
    calls = 0

    async def flush() -> None:
        nonlocal queue
        async with flushing:
            to_write = list(queue)
            if not to_write:
                return
            await first_batch_queued.wait()  # the sends and their acknowledgements
            written.extend(to_write)
            queue = []

    handled_during_revoke = 0

    async def handle_batch(records: list[Received[bytes | None]]) -> None:
        nonlocal handled_during_revoke, calls
        calls += 1
        queue.extend(r.payload or b"" for r in records)
        if revoked and not revoked[0].done():
            handled_during_revoke += len(records)
        if calls == 2:  # the rebalance: the coordinator calls back at the loop's next await
            partitions = {TopicPartition(topic, p) for p in range(PARTITIONS)}
            revoke = _CommitOnRevoke(consumer).on_partitions_revoked(partitions)
            revoked.append(asyncio.ensure_future(revoke))
        if calls == PARTITIONS:
            first_batch_queued.set()

    async def handle(record: Received[bytes | None]) -> None:
        await handle_batch([record])

    set_data_sample_ratio(0.0)  # untraced data plane: fetches go to the batch handler
    try:
        async with Publisher(kafka, source="tests") as publisher:
            consumer = HeldFirstBatch(
                kafka,
                topics=[topic],
                group_id=f"g-{unique}",
                handler=handle,
                batch_handler=handle_batch,
                decoder=raw_decoder,
                publisher=publisher,
                max_batch=RECORDS,
                before_commit=flush,
            )
            task = asyncio.create_task(consumer.run())
            async with asyncio.timeout(30):
                while consumer.stats.processed < RECORDS or not revoked or not revoked[0].done():  # noqa: ASYNC110 - polling the consumer like the other tests
                    await asyncio.sleep(0.05)
            consumer.stop()
            await task
    finally:
        set_data_sample_ratio(None)
    reader = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=f"g-{unique}")
    await reader.start()
    try:
        committed = [await reader.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)]
    finally:
        await reader.stop()
    # The race happened: the third partition was handled while the revoke was pending.
    assert calls >= PARTITIONS
    assert handled_during_revoke == RECORDS // PARTITIONS
    # And the promise held: everything committed was written.
    assert sum(c or 0 for c in committed) == RECORDS
    assert sorted(set(written)) == sorted(b"%d" % i for i in range(RECORDS))
