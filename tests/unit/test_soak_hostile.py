"""The soak's hostile-input pieces that need no server: methods, payloads, results, bounds."""

from __future__ import annotations

import random
from collections import Counter

from google.protobuf.message_factory import GetMessageClass

from mlbus.soak._hostile import (
    HEALTH_CHECK,
    HEALTH_WATCH,
    FuzzResult,
    Payloads,
    rss_bytes,
    rss_growth_bound,
    server_methods,
)


def test_every_rpc_of_every_server_is_a_target_except_the_endless_watch() -> None:
    paths = {s: {m.path for m in server_methods(s)} for s in ("inference", "registry")}
    assert "/inference.GRPCInferenceService/ModelInfer" in paths["inference"]
    assert "/mlbus.inference.v1.PredictionService/Predict" in paths["inference"]
    assert len(paths["inference"]) == 8  # six OIP, Predict, health Check
    assert len(paths["registry"]) == 11  # ten RPCs and health Check
    assert all(HEALTH_CHECK in p and HEALTH_WATCH not in p for p in paths.values())
    streaming = [m.path for m in server_methods("registry") if m.server_streaming]
    assert streaming == ["/mlbus.registry.v1.RegistryService/DownloadArtifact"]
    for server in ("features", "outcomes"):
        assert len(server_methods(server)) >= 2


def test_payloads_are_seeded_and_structured_ones_parse_as_the_request_type() -> None:
    (infer,) = [m for m in server_methods("inference") if m.path.endswith("/ModelInfer")]

    def made(seed: int) -> list[tuple[str, bytes]]:
        payloads = Payloads(random.Random(seed), names=("fraud",))
        return [payloads.make(infer) for _ in range(200)]

    assert made(1) == made(1)
    assert made(1) != made(2)
    assert set(Counter(kind for kind, _ in made(1))) == {"random", "structured", "mutated"}
    request_type = GetMessageClass(infer.request)
    payloads = Payloads(random.Random(3))
    for _ in range(50):
        request_type.FromString(payloads.structured(infer.request))  # raises if not


def test_mutations_change_the_seed_and_never_fail_on_empty_input() -> None:
    payloads = Payloads(random.Random(4))
    seed = bytes(range(64))
    assert sum(payloads.mutate(seed) != seed for _ in range(100)) > 90
    assert all(isinstance(payloads.mutate(b""), bytes) for _ in range(100))


def test_results_merge_and_count_by_status() -> None:
    first, second = FuzzResult(), FuzzResult()
    first.calls["/a"] = Counter({"OK": 2, "INVALID_ARGUMENT": 3})
    second.calls["/a"] = Counter({"OK": 1})
    second.calls["/b"] = Counter({"NOT_FOUND": 4})
    second.unexpected_count = 1
    total = FuzzResult()
    total.merge(first)
    total.merge(second)
    assert total.statuses() == Counter({"OK": 3, "INVALID_ARGUMENT": 3, "NOT_FOUND": 4})
    assert total.total() == 10
    assert total.as_json()["unexpected"] == 1
    assert first.total() == 5  # merging does not change what was merged


def test_rss_is_read_from_proc_and_the_bound_is_a_quarter_plus_50_mb() -> None:
    import os

    own = rss_bytes(os.getpid())
    assert own is not None
    assert own > 10 << 20
    assert rss_bytes(2**22 + 12345) is None  # above pid_max: never a process
    assert rss_growth_bound(200 << 20) == (50 << 20) + (50 << 20)
