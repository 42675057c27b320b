"""Feature freshness (event produced → value readable online) and throughput of the
feature service, each in its own process, against a raw baseline of the same data.

Everything runs on this machine: an embedded broker, a Redis (the local one of
`mlbus up` if running, else an embedded one), the feature service as
`python -m mlbus.features` (spec examples/fraud/mlbus.yaml, temp data folder),
and validated events produced straight to `mlbus.ingest.validated.v1`.

1. Capacity (repeated, interleaved): a backlog of `--backlog` events waits in the
   topic; time how fast a fresh consumer group drains it, from its first commit
   to its last (consumer-group offsets polled from outside, so both sides are
   timed the same way):
   - baseline `raw consume → redis`: a process with a bare aiokafka consumer
     writing each fetched batch's payloads with one MULTI/EXEC pipeline (HSET +
     EXPIRE per event), then committing — no windows, no state, no spool;
   - `feature service`: the real service, fresh group and key prefix.
   Reported: events/s of each and the ratio service / baseline.
2. Freshness: with the last service still running, a separate producer process
   sends events paced at `--rate` events/s for `--seconds` s (event time = the
   wall clock when sent, ms) and reports one in `--sample` to this process,
   which polls the entity's online hash until `__ts` reaches the event's time.
   Reported: produce → readable p50/p99 (all samples, and the last quarter, to
   show whether it is falling behind), the producer's achieved rate and the
   service's sustained rate (events / (last readable − first produced)).

    python loadtests/bench_features_freshness.py [--rate 1000] [--seconds 20]
        [--backlog 20000] [--repeats 3] [--entities 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Benchmark, console, percentile

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "examples" / "fraud" / "mlbus.yaml"
VIEW, VERSION = "card_activity", 1
RAW, SERVICE = "raw consume → redis", "feature service"


def make_event(entity: str, event_ms: int, rng: random.Random) -> object:
    from mlbus.events import IngestValidated

    return IngestValidated(
        source="transactions",
        contract_version=1,
        entity_id=entity,
        event_time=datetime.fromtimestamp(event_ms / 1000, UTC),
        payload={
            "transaction_id": str(uuid.uuid4()),
            "card_id": entity,
            "ts": datetime.fromtimestamp(event_ms / 1000, UTC).isoformat(),
            "amount": round(rng.uniform(1, 500), 2),
            "merchant_id": f"m_{rng.randrange(2000):05d}",
            "merchant_category": rng.choice(["retail", "travel", "food", "digital"]),
            "country": rng.choice(["US", "US", "US", "GB", "FR", "DE"]),
            "channel": rng.choice(["pos", "ecom"]),
        },
        source_topic="payments.transactions.v1",
        source_partition=0,
        source_offset=0,
    )


# ── roles run in their own processes ─────────────────────────────────────────


async def role_producer(args: argparse.Namespace) -> None:
    """Paced producer: one line per sampled event on stdout (`S entity event_ms`)."""
    from mlbus.bus import Publisher
    from mlbus.config import KafkaSettings
    from mlbus.events import INGEST_VALIDATED

    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)
    rng = random.Random(args.seed)
    total = int(args.rate * args.seconds)
    out = sys.stdout
    async with Publisher(kafka, source="bench") as publisher:
        t0 = time.perf_counter()
        for i in range(total):
            entity = f"card_{rng.randrange(args.entities):06d}"
            event_ms = int(time.time() * 1000)
            await publisher.send(
                make_event(entity, event_ms, rng),  # type: ignore[arg-type]
                key=entity,
                topic=INGEST_VALIDATED,
            )
            if i % args.sample == 0:
                out.write(f"S {entity} {event_ms}\n")
                out.flush()
            ahead = t0 + (i + 1) / args.rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await publisher.flush()
        elapsed = time.perf_counter() - t0
    out.write(f"DONE {total} {elapsed:.6f}\n")
    out.flush()


async def role_raw(args: argparse.Namespace) -> None:
    """Baseline: bare aiokafka consume → one MULTI/EXEC of HSET + EXPIRE per event, commit."""
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer

    from mlbus.events import INGEST_VALIDATED

    client = aioredis.Redis.from_url(args.redis_url, socket_timeout=2.0)
    consumer = AIOKafkaConsumer(
        INGEST_VALIDATED,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    done = 0
    try:
        while done < args.expect:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batch:
                continue
            pipe = client.pipeline(transaction=True)
            for records in batch.values():
                for record in records:
                    event = json.loads(record.value)
                    key = f"{args.prefix}:fv:{VIEW}:{VERSION}:{event['entity_id']}"
                    mapping = {k: json.dumps(v) for k, v in event["payload"].items()}
                    mapping["__ts"] = event["event_time"]
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, 3600)
                    done += 1
            await pipe.execute()
            await consumer.commit()
    finally:
        await consumer.stop()
        await client.aclose()


# ── the orchestrator ─────────────────────────────────────────────────────────


async def drain_rate(kafka: object, group: str, total: int, timeout_s: float) -> float:
    """Events/s of `group` from its first commit until everything is committed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from mlbus.events import INGEST_VALIDATED

    # Reads the group's committed offsets (OffsetFetch); never joins the group.
    reader = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,  # type: ignore[attr-defined]
        group_id=group,
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        tps = [
            TopicPartition(INGEST_VALIDATED, p)
            for p in reader.partitions_for_topic(INGEST_VALIDATED) or await _partitions(reader)
        ]
        first: tuple[float, int] | None = None
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            done = sum([max(0, await reader.committed(tp) or 0) for tp in tps])
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= total and first is not None:
                if now == first[0] or done == first[1]:
                    raise RuntimeError("drained in one commit: raise --backlog")
                return (total - first[1]) / (now - first[0])
            await asyncio.sleep(0.02)
        raise TimeoutError(f"group {group} did not drain {total} events in {timeout_s}s")
    finally:
        await reader.stop()


async def _partitions(reader: object) -> set[int]:
    from mlbus.events import INGEST_VALIDATED

    topics = await reader.topics()  # type: ignore[attr-defined]  # refreshes metadata
    assert INGEST_VALIDATED in topics
    return reader.partitions_for_topic(INGEST_VALIDATED) or set()  # type: ignore[attr-defined, no-any-return]


def this(role: str, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra]


@contextlib.asynccontextmanager
async def process(
    argv: list[str], env: dict[str, str], log: Path, **kw: object
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdout=kw.pop("stdout", out),  # type: ignore[arg-type]
            stderr=out,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def produce_backlog(kafka: object, n: int, entities: int) -> None:
    from mlbus.bus import Publisher
    from mlbus.events import INGEST_VALIDATED

    rng = random.Random(1)
    start_ms = int(time.time() * 1000) - n  # one event a ms, ending now
    async with Publisher(kafka, source="bench") as publisher:  # type: ignore[arg-type]
        for i in range(n):
            entity = f"card_{rng.randrange(entities):06d}"
            await publisher.send(
                make_event(entity, start_ms + i, rng),  # type: ignore[arg-type]
                key=entity,
                topic=INGEST_VALIDATED,
            )
        await publisher.flush()


async def freshness(
    bench: Benchmark,
    args: argparse.Namespace,
    env: dict[str, str],
    redis_url: str,
    prefix: str,
    logs: Path,
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
    pending: list[tuple[bytes, int]] = []  # (online key, event ms)
    latencies: list[tuple[int, float]] = []  # (event ms, produce → readable ms)
    sent: list[tuple[int, float]] = []
    producing = True

    async def read_samples(proc: asyncio.subprocess.Process) -> None:
        nonlocal producing
        assert proc.stdout is not None
        async for line in proc.stdout:
            kind, *rest = line.decode().split()
            if kind == "S":
                entity, event_ms = rest[0], int(rest[1])
                pending.append((f"{prefix}:fv:{VIEW}:{VERSION}:{entity}".encode(), event_ms))
            elif kind == "DONE":
                sent.append((int(rest[0]), float(rest[1])))
        producing = False

    async def poll() -> None:
        deadline = None
        while producing or pending:
            if not producing and deadline is None:
                deadline = time.perf_counter() + 120
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError(f"{len(pending)} sampled events never became readable")
            if pending:
                items = list(pending)
                pipe = client.pipeline(transaction=False)
                for key, _ in items:
                    pipe.hget(key, "__ts")
                replies = await pipe.execute()
                now_ms = time.time() * 1000
                seen = set()
                for index, ((_, event_ms), ts) in enumerate(zip(items, replies, strict=True)):
                    if ts is not None and int(ts) >= event_ms:
                        latencies.append((event_ms, now_ms - event_ms))
                        seen.add(index)
                pending[:] = [p for i, p in enumerate(pending) if i not in seen]
            await asyncio.sleep(0.002)

    argv = this(
        "producer",
        *("--bootstrap", env["MLBUS_KAFKA_BOOTSTRAP_SERVERS"]),
        *("--rate", str(args.rate), "--seconds", str(args.seconds)),
        *("--entities", str(args.entities), "--sample", str(args.sample)),
    )
    try:
        async with process(argv, env, logs / "producer.log", stdout=asyncio.subprocess.PIPE) as p:
            await asyncio.gather(read_samples(p), poll())
            await p.wait()
    finally:
        await client.aclose()
    if not sent:
        raise RuntimeError("the producer did not finish; see producer.log")
    total, elapsed = sent[0]
    achieved = total / elapsed
    last_readable_ms = max(e + lat for e, lat in latencies)
    first_ms = min(e for e, _ in latencies)
    sustained = total / ((last_readable_ms - first_ms) / 1000)
    values = [lat for _, lat in latencies]
    tail = [lat for e, lat in latencies if e >= first_ms + 0.75 * elapsed * 1000]
    bench.record(SERVICE, "freshness p50", percentile(values, 50), "ms", higher_is_better=False)
    bench.record(SERVICE, "freshness p99", percentile(values, 99), "ms", higher_is_better=False)
    bench.record(
        SERVICE, "freshness p50, last quarter", percentile(tail, 50), "ms", higher_is_better=False
    )
    bench.record(SERVICE, "freshness max", max(values), "ms", higher_is_better=False)
    bench.record("producer", "paced rate", achieved, "events/s", higher_is_better=True)
    bench.record(SERVICE, "sustained while paced", sustained, "events/s", higher_is_better=True)
    bench.notes.append(
        f"freshness: {len(values)} sampled events of {total} sent in {elapsed:.1f} s "
        f"(producer reached {achieved:,.0f}/s of {args.rate:,}/s asked)"
    )


async def main(args: argparse.Namespace) -> int:
    from mlbus.bus import ensure_topics
    from mlbus.config import KafkaSettings
    from mlbus.events import INGEST_VALIDATED
    from mlbus.runtime import EmbeddedBroker, EmbeddedRedis, local_redis_url

    bench = Benchmark(
        "features_freshness",
        "feature service (own process) vs raw consume → redis; freshness at a paced rate",
        rate=args.rate,
        seconds=args.seconds,
        backlog=args.backlog,
        repeats=args.repeats,
        entities=args.entities,
        service_module=args.service_module,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-features-"))
    logs = tmp / "logs"
    logs.mkdir()
    redis_url = local_redis_url()
    embedded = None
    if redis_url is None:
        embedded = EmbeddedRedis(tmp / "redis").start()
        redis_url = embedded.url
    tag = uuid.uuid4().hex[:8]
    try:
        with EmbeddedBroker(tmp / "broker") as broker:
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
            await ensure_topics(kafka, [INGEST_VALIDATED])
            t = time.perf_counter()
            await produce_backlog(kafka, args.backlog, args.entities)
            console.print(
                f"backlog of {args.backlog:,} events produced in {time.perf_counter() - t:.1f} s"
            )
            env = {
                **os.environ,
                "MLBUS_SPEC": str(SPEC),
                "MLBUS_DATA_DIR": str(tmp / "data"),
                "MLBUS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "MLBUS_REDIS_URL": redis_url,
                "MLBUS_FEATURES_GRPC_PORT": "0",
                "MLBUS_TELEMETRY_LOG_LEVEL": "WARNING",
            }
            for r in range(args.repeats):
                group = f"bench-raw-{tag}-{r}"
                raw = this(
                    "raw",
                    *("--bootstrap", broker.bootstrap_servers, "--redis-url", redis_url),
                    *("--group", group, "--prefix", f"bench-raw-{tag}"),
                    *("--expect", str(args.backlog)),
                )
                async with process(raw, env, logs / "raw.log") as proc:
                    rate = await drain_rate(kafka, group, args.backlog, 300)
                    await proc.wait()
                bench.record(RAW, "drain", rate, "events/s", higher_is_better=True)
                last = r == args.repeats - 1
                group, prefix = f"bench-svc-{tag}-{r}", f"bench-svc-{tag}-{r}"
                service_env = env | {
                    "MLBUS_FEATURES_GROUP_ID": group,
                    "MLBUS_REDIS_KEY_PREFIX": prefix,
                    "MLBUS_DATA_DIR": str(tmp / f"data-{r}"),
                }
                argv = [sys.executable, "-m", args.service_module]
                async with process(argv, service_env, logs / f"features-{r}.log") as proc:
                    rate = await drain_rate(kafka, group, args.backlog, 600)
                    bench.record(SERVICE, "drain", rate, "events/s", higher_is_better=True)
                    raw_rate = bench.metrics[(RAW, "drain")].values[-1]
                    console.print(
                        f"repeat {r + 1}/{args.repeats}: raw {raw_rate:,.0f}/s, "
                        f"service {rate:,.0f}/s"
                    )
                    if last and not args.no_freshness:
                        await freshness(bench, args, service_env, redis_url, prefix, logs)
                    if proc.returncode is not None:
                        raise RuntimeError(f"the feature service exited; see {logs}")
    finally:
        await cleanup(redis_url, tag)
        if embedded is not None:
            embedded.stop()
    bench.goal("capacity", SERVICE, RAW, "drain", ">=", 0.25)
    bench.notes.append(f"logs in {logs}")
    return 0 if bench.report() else 1


async def cleanup(redis_url: str, tag: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        for pattern in (f"bench-raw-{tag}:*", f"bench-svc-{tag}-*"):
            keys = [k async for k in client.scan_iter(match=pattern, count=10_000)]
            for i in range(0, len(keys), 5000):
                await client.delete(*keys[i : i + 5000])
    finally:
        await client.aclose()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["main", "producer", "raw"], default="main")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=10, help="report one event in N")
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--service-module",
        default="mlbus.features",
        help="run another build of the service (e.g. a copy of the previous version)",
    )
    parser.add_argument("--bootstrap")
    parser.add_argument("--redis-url")
    parser.add_argument("--group")
    parser.add_argument("--prefix")
    parser.add_argument("--expect", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    role = {"main": main, "producer": role_producer, "raw": role_raw}[arguments.role]
    raise SystemExit(asyncio.run(role(arguments)) or 0)
