"""The training pipeline as a library (no Kafka): what the trainer service and `mlbus train` run.

    dataset = load_dataset(spec, OfflineStore(url), start=..., end=...)
    trained = train(spec, dataset)          # raises TrainingError(stage, reason)
    trained.onnx, trained.all_metrics(), trained.profile, trained.split.evaluation_window()

With `model.search` in the spec, `run_job` first searches the params on the
training part (`search`, Optuna; recorded per run in the search storage, read
back with `list_runs` / `get_run`), then refits the winner (ADR 0023).

Labels are read from the label log (`write_labels` / `label_files`), features
from the offline store through `build_training_set` (point-in-time, fingerprinted).
"""

from mlbus.training._dataset import Dataset, FeatureEncoding, dataset_from_table, load_dataset
from mlbus.training._errors import TrainingError
from mlbus.training._labels import LabelRow, label_files, read_labels, write_labels
from mlbus.training._pipeline import (
    INPUT_NAME,
    PARITY_TOLERANCE,
    SUPPORTED_ESTIMATORS,
    Fit,
    TimeSplit,
    TrainedModel,
    compute_metrics,
    evaluate_onnx,
    make_estimator,
    onnx_scores,
    sklearn_scores,
    time_split,
    to_onnx,
    train,
)
from mlbus.training._run import (
    Champion,
    JoinJob,
    JoinOutcome,
    StageTiming,
    TrainingJob,
    TrainingOutcome,
    fetch_champion,
    register_outcome,
    run_job,
    run_join,
)
from mlbus.training._runs import (
    JOINABLE_ATTR,
    JoinableSearch,
    RunRecord,
    TrialRecord,
    close_storage,
    get_run,
    join_refusal,
    joinable_searches,
    list_runs,
    open_storage,
    record_version,
    request_cancel,
    storage_at,
    study_name,
)
from mlbus.training._search import (
    SearchOptions,
    SearchResult,
    ValidationSplit,
    create_study,
    join_search,
    search,
    validation_split,
)

__all__ = [
    "INPUT_NAME",
    "JOINABLE_ATTR",
    "PARITY_TOLERANCE",
    "SUPPORTED_ESTIMATORS",
    "Champion",
    "Dataset",
    "FeatureEncoding",
    "Fit",
    "JoinJob",
    "JoinOutcome",
    "JoinableSearch",
    "LabelRow",
    "RunRecord",
    "SearchOptions",
    "SearchResult",
    "StageTiming",
    "TimeSplit",
    "TrainedModel",
    "TrainingError",
    "TrainingJob",
    "TrainingOutcome",
    "TrialRecord",
    "ValidationSplit",
    "close_storage",
    "compute_metrics",
    "create_study",
    "dataset_from_table",
    "evaluate_onnx",
    "fetch_champion",
    "get_run",
    "join_refusal",
    "join_search",
    "joinable_searches",
    "label_files",
    "list_runs",
    "load_dataset",
    "make_estimator",
    "onnx_scores",
    "open_storage",
    "read_labels",
    "record_version",
    "register_outcome",
    "request_cancel",
    "run_job",
    "run_join",
    "search",
    "sklearn_scores",
    "storage_at",
    "study_name",
    "time_split",
    "to_onnx",
    "train",
    "validation_split",
    "write_labels",
]
