"""Registry pure parts: ONNX checks and signatures, gates, artifact store, proto mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from mlbus.errors import ConfigError, InvalidInput, NotFound
from mlbus.events import ModelSignature, TensorSpec
from mlbus.profiles import ReferenceProfile
from mlbus.registry._artifacts import (
    ArtifactCorrupted,
    LocalArtifactStore,
    S3ArtifactStore,
    open_artifact_store,
)
from mlbus.registry._gates import Champion, decide
from mlbus.registry._grpc import protects
from mlbus.registry._onnx import validate_onnx
from mlbus.registry_proto import (
    change_from_proto,
    change_to_proto,
    version_from_proto,
    version_to_proto,
)
from mlbus.registry_types import AliasChange, GateDecision, ModelVersionInfo
from mlbus.spec import ModelSpec


def tiny_model(scale: float = 1.0, features: int = 3) -> bytes:
    """y = x * scale, x: FP32 [N, features] → y: FP32 [N, features]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def model_spec(
    min_improvement: float = 0.01,
    minimums: dict[str, float] | None = None,
    promote_to: str = "champion",
) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "fraud",
            "task": "classification",
            "label": {"source": "labels", "field": "is_fraud"},
            "features": ["card.amount"],
            "metric": "auc",
            "gates": {
                "min_improvement": min_improvement,
                "minimums": minimums or {},
                "promote_to": promote_to,
            },
        }
    )


# ── ONNX ────────────────────────────────────────────────────────────────────


def test_signature_is_read_from_the_model_in_oip_terms() -> None:
    signature = validate_onnx(tiny_model())
    assert signature == ModelSignature(
        inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 3)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 3)),),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n not a model at all", "not an ONNX model"),
        (b"name,amount\nx,1\n", "not an ONNX model"),
    ],
)
def test_non_onnx_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_onnx(data)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_a_truncated_model_is_refused(keep: float) -> None:
    data = tiny_model()
    with pytest.raises(InvalidInput, match="ONNX"):
        validate_onnx(data[: int(len(data) * keep)])


def test_a_model_failing_the_checker_is_refused() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidInput, match=r"onnx\.checker"):
        validate_onnx(model.SerializeToString())


def test_map_outputs_are_refused_with_the_zipmap_hint() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    probs = helper.make_value_info(
        "probs",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(1, []))
        ),
    )
    node = helper.make_node(
        "ZipMap", ["x"], ["probs"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
    )
    graph = helper.make_graph([node], "g", [x], [probs])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
    )
    model.ir_version = 8
    with pytest.raises(InvalidInput, match="zipmap"):
        validate_onnx(model.SerializeToString())


# ── gates ───────────────────────────────────────────────────────────────────


def test_first_version_passing_the_minimums_is_promoted() -> None:
    verdict = decide(model_spec(minimums={"auc": 0.7}), "fraud", {"auc": 0.8}, None)
    assert verdict.passed
    assert "first version" in verdict.reason


def test_minimums_hold_even_without_a_champion() -> None:
    verdict = decide(model_spec(minimums={"auc": 0.9}), "fraud", {"auc": 0.8}, None)
    assert not verdict.passed
    assert "auc 0.8000 is not at least 0.9" in verdict.reason


def test_worse_candidate_stays_a_candidate_with_the_reason() -> None:
    verdict = decide(model_spec(), "fraud", {"auc": 0.80}, Champion(3, {"auc": 0.85}))
    assert not verdict.passed
    assert verdict.compared_with_version == 3
    assert "below min_improvement" in verdict.reason


def test_better_by_the_margin_on_the_same_window_is_promoted() -> None:
    verdict = decide(
        model_spec(min_improvement=0.02),
        "fraud",
        {"auc": 0.90},
        Champion(3, {"auc": 0.95}),  # its registration metrics (an older window)
        champion_version=3,
        champion_metrics={"auc": 0.86},  # measured on the candidate's window
    )
    assert verdict.passed
    assert "same evaluation window" in verdict.reason


def test_same_window_metrics_of_a_stale_champion_are_not_used() -> None:
    verdict = decide(
        model_spec(),
        "fraud",
        {"auc": 0.90},
        Champion(4, {"auc": 0.95}),
        champion_version=3,
        champion_metrics={"auc": 0.50},
    )
    assert not verdict.passed
    assert "registration metrics" in verdict.reason


def test_a_version_that_passes_takes_champion_by_default() -> None:
    verdict = decide(model_spec(), "fraud", {"auc": 0.90}, Champion(3, {"auc": 0.85}))
    assert verdict.passed
    assert verdict.alias == "champion"
    assert "canary" not in verdict.reason


def test_promote_to_canary_sends_a_better_version_out_as_canary() -> None:
    verdict = decide(
        model_spec(promote_to="canary"), "fraud", {"auc": 0.90}, Champion(3, {"auc": 0.85})
    )
    assert verdict.passed
    assert verdict.alias == "canary"
    assert verdict.compared_with_version == 3
    assert "beats champion v3" in verdict.reason
    assert "canary" in verdict.reason


def test_promote_to_canary_still_makes_the_first_version_champion() -> None:
    verdict = decide(model_spec(promote_to="canary"), "fraud", {"auc": 0.80}, None)
    assert verdict.passed
    assert verdict.alias == "champion"
    assert "first version" in verdict.reason


def test_promote_to_canary_does_not_bypass_the_gates() -> None:
    verdict = decide(
        model_spec(promote_to="canary"), "fraud", {"auc": 0.80}, Champion(3, {"auc": 0.85})
    )
    assert not verdict.passed
    assert "below min_improvement" in verdict.reason


def test_models_outside_the_spec_have_no_gates() -> None:
    verdict = decide(model_spec(), "imported", {"auc": 0.99}, None)
    assert not verdict.passed
    assert "no promotion gates" in verdict.reason
    assert not decide(None, "fraud", {"auc": 0.99}, None).passed


# ── artifact store ──────────────────────────────────────────────────────────


def test_artifacts_are_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    first = store.put(b"model-bytes")
    again = store.put(b"model-bytes")
    assert first == again
    assert first.location == f"sha256/{first.sha256[:2]}/{first.sha256}.onnx"
    assert store.read(first.location, first.sha256) == b"model-bytes"
    assert first.uri.startswith("file://")


@pytest.mark.parametrize(
    "location",
    ["../outside.onnx", "sha256/../../etc/passwd", "/etc/passwd", "a\\..\\b", "", "x\x00.onnx"],
)
def test_locations_outside_the_store_are_refused(tmp_path: Path, location: str) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidInput, match="store"):
        store.read_unverified(location)


@pytest.mark.parametrize("location", ["x" * 2000, "a/" + "y" * 300 + ".onnx", "b/" * 600])
def test_locations_no_file_system_holds_are_invalid_input_not_an_os_error(
    tmp_path: Path, location: str
) -> None:
    # Found by the soak's gRPC fuzz: ENAMETOOLONG from is_file() answered INTERNAL.
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidInput, match="longer than a store path can be"):
        store.read_unverified(location)


def test_a_symlink_leading_out_of_the_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.onnx").write_bytes(b"secret")
    root = tmp_path / "store"
    root.mkdir()
    (root / "link.onnx").symlink_to(tmp_path / "secret.onnx")
    with pytest.raises(InvalidInput, match="outside the store"):
        LocalArtifactStore(root).read_unverified("link.onnx")


def test_every_read_verifies_the_hash(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    stored = store.put(b"original")
    (tmp_path / stored.location).write_bytes(b"tampered")
    with pytest.raises(ArtifactCorrupted, match="corrupted"):
        store.read(stored.location, stored.sha256)
    with pytest.raises(NotFound):
        store.read("sha256/00/missing.onnx", stored.sha256)


def test_store_settings(tmp_path: Path) -> None:
    assert isinstance(open_artifact_store(str(tmp_path)), LocalArtifactStore)
    local = open_artifact_store(tmp_path.as_uri())
    assert isinstance(local, LocalArtifactStore)
    assert local.root == tmp_path.resolve()
    s3 = open_artifact_store("s3://bucket/models?endpoint_url=http://127.0.0.1:9000")
    assert isinstance(s3, S3ArtifactStore)  # built without touching the network
    assert s3.uri("sha256/ab/x.onnx") == "s3://bucket/models/sha256/ab/x.onnx"
    with pytest.raises(ConfigError, match="expected a folder"):
        open_artifact_store("ftp://host/x")


# ── API surface ─────────────────────────────────────────────────────────────


def test_only_mutating_methods_need_the_token() -> None:
    service = "/mlbus.registry.v1.RegistryService"
    assert protects(f"{service}/Register")
    assert protects(f"{service}/SetAlias")
    assert protects(f"{service}/Rollback")
    for read in ("GetModelVersion", "ResolveAlias", "ListModelVersions", "DownloadArtifact"):
        assert not protects(f"{service}/{read}")
    assert not protects("/grpc.health.v1.Health/Check")


def test_version_and_change_survive_the_proto_round_trip() -> None:
    now = datetime(2025, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    info = ModelVersionInfo(
        model="fraud",
        version=4,
        artifact_uri="file:///a.onnx",
        sha256="ab" * 32,
        size_bytes=10,
        signature=validate_onnx(tiny_model()),
        metrics={"auc": 0.9},
        params={"depth": 3, "nested": {"a": [1, 2]}},
        dataset_fingerprint="fp",
        feature_views={"card": 2},
        run_id="run-1",
        code_version=None,
        created_at=now,
        created_by="me",
        aliases=("canary", "champion"),
        reference_profile=ReferenceProfile.from_samples({"a": [1.0, 2.0, 3.0]}),
        gate=GateDecision(evaluated=True, passed=False, reason="worse", compared_with_version=3),
        evaluation_window="2025-04-30/2025-05-01",
    )
    assert version_from_proto(version_to_proto(info)) == info
    change = AliasChange(
        model="fraud",
        alias="champion",
        version=4,
        previous_version=None,
        reason="first",
        actor="me",
        kind="set",
        at=now,
        event_id="e1",
    )
    assert change_from_proto(change_to_proto(change)) == change


def test_an_element_type_onnx_does_not_know_is_invalid_input_not_a_crash() -> None:
    # Found by the soak's fuzzing: DataType.Name(33) raised ValueError → INTERNAL.
    import onnx

    model = onnx.load_model_from_string(tiny_model())
    model.graph.input[0].type.tensor_type.elem_type = 33
    model.graph.output[0].type.tensor_type.elem_type = 33
    with pytest.raises(InvalidInput, match=r"unsupported element type unknown \(33\)"):
        validate_onnx(model.SerializeToString())
