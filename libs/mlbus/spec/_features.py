"""Feature views: what the feature service computes per entity, and how features are named.

A view reads one source and keeps, per entity, the last value of some raw
fields and sliding-window aggregations. Feature names are made here and only
here: raw fields keep their name, aggregations are `<name>_<window>` where
`name` defaults to `<field>_<function>` (`amount_sum_1h`) or `count`
(`count_10m`). A feature is referred to across the spec as `view.feature`.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from pydantic import BeforeValidator, Field, model_validator

from mlbus.spec._base import Identifier, ProblemList, SpecModel
from mlbus.spec._contract import CATEGORICAL_TYPES, NUMERIC_TYPES, FieldType, Source
from mlbus.spec._durations import PositiveSeconds, duration_label, parse_duration

AggregationFunction: TypeAlias = Literal[
    "count", "sum", "mean", "min", "max", "last", "distinct_count"
]
FeatureKind: TypeAlias = Literal["numeric", "categorical", "timestamp"]

NUMERIC_FUNCTIONS: frozenset[str] = frozenset({"sum", "mean", "min", "max"})
"""Functions that need a numeric field."""


def _window_label(value: object) -> str:
    label = duration_label(value)
    if parse_duration(label) <= 0:
        raise ValueError(f"expected a window longer than zero, got {value!r}")
    return label


WindowLabel = Annotated[str, BeforeValidator(_window_label)]
"""A window as the feature name shows it ("10m", "24h"); `parse_duration` gives its seconds."""


class Aggregation(SpecModel):
    """One streaming aggregation over one or more sliding windows.

    `field` may be omitted only for `count` (counts events). `name` overrides the
    base of the feature names (default `<field>_<function>`, or `count`).
    """

    name: Identifier | None = None
    field: str | None = None
    function: AggregationFunction
    windows: tuple[WindowLabel, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Aggregation:
        problems = ProblemList()
        if self.field is None and self.function != "count":
            problems.add(("field",), f"expected a field to aggregate for {self.function}")
        seen: dict[int, str] = {}
        for i, label in enumerate(self.windows):
            seconds = parse_duration(label)
            if seconds in seen:
                problems.add(
                    ("windows", i), f"expected distinct windows, got {label!r} = {seen[seconds]!r}"
                )
            seen[seconds] = label
        problems.raise_if_any()
        return self

    @property
    def base_name(self) -> str:
        if self.name is not None:
            return self.name
        return "count" if self.field is None else f"{self.field}_{self.function}"

    def feature_name(self, window: str) -> str:
        return f"{self.base_name}_{window}"

    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.feature_name(window) for window in self.windows)


class FeatureDef(SpecModel):
    """One concrete feature, resolved against its source's contract.

    `dtype` is the value's type; `kind` tells the trainer how to encode it and
    the drift detector which tests apply. `values` lists an enum's categories.
    """

    view: str
    name: str
    dtype: FieldType
    source_field: str | None
    function: AggregationFunction | None = None
    window: str | None = None
    window_s: int | None = None
    values: tuple[str, ...] | None = None

    @property
    def ref(self) -> str:
        """`view.feature`, the one way the spec, the trainer and serving refer to it."""
        return f"{self.view}.{self.name}"

    @property
    def kind(self) -> FeatureKind:
        if self.dtype in NUMERIC_TYPES:
            return "numeric"
        if self.dtype in CATEGORICAL_TYPES:
            return "categorical"
        return "timestamp"

    @property
    def is_aggregate(self) -> bool:
        return self.function is not None


class FeatureView(SpecModel):
    """Features of one entity computed from one source; a new `version` means new semantics.

    `ttl_s`: an entity's online values expire after this long without events;
    it must cover the longest window.

    An event's aggregates cover the entity's events strictly before it (ADR 0020),
    in training and serving alike; `include_current_event: true` counts the event
    itself too (serving then folds the request's own fields into each window, so
    the request must carry every aggregated field).
    """

    entity: str
    source: str
    version: int = Field(default=1, ge=1)
    ttl_s: PositiveSeconds
    description: str = ""
    fields: tuple[Identifier, ...] = ()
    aggregations: tuple[Aggregation, ...] = ()
    include_current_event: bool = False

    @model_validator(mode="after")
    def _check(self) -> FeatureView:
        problems = ProblemList()
        if not self.fields and not self.aggregations:
            problems.add((), "expected at least one of fields or aggregations")
        seen: set[str] = set()
        for name in self.feature_names():
            if name in seen:
                problems.add((), f"expected unique feature names, got {name!r} twice")
            seen.add(name)
        for i, agg in enumerate(self.aggregations):
            for j, window in enumerate(agg.windows):
                if parse_duration(window) > self.ttl_s:
                    problems.add(
                        ("aggregations", i, "windows", j),
                        f"expected a window no longer than ttl_s ({self.ttl_s}s), got {window!r}",
                    )
        problems.raise_if_any()
        return self

    def feature_names(self) -> tuple[str, ...]:
        """Every feature of this view, raw fields first, in spec order."""
        names = list(self.fields)
        for agg in self.aggregations:
            names.extend(agg.feature_names())
        return tuple(names)

    def windows_s(self) -> tuple[int, ...]:
        """Distinct window lengths in seconds, ascending: what the feature service must keep."""
        return tuple(sorted({parse_duration(w) for agg in self.aggregations for w in agg.windows}))

    def features(self, view_name: str, source: Source) -> tuple[FeatureDef, ...]:
        """Resolve every feature against `source`'s contract (its field types and enum values)."""
        contract = source.contract.fields
        out: list[FeatureDef] = []
        for name in self.fields:
            spec = contract[name]
            out.append(
                FeatureDef(
                    view=view_name,
                    name=name,
                    dtype=spec.type,
                    source_field=name,
                    values=spec.values,
                )
            )
        for agg in self.aggregations:
            field_spec = contract[agg.field] if agg.field is not None else None
            dtype: FieldType
            if agg.function in ("count", "distinct_count"):
                dtype = "int"
            elif agg.function in ("sum", "mean"):
                dtype = "float"
            else:
                assert field_spec is not None  # checked by ProjectSpec: only count has no field
                dtype = field_spec.type
            values = field_spec.values if agg.function == "last" and field_spec else None
            out.extend(
                FeatureDef(
                    view=view_name,
                    name=agg.feature_name(window),
                    dtype=dtype,
                    source_field=agg.field,
                    function=agg.function,
                    window=window,
                    window_s=parse_duration(window),
                    values=values,
                )
                for window in agg.windows
            )
        return tuple(out)
