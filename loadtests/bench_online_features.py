"""Online feature reads: mlbus `OnlineStore` vs raw redis-py vs Feast; freshness online.

Reads go through `mlbus.featurestore.OnlineStore`, raw redis-py and Feast's Python
SDK; freshness is event produced → value readable online.

Same Redis (one the benchmark starts), same run, same values (20 features: 7 int,
7 float, 5 string, 1 null); mlbus and its raw baseline alternate call by call,
Feast runs its share of every repeat right after ours:

- 1 entity × 20 features: `OnlineStore.get` (HGETALL + decode + ages) vs a raw
  `HGETALL` of the same hash. Goal: p50 ≤ 1.5 × raw.
- 100 entities × 20 features: `OnlineStore.get_many` (one pipeline) vs a raw
  pipeline of the same 100 `HGETALL`s. Goal: p50 ≤ 1.5 × raw.
- Feast 0.67 (`get_online_features(...).to_dict()`, sync and async) with its
  Redis online store holding the same values in db 1 of the same server, set up
  by `loadtests/feast_peer.py` (`feast apply` + `write_to_online_store`). Feast
  lives ONLY in its own venv, `loadtests/.venv-feast` (it would fight our
  protobuf pin), created on first use with uv — or by hand:

      .venv/bin/uv venv --python 3.11 loadtests/.venv-feast
      .venv/bin/uv pip install --python loadtests/.venv-feast/bin/python "feast[redis]==0.67.0"

  The peer process runs its share of every repeat between ours (one JSON line
  each way), and also times a raw HGETALL / pipeline of Feast's own hashes with
  its own client (sync redis-py + hiredis), to separate the SDK from the client.
Our variants run once per RESP parser available: redis-py's pure-Python parser
always, hiredis when importable (redis-py's default then). The parser dominates
100×20 (a reply of 4,400 strings), so the table shows both, and Feast, whose
`feast[redis]` extra brings hiredis, is compared with each.
Reported per variant: p50, p99 and how many calls took over 20 ms.

Freshness: validated events published at ~1,000/s to a topic the feature
service (in this process, embedded broker) consumes; a poller reads `__eid`
of the sampled events' hashes until the event shows. Reports p50/p99 in ms.
(`bench_features_freshness.py` runs the service and a paced producer in their
own processes, with a raw consume → Redis baseline: use it for issue #4.)

    python loadtests/bench_online_features.py [--calls 2000] [--repeats 5] [--no-freshness]
    # hiredis variants without touching .venv:
    #   .venv/bin/uv pip install --target /tmp/hiredis-site hiredis
    #   PYTHONPATH=/tmp/hiredis-site .venv/bin/python loadtests/bench_online_features.py
        [--no-feast] [--feast-venv loadtests/.venv-feast] [--redis-url redis://…]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import redis.asyncio as aioredis
from rich.table import Table

from _harness import Benchmark, console, percentile
from mlbus.events import Scalar
from mlbus.featurestore import OnlineStore
from mlbus.runtime import EmbeddedRedis

LIB_1, RAW_1 = "library get, 1×20", "raw HGETALL, 1×20"
LIB_100, RAW_100 = "library get_many, 100×20", "raw pipeline, 100×20"
SLOW_MS = 20.0
PYTHON_PARSER, HIREDIS = "python parser", "hiredis"
VIEW = "bench_view"
LOADTESTS = Path(__file__).parent
FEAST_PIN = "feast[redis]==0.67.0"
# The peer's variant names (it sends them back as keys); feast_peer.py defines the same.
FEAST_1, FEAST_100 = "feast get_online_features, 1×20", "feast get_online_features, 100×20"
FEAST_ASYNC_1 = "feast get_online_features_async, 1×20"
FEAST_ASYNC_100 = "feast get_online_features_async, 100×20"
FEAST_RAW_1 = "raw HGETALL of Feast's hash (Feast venv), 1×20"
FEAST_RAW_100 = "raw pipeline of Feast's hashes (Feast venv), 100×20"
FEAST_DB = 1  # Feast's keys live in their own db of the same server
FEAST_TIMEOUT_S = 600.0  # one repeat of the peer, or its setup (import + `feast apply`)


class FeastPeer:
    """`feast_peer.py` running in the Feast venv; one JSON line per request and reply."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.version = "?"
        self.client = "?"  # the peer's redis-py and parser

    @classmethod
    async def start(cls, venv: Path, redis_url: str) -> FeastPeer:
        python = ensure_feast_venv(venv)
        address = redis_url.removeprefix("redis://").split("/", 1)[0]
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(LOADTESTS / "feast_peer.py"),
            "--redis",
            address,
            "--db",
            str(FEAST_DB),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            limit=64 * 1024 * 1024,  # a reply is one line of thousands of timings
        )
        peer = cls(process)
        ready = await peer._read()
        peer.version = str(ready.get("feast", "?"))
        parser = "hiredis" if ready.get("hiredis") else "the pure-Python parser"
        peer.client = f"redis-py {ready.get('redis_py', '?')} with {parser}"
        return peer

    async def run(self, calls: int, many_calls: int) -> dict[str, list[float]]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"calls": calls, "many_calls": many_calls}).encode())
        self.process.stdin.write(b"\n")
        await self.process.stdin.drain()
        return {name: [float(v) for v in values] for name, values in (await self._read()).items()}

    async def _read(self) -> dict[str, object]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), FEAST_TIMEOUT_S)
        if not line:
            stderr = b""
            if self.process.stderr is not None:
                stderr = await self.process.stderr.read()
            raise RuntimeError(f"the Feast peer exited: {stderr.decode(errors='replace')[-2000:]}")
        reply: dict[str, object] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the Feast peer failed: {reply['error']}")
        return reply

    async def stop(self) -> None:
        if self.process.returncode is None and self.process.stdin is not None:
            self.process.stdin.write(b'{"quit": true}\n')
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def our_client() -> str:
    """redis-py's version and RESP parser here: hiredis parses replies several times faster."""
    import redis
    import redis.utils

    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "the pure-Python parser"
    return f"redis-py {redis.__version__} with {parser}"


def ensure_feast_venv(venv: Path) -> Path:
    """The venv's python, creating the venv with uv first if it has no Feast."""
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run(
            [str(python), "-c", "import feast"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return python
    uv = Path(sys.executable).parent / "uv"
    console.print(f"creating the Feast venv {venv} ({FEAST_PIN}); once, about a minute")
    for argv in (
        [str(uv), "venv", "--python", "3.11", str(venv)],
        [str(uv), "pip", "install", "--python", str(python), FEAST_PIN],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
    return python


async def seed(store: OnlineStore, entities: list[str]) -> None:
    pipe = store.client.pipeline(transaction=False)
    now_ms = int(time.time() * 1000)
    for i, entity in enumerate(entities):
        # The 7 ints are windows (ADR 0020): step functions of 8 steps, evaluated at read.
        steps = {
            f"f_int_{k}": [[now_ms + (j + 1) * 60_000, i * k + 8 - j] for j in range(8)]
            + [[None, 0]]
            for k in range(7)
        }
        values: dict[str, Scalar] = {f"f_float_{k}": i / (k + 1) for k in range(7)}
        values |= {f"f_str_{k}": f"category_{(i + k) % 10}" for k in range(5)}
        values["f_null"] = None
        store.stage_write(
            pipe, VIEW, 1, entity, values, now_ms, f"e{i}", 3600, steps=steps, counted=8
        )
    await pipe.execute()


async def timed(calls: int, fn: object) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        await fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return out


async def timed_pair(calls: int, baseline: object, candidate: object) -> tuple[list[float], ...]:
    """Both timed call by call, alternately (order swapped every call), so a burst of
    load from other processes on this shared machine hits both alike."""
    out: tuple[list[float], list[float]] = ([], [])
    fns = (baseline, candidate)
    for i in range(calls):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            t = time.perf_counter()
            await fns[which]()  # type: ignore[operator]
            out[which].append((time.perf_counter() - t) * 1000)
    return out


def record(bench: Benchmark, variant: str, samples: list[float]) -> None:
    bench.record(variant, "p50", percentile(samples, 50), "ms", higher_is_better=False)
    bench.record(variant, "p99", percentile(samples, 99), "ms", higher_is_better=False)
    slow = sum(1 for s in samples if s > SLOW_MS)
    bench.record(variant, f"calls > {SLOW_MS:.0f} ms", slow, "calls", higher_is_better=False)


def parsers() -> list[tuple[str, type[Any]]]:
    """RESP parsers to measure: redis-py's pure-Python one always, hiredis when importable
    (redis-py uses it by default then; it parses a 100-hash reply several times faster)."""
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
    from redis.utils import HIREDIS_AVAILABLE

    found: list[tuple[str, type[Any]]] = [(PYTHON_PARSER, _AsyncRESP2Parser)]
    if HIREDIS_AVAILABLE:
        found.append((HIREDIS, _AsyncHiredisParser))
    return found


def named(variant: str, parser: str) -> str:
    return f"{variant} ({parser})"


async def reads(
    bench: Benchmark, url: str, calls: int, repeats: int, feast: FeastPeer | None
) -> list[str]:
    """Time every variant; the parsers measured."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    entities = [f"card_{i:06d}" for i in range(100)]
    clients = []  # per parser: (name, store, raw client)
    for parser, parser_class in parsers():
        options: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            "parser_class": parser_class,
        }
        store = OnlineStore(aioredis.Redis.from_url(url, **options), key_prefix=prefix)
        clients.append((parser, store, aioredis.Redis.from_url(url, **options)))
    first = clients[0][1]
    keys = [first.keys.online(VIEW, 1, e) for e in entities]
    pairs = []  # (variant names, baseline, candidate, calls)
    many_calls = max(50, calls // 10)
    try:
        await seed(first, entities)
        for parser, store, raw in clients:
            row = await store.get(VIEW, 1, entities[7])
            assert len(row.values) == 20, row

            async def lib_one(store: OnlineStore = store) -> None:
                await store.get(VIEW, 1, entities[7])

            async def raw_one(raw: aioredis.Redis = raw) -> None:
                await raw.hgetall(keys[7])

            async def lib_many(store: OnlineStore = store) -> None:
                await store.get_many(VIEW, 1, entities)

            async def raw_many(raw: aioredis.Redis = raw) -> None:
                pipe = raw.pipeline(transaction=False)
                for key in keys:
                    pipe.hgetall(key)
                await pipe.execute()

            for fn in (lib_one, raw_one, lib_many, raw_many):  # warm up connections
                await timed(50, fn)
            pairs.append((named(RAW_1, parser), named(LIB_1, parser), raw_one, lib_one, calls))
            pairs.append(
                (named(RAW_100, parser), named(LIB_100, parser), raw_many, lib_many, many_calls)
            )
        for r in range(repeats):
            for raw_name, lib_name, raw_fn, lib_fn, n in pairs:
                raw_samples, lib_samples = await timed_pair(n, raw_fn, lib_fn)
                record(bench, raw_name, raw_samples)
                record(bench, lib_name, lib_samples)
            if feast is not None:  # same repeat, right after ours: the same machine load
                for variant, samples in (await feast.run(calls, many_calls)).items():
                    record(bench, variant, samples)
            console.print(f"repeat {r + 1}/{repeats} done")
    finally:
        await first.client.delete(*keys)
        for _, store, raw in clients:
            await store.aclose()
            await raw.aclose()
    return [parser for parser, _, _ in clients]


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


LOOKUPS = {  # lookup → (raw baseline, mlbus, Feast variants)
    "1 entity × 20 features": (RAW_1, LIB_1, [FEAST_1, FEAST_ASYNC_1, FEAST_RAW_1]),
    "100 entities × 20 features": (
        RAW_100,
        LIB_100,
        [FEAST_100, FEAST_ASYNC_100, FEAST_RAW_100],
    ),
}


def summary(bench: Benchmark, calls: dict[str, int], measured: list[str]) -> None:
    """One table: each variant's median p50/p99 over repeats, slow calls summed, and p50
    over the raw baseline of each parser."""
    table = Table(title="online lookup, same Redis, same run (median over repeats)")
    ratio_columns = [f"p50 / raw ({parser})" for parser in measured]
    for column in ("lookup", "variant", "p50 ms", "p99 ms", f"> {SLOW_MS:.0f} ms", *ratio_columns):
        table.add_column(column, justify="left" if column in ("lookup", "variant") else "right")
    slow_name = f"calls > {SLOW_MS:.0f} ms"
    for lookup, (raw, lib, feast) in LOOKUPS.items():
        ours = [named(v, parser) for parser in measured for v in (raw, lib)]
        for variant in (*ours, *feast):
            if (variant, "p50") not in bench.metrics:
                continue
            slow = bench.metrics[(variant, slow_name)].values
            table.add_row(
                lookup,
                variant,
                f"{bench.median(variant, 'p50'):.3f}",
                f"{bench.median(variant, 'p99'):.3f}",
                f"{sum(slow):.0f} of {calls[lookup] * len(slow):,}",
                *(f"{bench.ratio(variant, named(raw, p), 'p50'):.2f}×" for p in measured),
            )
    console.print(table)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument("--freshness-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--no-feast", action="store_true", help="skip the Feast comparison")
    parser.add_argument("--feast-venv", type=Path, default=LOADTESTS / ".venv-feast")
    parser.add_argument(
        "--redis-url",
        help="an existing Redis (its db 1 must be empty: Feast's keys go there); "
        "default: an embedded one started for this run, so no one else's traffic shares it",
    )
    args = parser.parse_args()
    bench = Benchmark(
        "online_features",
        "OnlineStore reads vs raw redis-py and Feast; freshness through the feature service",
        calls=args.calls,
        repeats=args.repeats,
        rate=args.rate,
    )
    embedded = None
    url = args.redis_url
    if url is None:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "logs").start()
        url = embedded.url
    feast: FeastPeer | None = None
    bench.notes.append(
        f"mlbus and the raw baselines: asyncio {our_client()} by default; measured with "
        "each parser available here"
    )
    try:
        if not args.no_feast:
            try:
                feast = await FeastPeer.start(args.feast_venv, url)
                bench.notes.append(
                    f"Feast {feast.version} (venv {args.feast_venv}), Redis online store in db "
                    f"{FEAST_DB} of the same server, sync {feast.client}"
                )
            except (RuntimeError, OSError, TimeoutError) as exc:
                console.print(f"[red]Feast comparison skipped[/]: {exc}")
                bench.notes.append(f"Feast comparison skipped: {exc}")
        measured = await reads(bench, url, args.calls, args.repeats, feast)
        if feast is not None:
            await feast.stop()
            feast = None
        if not args.no_freshness:
            await freshness(bench, url, args.freshness_seconds, args.rate)
    finally:
        if feast is not None:
            await feast.stop()
        if embedded is not None:
            embedded.stop()
    for parser in measured:
        for lookup, (raw, lib, _) in LOOKUPS.items():
            bench.goal(
                f"{lookup} ({parser})", named(lib, parser), named(raw, parser), "p50", "<=", 1.5
            )
    many_calls = max(50, args.calls // 10)
    summary(
        bench,
        {"1 entity × 20 features": args.calls, "100 entities × 20 features": many_calls},
        measured,
    )
    return 0 if bench.report() else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
