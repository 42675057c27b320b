"""The project spec: one `mlbus.yaml` describing a use case, validated once, read by every service.

    spec = load_spec("mlbus.yaml")           # ProjectSpec, or SpecError (a ConfigError)
    spec.topics()                            # topic → source name (ingestion)
    spec.sources["transactions"].contract    # the data contract (ingestion, generator)
    spec.view_features("card_activity")      # FeatureDefs with names, types, windows (features)
    spec.model_features()                    # the model's inputs, in order (trainer, inference)
    spec.drift.tests_for(feature)            # tests per feature (drift)

Feature names are made in one place (`FeatureView.feature_names`): raw fields
keep their name, aggregations are `<field>_<function>_<window>` (`amount_sum_1h`)
or `count_<window>`; across the spec a feature is `view.feature`.
"""

from mlbus.spec._base import CrossFieldError, SpecModel, format_loc
from mlbus.spec._contract import (
    CATEGORICAL_TYPES,
    KEY_TYPES,
    NUMERIC_TYPES,
    DataContract,
    FieldSpec,
    FieldType,
    LabelLink,
    Source,
    SourceKind,
    UnknownFields,
    parse_timestamp,
)
from mlbus.spec._drift import Correction, DriftSpec, DriftTest, DriftTests
from mlbus.spec._durations import (
    PositiveSeconds,
    Seconds,
    duration_label,
    format_duration,
    parse_duration,
)
from mlbus.spec._features import (
    Aggregation,
    AggregationFunction,
    FeatureDef,
    FeatureKind,
    FeatureView,
)
from mlbus.spec._loader import SpecError, SpecIssue, load_spec, parse_spec
from mlbus.spec._model import (
    HIGHER_IS_BETTER,
    Estimator,
    Gates,
    LabelRef,
    Metric,
    ModelSpec,
    Task,
    metric_gain,
)
from mlbus.spec._outcomes import ExperimentSpec, LabelingSpec, OutcomesSpec
from mlbus.spec._project import ProjectSpec
from mlbus.spec._search import ParamSpace, SearchSpec
from mlbus.spec._serving import FeatureValue, ServingSpec

__all__ = [
    "CATEGORICAL_TYPES",
    "HIGHER_IS_BETTER",
    "KEY_TYPES",
    "NUMERIC_TYPES",
    "Aggregation",
    "AggregationFunction",
    "Correction",
    "CrossFieldError",
    "DataContract",
    "DriftSpec",
    "DriftTest",
    "DriftTests",
    "Estimator",
    "ExperimentSpec",
    "FeatureDef",
    "FeatureKind",
    "FeatureValue",
    "FeatureView",
    "FieldSpec",
    "FieldType",
    "Gates",
    "LabelLink",
    "LabelRef",
    "LabelingSpec",
    "Metric",
    "ModelSpec",
    "OutcomesSpec",
    "ParamSpace",
    "PositiveSeconds",
    "ProjectSpec",
    "SearchSpec",
    "Seconds",
    "ServingSpec",
    "Source",
    "SourceKind",
    "SpecError",
    "SpecIssue",
    "SpecModel",
    "Task",
    "UnknownFields",
    "duration_label",
    "format_duration",
    "format_loc",
    "load_spec",
    "metric_gain",
    "parse_duration",
    "parse_spec",
    "parse_timestamp",
]
