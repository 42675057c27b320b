"""The training pipeline, without Kafka: dataset → split → fit → ONNX → parity → metrics → profile.

    dataset = load_dataset(spec, OfflineStore(url), start=..., end=...)  # _dataset.py
    trained = train(spec, dataset)
    trained.onnx, trained.metrics, trained.parity_max_error, trained.profile

Every way it can fail on purpose raises `TrainingError` with the stage and a
reason a person can act on. The model reads one float32 tensor `x` (the
dataset's `FeatureEncoding`), and that encoding goes into its ONNX metadata.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlbus.model_metadata import (
    encoding_of,
    positive_class_of,
    read_onnx_metadata,
    training_metadata,
)
from mlbus.profiles import ReferenceProfile
from mlbus.spec import ProjectSpec
from mlbus.training._dataset import Dataset, FeatureEncoding
from mlbus.training._errors import TrainingError
from mlbus.training._reference import reference_profile

PARITY_TOLERANCE = 1e-5
INPUT_NAME = "x"
SUPPORTED_ESTIMATORS = ("hist_gradient_boosting", "logistic_regression", "random_forest")
MIN_TRAIN_ROWS_PER_CLASS = 2


# ── split ────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class TimeSplit:
    """Row indexes of a split by time: train < cut <= holdout; evaluation ⊆ holdout.

    The evaluation window is the most recent `evaluation_window_s` of the
    holdout (all of it when the holdout is shorter); candidate and champion are
    compared on it. Rows sharing a timestamp always land on the same side.
    """

    train: np.ndarray
    holdout: np.ndarray
    evaluation: np.ndarray
    cut_ms: int
    evaluation_start_ms: int
    end_ms: int

    def evaluation_window(self) -> str:
        """ISO interval `start/end` of the evaluation window (the registry records it)."""
        return f"{_iso(self.evaluation_start_ms)}/{_iso(self.end_ms)}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def time_split(
    times_ms: np.ndarray, holdout_fraction: float, evaluation_window_s: float
) -> TimeSplit:
    """Split rows (sorted by time) into train, holdout and evaluation window by time."""
    n = len(times_ms)
    if n < 2:
        raise TrainingError("dataset", f"need at least 2 rows to split, got {n}")
    if np.any(np.diff(times_ms) < 0):
        raise ValueError("times_ms must be ascending")
    first_holdout = min(max(int(np.floor(n * (1 - holdout_fraction))), 1), n - 1)
    cut = int(times_ms[first_holdout])
    train = np.flatnonzero(times_ms < cut)
    holdout = np.flatnonzero(times_ms >= cut)
    end = int(times_ms[-1])
    eval_start = max(cut, end - int(evaluation_window_s * 1000))
    evaluation = np.flatnonzero(times_ms >= eval_start)
    return TimeSplit(train, holdout, evaluation, cut, eval_start, end)


# ── estimators ───────────────────────────────────────────────────────────────


def make_estimator(estimator: str, task: str, params: Mapping[str, Any]) -> Any:
    """The scikit-learn pipeline for the spec's estimator name and task, with its params.

    Logistic regression and random forest get a median imputer (categories
    unseen at training are NaN); logistic regression also a standard scaler.
    Histogram gradient boosting handles NaN itself.
    """
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if estimator not in SUPPORTED_ESTIMATORS:
        raise TrainingError(
            "train",
            f"unknown estimator {estimator!r} in the spec; supported: "
            + ", ".join(SUPPORTED_ESTIMATORS),
        )
    classification = task == "classification"
    kwargs = dict(params)
    try:
        if estimator == "hist_gradient_boosting":
            cls = (
                HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
            )
            kwargs.setdefault("random_state", 0)
            return cls(**kwargs)
        imputer = ("impute", SimpleImputer(strategy="median", keep_empty_features=True))
        if estimator == "random_forest":
            forest = RandomForestClassifier if classification else RandomForestRegressor
            kwargs.setdefault("random_state", 0)
            kwargs.setdefault("n_jobs", 1)
            return Pipeline([imputer, ("model", forest(**kwargs))])
        linear: Any = (
            LogisticRegression(**{"max_iter": 1000, **kwargs})
            if classification
            else LinearRegression(**kwargs)
        )
        return Pipeline([imputer, ("scale", StandardScaler()), ("model", linear)])
    except TypeError as exc:
        raise TrainingError("train", f"invalid params for {estimator}: {exc}") from None


# ── conversion and parity ────────────────────────────────────────────────────

PROBABILITIES = "probabilities"
LABEL = "label"
PREDICTION = "prediction"


def to_onnx(model: Any, n_features: int, task: str, metadata: Mapping[str, str]) -> bytes:
    """ONNX bytes: float32 input `x` [N, k]; outputs `label` + `probabilities` (no ZipMap)
    for a classifier, `prediction` [N, 1] for a regressor; `metadata` in the model's props."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    initial = [(INPUT_NAME, FloatTensorType([None, n_features]))]
    try:
        if task == "classification":
            final = [
                (LABEL, Int64TensorType([None])),
                (PROBABILITIES, FloatTensorType([None, 2])),
            ]
            onx = convert_sklearn(
                model,
                initial_types=initial,
                final_types=final,
                options={id(model): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
        else:
            onx = convert_sklearn(
                model,
                initial_types=initial,
                final_types=[(PREDICTION, FloatTensorType([None, 1]))],
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
    except Exception as exc:
        raise TrainingError(
            "convert", f"skl2onnx could not convert {type(model).__name__}: {exc}"
        ) from None
    for key, value in metadata.items():
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    return bytes(onx.SerializeToString())


def onnx_scores(onnx: bytes, x: np.ndarray, task: str) -> np.ndarray:
    """ONNX Runtime's score per row: P(positive) for a classifier, the prediction otherwise."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = PROBABILITIES if task == "classification" else PREDICTION
    if wanted not in names:
        raise TrainingError("evaluate", f"model has no output {wanted!r} (outputs: {names})")
    (out,) = session.run([wanted], {INPUT_NAME: x.astype(np.float32, copy=False)})
    array = np.asarray(out, dtype=np.float64)
    return array[:, 1] if task == "classification" else array.reshape(-1)


def sklearn_scores(model: Any, x: np.ndarray, task: str) -> np.ndarray:
    if task == "classification":
        return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)
    return np.asarray(model.predict(x), dtype=np.float64).reshape(-1)


def parity_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference, absolute up to 1 and relative beyond: probabilities are
    compared absolutely; a float32 regression output of 30_000 cannot be closer than ~1e-3."""
    if len(expected) == 0:
        return 0.0
    scale = np.maximum(1.0, np.abs(expected))
    return float(np.max(np.abs(got - expected) / scale))


# ── metrics ──────────────────────────────────────────────────────────────────


def compute_metrics(
    task: str, y: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, float]:
    """auc, log_loss, f1 at `threshold` (classification; y in {0, 1}); rmse, mae (regression).

    A metric that is undefined on these rows (AUC with one class) is left out.
    """
    from sklearn.metrics import (
        f1_score,
        log_loss,
        mean_absolute_error,
        mean_squared_error,
        roc_auc_score,
    )

    if len(y) == 0:
        return {}
    if task == "classification":
        out: dict[str, float] = {}
        clipped = np.clip(scores, 1e-15, 1 - 1e-15)
        if len(np.unique(y)) == 2:
            out["auc"] = float(roc_auc_score(y, scores))
        out["log_loss"] = float(log_loss(y, clipped, labels=[0, 1]))
        out["f1"] = float(f1_score(y, (scores >= threshold).astype(int), zero_division=0))
        return out
    return {
        "rmse": float(np.sqrt(mean_squared_error(y, scores))),
        "mae": float(mean_absolute_error(y, scores)),
    }


# ── the run ──────────────────────────────────────────────────────────────────

Fit = Callable[[Any, np.ndarray, np.ndarray], Any]
Progress = Callable[[str], None]


def _default_fit(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
    return model.fit(x, y)


@dataclass
class TrainedModel:
    """Everything a run produced; `metrics` are on the evaluation window (the gate's input)."""

    onnx: bytes
    metrics: dict[str, float]
    holdout_metrics: dict[str, float]
    parity_max_error: float
    profile: ReferenceProfile
    split: TimeSplit
    rows: int
    train_rows: int
    classes: tuple[str, ...]
    fit_s: float
    duration_s: float
    params: dict[str, Any] = field(default_factory=dict)

    def all_metrics(self) -> dict[str, float]:
        """Evaluation-window metrics as is, holdout ones prefixed `holdout_`, plus parity."""
        out = dict(self.metrics)
        out.update({f"holdout_{k}": v for k, v in self.holdout_metrics.items()})
        out["onnx_parity_max_error"] = self.parity_max_error
        return out


def _positive_class(spec: ProjectSpec, y: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """y as 0/1 and the class names (negative, positive)."""
    classes = sorted({str(v) for v in y.tolist()})
    if len(classes) < 2:
        shown = classes[0] if classes else "none"
        raise TrainingError(
            "dataset",
            f"the training rows have a single class ({spec.model.label.field}={shown}); "
            "a classifier needs both — wait for more labels or widen the range",
        )
    if len(classes) > 2:
        raise TrainingError(
            "dataset",
            f"expected a binary label, got {len(classes)} classes: {', '.join(classes[:5])}",
        )
    positive = "true" if "true" in classes else ("1" if "1" in classes else classes[1])
    negative = next(c for c in classes if c != positive)
    return np.asarray([1 if str(v) == positive else 0 for v in y.tolist()]), (negative, positive)


def require_rows(spec: ProjectSpec, dataset: Dataset) -> None:
    """Raise when the dataset has fewer rows than `model.min_rows`."""
    if len(dataset) < spec.model.min_rows:
        raise TrainingError(
            "dataset",
            f"too few rows: {len(dataset)} labelled rows with features, the spec needs "
            f"min_rows={spec.model.min_rows}"
            + (
                f" ({dataset.dropped_without_features} labels had no feature row yet)"
                if dataset.dropped_without_features
                else ""
            ),
        )


def train(
    spec: ProjectSpec,
    dataset: Dataset,
    *,
    fit: Fit | None = None,
    progress: Progress | None = None,
    code_version: str = "",
    params: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Split by time, fit, convert to ONNX, check parity, measure, profile.

    `params` replaces `model.params` (a search's winner); the fit uses every row
    before the holdout either way.
    """
    started = time.perf_counter()
    fit_params = dict(spec.model.params if params is None else params)
    say = progress or (lambda _stage: None)
    model_spec = spec.model
    task = model_spec.task
    require_rows(spec, dataset)
    classes: tuple[str, ...] = ()
    y = dataset.y
    if task == "classification":
        y, classes = _positive_class(spec, dataset.y)
    say("split")
    split = time_split(
        dataset.times_ms, model_spec.holdout_fraction, model_spec.evaluation_window_s
    )
    x_train, y_train = dataset.x[split.train], y[split.train]
    if task == "classification" and len(np.unique(y_train)) < 2:
        raise TrainingError(
            "dataset",
            "the training part (before the holdout) has a single class; "
            "wait for more labels or lower holdout_fraction",
        )
    estimator = make_estimator(model_spec.estimator, task, fit_params)
    say("fit")
    fit_started = time.perf_counter()
    try:
        model = (fit or _default_fit)(estimator, x_train, y_train)
    except TrainingError:
        raise
    except (ValueError, TypeError) as exc:
        raise TrainingError("train", f"{model_spec.estimator} failed to fit: {exc}") from None
    fit_s = time.perf_counter() - fit_started
    say("convert")
    metadata = training_metadata(
        dataset.encoding.metadata(),
        input_name=INPUT_NAME,
        model=model_spec.name,
        task=task,
        estimator=model_spec.estimator,
        dataset_fingerprint=dataset.fingerprint,
        threshold=model_spec.threshold,
        classes=classes,
        code_version=code_version,
    )
    onnx = to_onnx(model, dataset.x.shape[1], task, metadata)
    say("parity")
    x_hold = dataset.x[split.holdout]
    expected = sklearn_scores(model, x_hold, task)
    try:
        got = onnx_scores(onnx, x_hold, task)
    except TrainingError:
        raise
    except Exception as exc:
        raise TrainingError("parity", f"ONNX Runtime could not run the model: {exc}") from None
    error = parity_error(got, expected)
    if not error <= PARITY_TOLERANCE:
        worst = int(np.argmax(np.abs(got - expected)))
        raise TrainingError(
            "parity",
            f"ONNX output differs from scikit-learn's by {error:.3g} (> {PARITY_TOLERANCE}) "
            f"on holdout row {worst}; the model was not registered",
        )
    say("evaluate")
    threshold = model_spec.threshold
    holdout_metrics = compute_metrics(task, y[split.holdout], got, threshold)
    position = {int(i): k for k, i in enumerate(split.holdout)}
    eval_scores = got[[position[int(i)] for i in split.evaluation]]
    metrics = compute_metrics(task, y[split.evaluation], eval_scores, threshold)
    say("profile")
    # Rows hold each event's features as served (ADR 0020); which rows, and the
    # calibration replay, are in _reference (ADR 0022).
    profile = reference_profile(
        spec,
        {ref: dataset.raw[ref] for ref in dataset.encoding.refs},
        dataset.times_ms,
        split.holdout,
        got,
        dataset.entities,
        holdout_labels=y[split.holdout],
        task=task,
    )
    return TrainedModel(
        onnx=onnx,
        metrics=metrics,
        holdout_metrics=holdout_metrics,
        parity_max_error=error,
        profile=profile,
        split=split,
        rows=len(dataset),
        train_rows=len(split.train),
        classes=classes,
        fit_s=fit_s,
        duration_s=time.perf_counter() - started,
        params=fit_params,
    )


def evaluate_onnx(
    spec: ProjectSpec, onnx: bytes, dataset: Dataset, rows: np.ndarray
) -> dict[str, float]:
    """Metrics of another model (the champion) on `rows` of `dataset`, encoded its own way.

    The champion's `mlbus.encoding` metadata decides how raw values become its
    input; a model without it is fed this dataset's encoding.
    """
    meta = read_onnx_metadata(onnx)
    written = encoding_of(meta)
    encoding = dataset.encoding if written is None else FeatureEncoding.of(written)
    unknown = [r for r in encoding.refs if r not in dataset.raw]
    if unknown:
        raise TrainingError("evaluate", f"the champion reads features this run lacks: {unknown}")
    x = encoding.encode({r: [dataset.raw[r][i] for i in rows] for r in encoding.refs})
    task = spec.model.task
    y = dataset.y[rows]
    if task == "classification":
        positive = positive_class_of(meta)
        y = np.asarray([1 if str(v) == positive else 0 for v in y.tolist()])
    return compute_metrics(task, y, onnx_scores(onnx, x, task), spec.model.threshold)
