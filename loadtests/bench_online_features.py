"""Online feature reads through `mlbus.featurestore.OnlineStore` against raw redis-py,
and freshness (event produced → value readable online) through the feature service.

Same Redis, same run, same hashes (20 type-tagged features + `__ts`/`__eid`), same
client settings; variants interleaved in every repeat:

- 1 entity × 20 features: `OnlineStore.get` (HGETALL + decode + ages) vs a raw
  `HGETALL` of the same hash. Goal: p50 ≤ 1.5 × raw.
- 100 entities × 20 features: `OnlineStore.get_many` (one pipeline) vs a raw
  pipeline of the same 100 `HGETALL`s. Goal: p50 ≤ 1.5 × raw.
Reported per variant: p50, p99 and how many calls took over 20 ms.

Freshness: validated events published at ~1,000/s to a topic the feature
service (in this process, embedded broker) consumes; a poller reads `__eid`
of the sampled events' hashes until the event shows. Reports p50/p99 in ms.
(`bench_features_freshness.py` runs the service and a paced producer in their
own processes, with a raw consume → Redis baseline: use it for issue #4.)

    python loadtests/bench_online_features.py [--calls 2000] [--repeats 5] [--no-freshness]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import redis.asyncio as aioredis

from _harness import Benchmark, console, percentile
from mlbus.featurestore import OnlineStore
from mlbus.runtime import EmbeddedRedis, local_redis_url

LIB_1, RAW_1 = "library get, 1×20", "raw HGETALL, 1×20"
LIB_100, RAW_100 = "library get_many, 100×20", "raw pipeline, 100×20"
SLOW_MS = 20.0
VIEW = "bench_view"


async def seed(store: OnlineStore, entities: list[str]) -> None:
    pipe = store.client.pipeline(transaction=False)
    now_ms = int(time.time() * 1000)
    for i, entity in enumerate(entities):
        values = {f"f_int_{k}": i * k for k in range(7)}
        values |= {f"f_float_{k}": i / (k + 1) for k in range(7)}
        values |= {f"f_str_{k}": f"category_{(i + k) % 10}" for k in range(5)}
        values["f_null"] = None
        store.stage_write(pipe, VIEW, 1, entity, values, now_ms, f"e{i}", 3600)
    await pipe.execute()


async def timed(calls: int, fn: object) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        await fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return out


def record(bench: Benchmark, variant: str, samples: list[float]) -> None:
    bench.record(variant, "p50", percentile(samples, 50), "ms", higher_is_better=False)
    bench.record(variant, "p99", percentile(samples, 99), "ms", higher_is_better=False)
    slow = sum(1 for s in samples if s > SLOW_MS)
    bench.record(variant, f"calls > {SLOW_MS:.0f} ms", slow, "calls", higher_is_better=False)


async def reads(bench: Benchmark, url: str, calls: int, repeats: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = OnlineStore.from_url(url, key_prefix=prefix)
    raw = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    entities = [f"card_{i:06d}" for i in range(100)]
    keys = [store.keys.online(VIEW, 1, e) for e in entities]
    try:
        await seed(store, entities)

        async def lib_one() -> None:
            await store.get(VIEW, 1, entities[7])

        async def raw_one() -> None:
            await raw.hgetall(keys[7])

        async def lib_many() -> None:
            await store.get_many(VIEW, 1, entities)

        async def raw_many() -> None:
            pipe = raw.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            await pipe.execute()

        row = await store.get(VIEW, 1, entities[7])
        assert len(row.values) == 20, row
        for fn in (lib_one, raw_one, lib_many, raw_many):  # warm up connections
            await timed(50, fn)
        for r in range(repeats):
            many_calls = max(50, calls // 10)
            record(bench, RAW_1, await timed(calls, raw_one))
            record(bench, LIB_1, await timed(calls, lib_one))
            record(bench, RAW_100, await timed(many_calls, raw_many))
            record(bench, LIB_100, await timed(many_calls, lib_many))
            console.print(f"repeat {r + 1}/{repeats} done")
    finally:
        await store.client.delete(*keys)
        await store.aclose()
        await raw.aclose()


async def freshness(bench: Benchmark, url: str, seconds: float, rate: int) -> None:
    from mlbus.bus import Publisher, ensure_topics
    from mlbus.config import KafkaSettings, RedisSettings
    from mlbus.events import IngestValidated
    from mlbus.example import fraud_spec_path
    from mlbus.features import FeatureService, FeaturesSettings
    from mlbus.runtime import EmbeddedBroker
    from mlbus.spec import load_spec

    spec = load_spec(fraud_spec_path())
    tag = uuid.uuid4().hex[:8]
    topic, prefix = f"bench.features.{tag}", f"bench-fresh-{tag}"
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "logs") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, session_timeout_s=6.0)
        await ensure_topics(kafka, [topic])
        settings = FeaturesSettings(
            kafka=kafka,
            redis=RedisSettings(url=url, key_prefix=prefix),
            data_dir=Path(tmp),
            group_id=f"bench-{tag}",
            grpc_port=0,
        )
        service = FeatureService(settings, spec, topics=(topic,), serve_grpc=False)
        task = asyncio.create_task(service.run())
        await service.wait_started()
        store = OnlineStore.from_url(url, key_prefix=prefix)
        pending: dict[str, tuple[str, float]] = {}  # event id → (key, produced at)
        latencies: list[float] = []
        sending = True

        async def poll() -> None:
            while sending or pending:
                if pending:
                    items = list(pending.items())
                    pipe = store.client.pipeline(transaction=False)
                    for _, (key, _) in items:
                        pipe.hget(key, "__eid")
                    seen = await pipe.execute()
                    now = time.perf_counter()
                    for (eid, (_, produced)), got in zip(items, seen, strict=True):
                        if got is not None and got.decode() == eid:
                            latencies.append((now - produced) * 1000)
                            del pending[eid]
                await asyncio.sleep(0.002)

        poller = asyncio.create_task(poll())
        start = datetime.now(UTC)
        total = int(seconds * rate)
        async with Publisher(kafka, source="bench") as publisher:
            t0 = time.perf_counter()
            for i in range(total):
                entity = f"card_{i:06d}"  # every event a fresh hash: its __eid shows it
                event = IngestValidated(
                    source="transactions",
                    contract_version=1,
                    entity_id=entity,
                    event_time=start + timedelta(milliseconds=i),
                    payload={
                        "card_id": entity,
                        "amount": 12.5,
                        "merchant_id": "m_00001",
                        "merchant_category": "retail",
                        "country": "US",
                        "channel": "pos",
                    },
                    source_topic="bench",
                    source_partition=0,
                    source_offset=i,
                )
                await publisher.send(event, key=entity, topic=topic)
                if i % 10 == 0:  # sample one in ten
                    pending[event.event_id] = (
                        store.keys.online("card_activity", 1, entity),
                        time.perf_counter(),
                    )
                behind = t0 + (i + 1) / rate - time.perf_counter()
                if behind > 0:
                    await asyncio.sleep(behind)
            await publisher.flush()
        sending = False
        try:
            await asyncio.wait_for(poller, 60)
        finally:
            service.stop()
            await task
            keys = [k async for k in store.client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await store.client.delete(*keys)
            await store.aclose()
        achieved = total / (time.perf_counter() - t0)
        bench.record(
            "feature service",
            "freshness p50",
            percentile(latencies, 50),
            "ms",
            higher_is_better=False,
        )
        bench.record(
            "feature service",
            "freshness p99",
            percentile(latencies, 99),
            "ms",
            higher_is_better=False,
        )
        bench.notes.append(
            f"freshness: {len(latencies)} sampled events of {total} at {achieved:,.0f} events/s"
        )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument("--freshness-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    bench = Benchmark(
        "online_features",
        "OnlineStore reads vs raw redis-py; freshness through the feature service",
        calls=args.calls,
        repeats=args.repeats,
        rate=args.rate,
    )
    url = local_redis_url()
    embedded = None
    if url is None:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "logs").start()
        url = embedded.url
    try:
        await reads(bench, url, args.calls, args.repeats)
        if not args.no_freshness:
            await freshness(bench, url, args.freshness_seconds, args.rate)
    finally:
        if embedded is not None:
            embedded.stop()
    bench.goal("1 entity × 20 features", LIB_1, RAW_1, "p50", "<=", 1.5)
    bench.goal("100 entities × 20 features", LIB_100, RAW_100, "p50", "<=", 1.5)
    return 0 if bench.report() else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
