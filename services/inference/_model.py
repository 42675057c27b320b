"""One loaded model version: an ONNX Runtime session, its signature, and the checks before serving.

A version is served only after `load_model` succeeded: the bytes hash to the
sha256 the registry published, they pass the registry's artifact policy
(`mlbus.onnx_policy`: no external data, no custom-op domains, no tensor
above the limit), ONNX Runtime parses them, the signature the
session reports equals the one published with the version and is compatible
with the version being replaced, the trainer's input metadata (if any) is
well-formed, and a warm-up run passed. Every failure is a `ModelRefused` whose
`stage` says which step failed (the refusal metric is labelled with it).

Input metadata (written by `mlbus.training`): `mlbus.encoding` (JSON
`{"refs": [...], "categories": {ref: [category, ...]}}`) and
`mlbus.feature_names.<input>` (comma-separated refs) describe the columns of
the model's single 2-D float input. They are read and checked once here and
kept compiled on the `LoadedModel` as an `InputEncoding`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnxruntime as ort

from mlbus.errors import InvalidInput, PermanentError
from mlbus.events import ModelSignature, TensorSpec
from mlbus.model_metadata import ENCODING, FEATURE_NAMES, Encoding
from mlbus.signatures import OIP_TO_NUMPY, UnsupportedTensor, session_signature

RefusalStage = Literal["fetch", "sha256", "policy", "parse", "signature", "metadata", "warmup"]
_FLOATS = ("FP32", "FP64")


class ModelRefused(PermanentError):
    """A model version failed a check before serving; the served version stays."""

    def __init__(self, stage: RefusalStage, reason: str) -> None:
        super().__init__(f"refused at {stage}: {reason}")
        self.stage: RefusalStage = stage
        self.reason = reason


@dataclass(frozen=True)
class OrtThreads:
    """ONNX Runtime threading: one intra-op and one inter-op thread, sequential execution.

    One request is a few microseconds of work; parallelism comes from serving
    many requests, not from splitting one across threads that then contend.
    """

    intra_op: int = 1
    inter_op: int = 1

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op
        options.inter_op_num_threads = self.inter_op
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings from the ORT C++ side are noise here
        return options


_NAN = math.nan


@dataclass(frozen=True)
class InputEncoding:
    """How raw feature values become the columns of the model's one 2-D float input.

    The trainer's contract (`mlbus.training.FeatureEncoding`): column j is
    feature `refs[j]`. A categorical column (a ref in `codes`) holds the
    value's index in the trainer's category list; a bool is looked up as
    "false"/"true"; a value not listed, a non-string or null is NaN. Any other
    column holds the number itself (null → NaN).
    """

    input: str
    refs: tuple[str, ...]
    codes: Mapping[str, Mapping[str, float]]
    """Categorical ref → category → code (as float, ready for the matrix)."""

    def code(self, ref: str, value: object) -> float:
        """One raw value of categorical `ref` as the trainer encodes it."""
        return encode_category(self.codes[ref], value)


def encode_category(table: Mapping[str, float], value: object) -> float:
    """The trainer's lookup: bool → "false"/"true"; anything not a listed string → NaN."""
    if isinstance(value, bool):
        return table.get("true" if value else "false", _NAN)
    return table.get(value, _NAN) if isinstance(value, str) else _NAN


def read_encoding(metadata: Mapping[str, str], signature: ModelSignature) -> InputEncoding | None:
    """The input encoding from a model's custom metadata; `ValueError` saying what is wrong.

    None when the model has neither `mlbus.encoding` nor `mlbus.feature_names.<input>`
    for a single 2-D float input (`mlbus.feature_names.*` of other inputs is
    left to the prediction log).
    """
    inputs = signature.inputs
    matrix = len(inputs) == 1 and inputs[0].datatype in _FLOATS and len(inputs[0].shape) == 2
    text = metadata.get(ENCODING)
    if text is None and not (matrix and FEATURE_NAMES + inputs[0].name in metadata):
        return None
    if not matrix:
        raise ValueError(
            f"{ENCODING} describes one 2-D FP32/FP64 input, the model has "
            + ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in inputs)
        )
    (tensor,) = inputs
    names_key = FEATURE_NAMES + tensor.name
    names = metadata.get(names_key)
    named = None if names is None else tuple(n.strip() for n in names.split(","))
    codes: dict[str, dict[str, float]] = {}
    if text is None:
        assert named is not None
        refs = named
    else:
        refs, codes = _parse_encoding(text)
        _check_names(refs)
        if named is not None and named != refs:
            raise ValueError(
                f"{names_key} ({', '.join(named)}) differs from the refs of "
                f"{ENCODING} ({', '.join(refs)})"
            )
    _check_names(refs)
    width = tensor.shape[1]
    if width != -1 and width != len(refs):
        raise ValueError(
            f"input {tensor.name!r} has {width} columns, the metadata names {len(refs)} features"
        )
    return InputEncoding(tensor.name, refs, codes)


def _check_names(refs: tuple[str, ...]) -> None:
    if not refs or not all(refs) or len(set(refs)) != len(refs):
        raise ValueError(f"feature names {list(refs)} must be non-empty and distinct")


def _parse_encoding(text: str) -> tuple[tuple[str, ...], dict[str, dict[str, float]]]:
    encoding = Encoding.from_json(text)
    codes = {
        ref: {v: float(i) for i, v in enumerate(values)}
        for ref, values in encoding.categories.items()
    }
    return encoding.refs, codes


@dataclass(eq=False)
class LoadedModel:
    """A model version ready to serve. Immutable once built; share it freely across requests."""

    name: str
    version: int
    sha256: str
    signature: ModelSignature
    session: ort.InferenceSession = field(repr=False)
    size_bytes: int = 0
    encoding: InputEncoding | None = None
    """The trainer's input encoding from the ONNX metadata, if the model has one."""

    def __post_init__(self) -> None:
        self.inputs: dict[str, TensorSpec] = {t.name: t for t in self.signature.inputs}
        self.outputs: dict[str, TensorSpec] = {t.name: t for t in self.signature.outputs}
        self.output_names: list[str] = [t.name for t in self.signature.outputs]

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the session; `outputs` limits which outputs are computed (default all)."""
        names = outputs or self.output_names
        results = self.session.run(names, dict(inputs))
        return dict(zip(names, results, strict=True))

    def warm_up(self, rounds: int = 3) -> None:
        """Run a batch of one through the session so the first real request is not slow."""
        sample = {spec.name: sample_input(spec) for spec in self.signature.inputs}
        for _ in range(rounds):
            self.run(sample)


def sample_input(spec: TensorSpec, batch: int = 1) -> np.ndarray:
    """A harmless input of the right dtype and shape (unknown dimensions → `batch`)."""
    shape = tuple(batch if dim < 0 else dim for dim in spec.shape)
    dtype = OIP_TO_NUMPY[spec.datatype]
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=np.object_)
    return np.zeros(shape, dtype=dtype)


def signature_problems(
    candidate: ModelSignature, served: ModelSignature, *, what: str
) -> list[str]:
    """Why `candidate` cannot stand in for `served` (empty: it can).

    Same input names and datatypes, each input shape accepting at least what
    the served one accepted (same rank; a fixed dimension stays the same or
    becomes -1); same output names and datatypes, same output ranks.
    """
    problems: list[str] = []
    for kind, new_specs, old_specs in (
        ("input", candidate.inputs, served.inputs),
        ("output", candidate.outputs, served.outputs),
    ):
        new = {t.name: t for t in new_specs}
        old = {t.name: t for t in old_specs}
        if missing := sorted(old.keys() - new.keys()):
            problems.append(f"{kind}s {missing} of {what} are missing")
        if extra := sorted(new.keys() - old.keys()):
            problems.append(f"{kind}s {extra} are not in {what}")
        for name in sorted(old.keys() & new.keys()):
            was, now = old[name], new[name]
            if was.datatype != now.datatype:
                problems.append(f"{kind} {name!r} is {now.datatype}, {what} has {was.datatype}")
            if len(was.shape) != len(now.shape) or (
                kind == "input"
                and any(n != -1 and n != w for w, n in zip(was.shape, now.shape, strict=True))
            ):
                problems.append(
                    f"{kind} {name!r} has shape {list(now.shape)}, {what} has {list(was.shape)}"
                )
    return problems


def _check_policy(name: str, version: int, data: bytes, max_tensor_bytes: int | None) -> None:
    """The registry's artifact policy again, before ONNX Runtime reads a byte of it.

    Imported here, on the first load: onnx costs ~10 MB resident, and only a
    process that loads models needs it.
    """
    from mlbus.onnx_policy import ArtifactPolicy, check_model, parse_model

    policy = ArtifactPolicy(setting="MLBUS_INFERENCE_MAX_TENSOR_MB")
    if max_tensor_bytes is not None:
        policy = ArtifactPolicy(max_tensor_bytes, policy.setting)
    try:
        model = parse_model(data)
    except InvalidInput as exc:  # unparseable bytes are a parse refusal, as ONNX Runtime's are
        raise ModelRefused("parse", f"{name} v{version}: {exc}") from None
    try:
        check_model(model, policy)
    except InvalidInput as exc:
        raise ModelRefused("policy", f"{name} v{version}: {exc}") from None


def load_model(
    name: str,
    version: int,
    data: bytes,
    *,
    expected_sha256: str,
    published_signature: ModelSignature | None = None,
    served: LoadedModel | None = None,
    threads: OrtThreads | None = None,
    max_tensor_bytes: int | None = None,
) -> LoadedModel:
    """Verify, load and warm up one version; raise `ModelRefused` naming the failed step.

    CPU-bound (parsing, graph optimisation, warm-up): call it in a worker thread.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ModelRefused(
            "sha256",
            f"{name} v{version}: the artifact hashes to {actual}, "
            f"the registry published {expected_sha256}",
        )
    _check_policy(name, version, data, max_tensor_bytes)
    try:
        session = ort.InferenceSession(
            data,
            sess_options=(threads or OrtThreads()).session_options(),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/… types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelRefused(
            "parse", f"{name} v{version}: ONNX Runtime cannot load it: {first}"
        ) from None
    try:
        signature = session_signature(session)
    except UnsupportedTensor as exc:
        raise ModelRefused("signature", f"{name} v{version}: {exc}") from None
    problems: list[str] = []
    if published_signature is not None:
        problems += signature_problems(signature, published_signature, what="the published one")
    if served is not None:
        problems += signature_problems(
            signature, served.signature, what=f"the served v{served.version}"
        )
    if problems:
        raise ModelRefused("signature", f"{name} v{version}: " + "; ".join(problems))
    try:
        encoding = read_encoding(session.get_modelmeta().custom_metadata_map, signature)
    except ValueError as exc:
        raise ModelRefused("metadata", f"{name} v{version}: {exc}") from None
    model = LoadedModel(
        name, version, actual, signature, session, size_bytes=len(data), encoding=encoding
    )
    try:
        model.warm_up()
    except Exception as exc:
        raise ModelRefused("warmup", f"{name} v{version}: warm-up run failed: {exc}") from None
    return model
