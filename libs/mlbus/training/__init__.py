"""The training pipeline as a library (no Kafka): what the trainer service and `mlbus train` run.

    dataset = load_dataset(spec, OfflineStore(url), start=..., end=...)
    trained = train(spec, dataset)          # raises TrainingFailed(stage, reason)
    trained.onnx, trained.all_metrics(), trained.profile, trained.split.evaluation_window()

Labels are read from the label log (`write_labels` / `label_files`), features
from the offline store through `build_training_set` (point-in-time, fingerprinted).
"""

from mlbus.training._labels import LabelRow, label_files, read_labels, write_labels
from mlbus.training._pipeline import (
    INPUT_NAME,
    PARITY_TOLERANCE,
    SUPPORTED_ESTIMATORS,
    Dataset,
    FeatureEncoding,
    TimeSplit,
    TrainedModel,
    TrainingFailed,
    compute_metrics,
    dataset_from_table,
    evaluate_onnx,
    load_dataset,
    make_estimator,
    onnx_scores,
    sklearn_scores,
    time_split,
    to_onnx,
    train,
)
from mlbus.training._run import (
    Champion,
    StageTiming,
    TrainingJob,
    TrainingOutcome,
    fetch_champion,
    register_outcome,
    run_job,
)

__all__ = [
    "INPUT_NAME",
    "PARITY_TOLERANCE",
    "SUPPORTED_ESTIMATORS",
    "Champion",
    "Dataset",
    "FeatureEncoding",
    "LabelRow",
    "StageTiming",
    "TimeSplit",
    "TrainedModel",
    "TrainingFailed",
    "TrainingJob",
    "TrainingOutcome",
    "compute_metrics",
    "dataset_from_table",
    "evaluate_onnx",
    "fetch_champion",
    "label_files",
    "load_dataset",
    "make_estimator",
    "onnx_scores",
    "read_labels",
    "register_outcome",
    "run_job",
    "sklearn_scores",
    "time_split",
    "to_onnx",
    "train",
    "write_labels",
]
