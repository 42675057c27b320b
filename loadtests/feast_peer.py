"""The Feast side of `bench_online_features.py`: the same lookup through Feast's Python SDK.

Runs ONLY in the Feast benchmark venv, never in the project's: Feast pins its own
protobuf and would fight ours (docs/adr/0002). `bench_online_features.py` creates
the venv and starts this script; by hand:

    .venv/bin/uv venv --python 3.11 loadtests/.venv-feast
    .venv/bin/uv pip install --python loadtests/.venv-feast/bin/python "feast[redis]==0.67.0"
    loadtests/.venv-feast/bin/python loadtests/feast_peer.py --redis 127.0.0.1:6379 --db 1

Setup: a Feast repo in a temp folder (`feature_store.yaml` with a Redis online
store, an entity `card` and a feature view `bench_view` of 20 features —
7 Int64, 7 Float64, 5 String, 1 null — the same names and values that
`bench_online_features.seed` writes for mlbus), `feast apply`, then
`write_to_online_store` of those values, and one read checked value by value.

Then it answers the parent on stdin/stdout, one JSON line each way, so the
parent can interleave Feast with its own variants in every repeat:
    → {"calls": 2000, "many_calls": 200}
    ← {"feast get_online_features, 1×20": [ms, …], …}
    → {"quit": true}
A failure is one line `{"error": "..."}` and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import redis
import redis.utils

VIEW = "bench_view"
ENTITIES = [f"card_{i:06d}" for i in range(100)]
ONE = ENTITIES[7]  # the entity the parent reads for 1×20
INT_FEATURES = [f"f_int_{k}" for k in range(7)]
FLOAT_FEATURES = [f"f_float_{k}" for k in range(7)]
STR_FEATURES = [f"f_str_{k}" for k in range(5)]
FEATURES = [*INT_FEATURES, *FLOAT_FEATURES, *STR_FEATURES, "f_null"]
REFS = [f"{VIEW}:{name}" for name in FEATURES]

FEAST_1, FEAST_100 = "feast get_online_features, 1×20", "feast get_online_features, 100×20"
FEAST_ASYNC_1 = "feast get_online_features_async, 1×20"
FEAST_ASYNC_100 = "feast get_online_features_async, 100×20"
FEAST_RAW_1 = "raw HGETALL of Feast's hash (Feast venv), 1×20"
FEAST_RAW_100 = "raw pipeline of Feast's hashes (Feast venv), 100×20"

DEFINITIONS = f'''
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64, Int64, String

card = Entity(name="card", join_keys=["card_id"])
source = FileSource(path="data.parquet", timestamp_field="event_timestamp")
bench_view = FeatureView(
    name="{VIEW}",
    entities=[card],
    ttl=timedelta(hours=1),
    schema=(
        [Field(name=n, dtype=Int64) for n in {INT_FEATURES!r}]
        + [Field(name=n, dtype=Float64) for n in {FLOAT_FEATURES!r}]
        + [Field(name=n, dtype=String) for n in {[*STR_FEATURES, "f_null"]!r}]
    ),
    online=True,
    source=source,
)
'''


def expected(i: int) -> dict[str, Any]:
    """Entity i's values: the same formula as `bench_online_features.seed`."""
    values: dict[str, Any] = {f"f_int_{k}": i * k for k in range(7)}
    values |= {f"f_float_{k}": i / (k + 1) for k in range(7)}
    values |= {f"f_str_{k}": f"category_{(i + k) % 10}" for k in range(5)}
    values["f_null"] = None
    return values


def build_repo(repo: Path, redis_address: str, db: int) -> None:
    (repo / "feature_store.yaml").write_text(
        "project: mlbus_bench\n"
        "provider: local\n"
        "registry: registry.db\n"
        "entity_key_serialization_version: 3\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{redis_address},db={db}"\n'
        "offline_store:\n"
        "  type: file\n"
    )
    (repo / "features.py").write_text(DEFINITIONS)
    now = datetime.now(UTC)
    frame = pd.DataFrame(
        [{"card_id": e, "event_timestamp": now, **expected(i)} for i, e in enumerate(ENTITIES)]
    )
    frame["f_null"] = frame["f_null"].astype(object)
    frame.to_parquet(repo / "data.parquet")
    feast_cli = Path(sys.executable).parent / "feast"
    done = subprocess.run(
        [str(feast_cli), "apply"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"feast apply failed ({done.returncode}): {done.stderr[-2000:]}")


def check(response: dict[str, list[Any]], index: int, row: int) -> None:
    """Feast must return the values mlbus stores, or the comparison means nothing."""
    want = expected(index)
    for name in FEATURES:
        got = response[name][row]
        if got != want[name] and not (want[name] is None and got is None):
            raise RuntimeError(
                f"Feast returned {name}={got!r} for entity {index}, want {want[name]!r}"
            )


def timed(calls: int, fn: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def timed_pair(
    calls: int, baseline: Callable[[], object], candidate: Callable[[], object]
) -> tuple[list[float], list[float]]:
    """Alternately, call by call (order swapped every call), as the parent times its pairs."""
    out: tuple[list[float], list[float]] = ([], [])
    fns = (baseline, candidate)
    for i in range(calls):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            started = time.perf_counter()
            fns[which]()
            out[which].append((time.perf_counter() - started) * 1000)
    return out


async def timed_async(calls: int, fn: Callable[[], Any]) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(redis_address: str, db: int) -> None:
    from feast import FeatureStore  # imported here so `--help` works without Feast

    with tempfile.TemporaryDirectory(prefix="feast-bench-") as tmp:
        repo = Path(tmp)
        build_repo(repo, redis_address, db)
        store = FeatureStore(repo_path=str(repo))
        frame = pd.read_parquet(repo / "data.parquet")
        store.write_to_online_store(VIEW, frame)
        one_row = [{"card_id": ONE}]
        many_rows = [{"card_id": e} for e in ENTITIES]
        check(store.get_online_features(REFS, one_row).to_dict(), ENTITIES.index(ONE), 0)
        many = store.get_online_features(REFS, many_rows).to_dict()
        for index in range(len(ENTITIES)):
            check(many, index, index)

        host, port = redis_address.rsplit(":", 1)
        raw = redis.Redis(host=host, port=int(port), db=db, socket_timeout=2.0)
        feast_keys = sorted(raw.scan_iter(count=1000))  # only Feast's keys live in this db
        if len(feast_keys) != len(ENTITIES):
            raise RuntimeError(
                f"expected {len(ENTITIES)} Feast hashes in db {db}, found {len(feast_keys)}"
            )
        one_key = feast_keys[0]

        def feast_one() -> object:
            return store.get_online_features(REFS, one_row).to_dict()

        def feast_many() -> object:
            return store.get_online_features(REFS, many_rows).to_dict()

        async def feast_async_one() -> object:
            return (await store.get_online_features_async(REFS, one_row)).to_dict()

        async def feast_async_many() -> object:
            return (await store.get_online_features_async(REFS, many_rows)).to_dict()

        def raw_one() -> object:
            return raw.hgetall(one_key)

        def raw_many() -> object:
            pipe = raw.pipeline(transaction=False)
            for key in feast_keys:
                pipe.hgetall(key)
            return pipe.execute()

        loop = asyncio.new_event_loop()
        for fn in (feast_one, feast_many, raw_one, raw_many):  # warm up caches and connections
            timed(50, fn)
        loop.run_until_complete(timed_async(50, feast_async_one))
        loop.run_until_complete(timed_async(50, feast_async_many))
        reply(
            {
                "ready": True,
                "feast": _feast_version(),
                "redis_py": redis.__version__,
                "hiredis": redis.utils.HIREDIS_AVAILABLE,
            }
        )
        try:
            for line in sys.stdin:
                request = json.loads(line)
                if request.get("quit"):
                    break
                calls, many_calls = int(request["calls"]), int(request["many_calls"])
                raw_1, feast_1 = timed_pair(calls, raw_one, feast_one)
                raw_100, feast_100 = timed_pair(many_calls, raw_many, feast_many)
                reply(
                    {
                        FEAST_RAW_1: raw_1,
                        FEAST_1: feast_1,
                        FEAST_ASYNC_1: loop.run_until_complete(timed_async(calls, feast_async_one)),
                        FEAST_RAW_100: raw_100,
                        FEAST_100: feast_100,
                        FEAST_ASYNC_100: loop.run_until_complete(
                            timed_async(many_calls, feast_async_many)
                        ),
                    }
                )
        finally:
            raw.delete(*feast_keys)
            raw.close()
            loop.run_until_complete(_close_async(store))
            loop.close()


async def _close_async(store: Any) -> None:
    close = getattr(store, "close", None)  # releases Feast's async Redis client where it has one
    if close is not None:
        result = close()
        if asyncio.iscoroutine(result):
            await result


def _feast_version() -> str:
    import feast

    return str(feast.__version__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True, help="host:port of the Redis the parent uses")
    parser.add_argument("--db", type=int, required=True, help="a db number only Feast writes to")
    args = parser.parse_args()
    try:
        serve(args.redis, args.db)
    except Exception as exc:  # the parent prints this line as the reason Feast is missing
        reply({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
