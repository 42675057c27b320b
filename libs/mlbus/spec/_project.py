"""The whole project spec (`mlbus.yaml`): sources, features, model, drift, serving, outcomes.

Each section has its module (`_contract`, `_features`, `_model`, `_drift`, `_serving`,
`_outcomes`). `ProjectSpec` checks every cross-reference once, at load, so a service can
trust that a name it reads from the spec resolves: a view's source exists, a
model feature exists, the label source points at a data source, and so on.
"""

from __future__ import annotations

import hashlib
import json
from difflib import get_close_matches
from typing import Any

from pydantic import Field, model_validator

from mlbus.spec._base import Identifier, Loc, ProblemList, SpecModel, one_of
from mlbus.spec._contract import NUMERIC_TYPES, Source
from mlbus.spec._drift import DriftSpec
from mlbus.spec._features import NUMERIC_FUNCTIONS, FeatureDef, FeatureView
from mlbus.spec._model import LABEL_TYPES, ModelSpec
from mlbus.spec._outcomes import OutcomesSpec
from mlbus.spec._serving import FeatureValue, ServingSpec

PROJECT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


REPLAY_MARGIN_S = 86_400
"""Added to the validated topic's retention beyond the longest TTL + window."""


class ProjectSpec(SpecModel):
    """One use case: everything the services need to know, cross-checked."""

    project: str = Field(pattern=PROJECT_NAME)
    description: str = ""
    sources: dict[Identifier, Source] = Field(min_length=1)
    features: dict[Identifier, FeatureView] = Field(default_factory=dict)
    model: ModelSpec
    drift: DriftSpec = Field(default_factory=DriftSpec)
    serving: ServingSpec
    outcomes: OutcomesSpec = Field(default_factory=OutcomesSpec)

    @model_validator(mode="before")
    @classmethod
    def _serving_defaults_to_model(cls, data: Any) -> Any:
        """`serving` may be omitted, and `serving.model` defaults to `model.name`."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            return data
        name = data["model"].get("name")
        serving = data.get("serving", {})
        if isinstance(serving, dict) and "model" not in serving and name is not None:
            return {**data, "serving": {**serving, "model": name}}
        return data

    @model_validator(mode="after")
    def _cross_references(self) -> ProjectSpec:
        problems = ProblemList()
        self._check_sources(problems)
        self._check_views(problems)
        problems.raise_if_any()  # the model checks below resolve views and sources
        self._check_model(problems)
        problems.raise_if_any()
        self._check_drift_and_serving(problems)
        problems.raise_if_any()
        return self

    # ── lookups the services use ─────────────────────────────────────────────

    def data_sources(self) -> dict[str, Source]:
        return {name: s for name, s in self.sources.items() if s.kind == "data"}

    def label_sources(self) -> dict[str, Source]:
        return {name: s for name, s in self.sources.items() if s.kind == "labels"}

    def topics(self) -> dict[str, str]:
        """Topic → source name: what ingestion subscribes to."""
        return {source.topic: name for name, source in self.sources.items()}

    def view_features(self, view: str) -> tuple[FeatureDef, ...]:
        """Every feature of `view`, resolved (raises KeyError for an unknown view)."""
        fv = self.features[view]
        return fv.features(view, self.sources[fv.source])

    def replay_horizon_s(self) -> int:
        """How far back the validated topic must keep events so that the feature state
        can be rebuilt from it after Redis lost it (ADR 0012, Redis loss): an entity's
        values live `ttl_s` past its last event, and its longest window then still
        counts events from one window before that. Plus `REPLAY_MARGIN_S` (late
        events, the widest bucket). 0: no feature views."""
        horizons = [
            view.ttl_s + max((f.window_s or 0 for f in self.view_features(name)), default=0)
            for name, view in self.features.items()
        ]
        return max(horizons) + REPLAY_MARGIN_S if horizons else 0

    def all_features(self) -> tuple[FeatureDef, ...]:
        return tuple(f for view in self.features for f in self.view_features(view))

    def feature(self, ref: str) -> FeatureDef:
        """The feature `view.feature` (raises KeyError)."""
        view, _, name = ref.partition(".")
        for feature in self.view_features(view):
            if feature.name == name:
                return feature
        raise KeyError(ref)

    def model_features(self) -> tuple[FeatureDef, ...]:
        """The model's input features in a fixed order: the order of `model.features`."""
        return _expand_refs(self.model.features, self)

    def model_views(self) -> tuple[str, ...]:
        """Views the model reads, in first-use order."""
        return tuple(dict.fromkeys(f.view for f in self.model_features()))

    def model_entity(self) -> str:
        """The entity-id field the model's features are keyed by (e.g. `card_id`)."""
        return self.features[self.model_features()[0].view].entity

    def training_source(self) -> str:
        """The data source whose events become training rows (the one the label points at)."""
        label_source = self.sources[self.model.label.source]
        if label_source.labels is not None:
            return label_source.labels.source
        return self.model.label.source

    def fingerprint(self) -> str:
        """sha256 of the spec's canonical JSON: lineage records which spec built a model."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # ── cross-reference checks ───────────────────────────────────────────────

    def _check_sources(self, problems: ProblemList) -> None:
        from mlbus.events import ALL_TOPICS

        seen: dict[str, str] = {}
        for name, source in self.sources.items():
            loc: tuple[str, ...] = ("sources", name)
            if source.topic in seen:
                problems.add(
                    (*loc, "topic"),
                    f"expected a topic no other source uses, got {source.topic!r} "
                    f"(also sources.{seen[source.topic]})",
                )
            seen[source.topic] = name
            if source.topic in ALL_TOPICS:
                problems.add(
                    (*loc, "topic"),
                    f"expected a topic of your own, got mlbus's internal {source.topic!r}",
                )
            if source.labels is None:
                continue
            target_name = source.labels.source
            target = self.sources.get(target_name)
            link_loc = (*loc, "labels", "source")
            if target is None:
                data = one_of(self.data_sources())
                problems.add(link_loc, f"expected a data source ({data}), got {target_name!r}")
            elif target.kind != "data":
                problems.add(
                    link_loc, f"expected a data source, got the labels source {target_name!r}"
                )
            elif target.event_id is None:
                problems.add(
                    link_loc,
                    f"expected the labelled source {target_name!r} to declare event_id, "
                    "so labels can name the event they label",
                )
            else:
                ours = source.contract.fields[source.labels.event_id_field].type
                theirs = target.contract.fields[target.event_id].type
                if ours != theirs:
                    problems.add(
                        (*loc, "labels", "event_id_field"),
                        f"expected type {theirs} like {target_name}.{target.event_id}, got {ours}",
                    )

    def _check_views(self, problems: ProblemList) -> None:
        for name, view in self.features.items():
            loc: tuple[str, ...] = ("features", name)
            source = self.sources.get(view.source)
            if source is None:
                problems.add(
                    (*loc, "source"),
                    f"expected one of the sources ({one_of(self.sources)}), got {view.source!r}",
                )
                continue
            fields = source.contract.fields
            if view.entity != source.entity:
                problems.add(
                    (*loc, "entity"),
                    f"expected the entity field of source {view.source!r} ({source.entity!r}), "
                    f"got {view.entity!r}",
                )
            for i, field in enumerate(view.fields):
                if field not in fields:
                    problems.add(
                        (*loc, "fields", i),
                        f"expected a field of source {view.source!r} ({one_of(fields)}), "
                        f"got {field!r}",
                    )
            for i, agg in enumerate(view.aggregations):
                if agg.field is None:
                    continue
                agg_loc: Loc = (*loc, "aggregations", i, "field")
                if agg.field not in fields:
                    problems.add(
                        agg_loc,
                        f"expected a field of source {view.source!r} ({one_of(fields)}), "
                        f"got {agg.field!r}",
                    )
                elif (
                    agg.function in NUMERIC_FUNCTIONS
                    and fields[agg.field].type not in NUMERIC_TYPES
                ):
                    problems.add(
                        agg_loc,
                        f"expected an int or float field for {agg.function}, "
                        f"got {agg.field!r} of type {fields[agg.field].type}",
                    )

    def _check_model(self, problems: ProblemList) -> None:
        model = self.model
        label_source = self.sources.get(model.label.source)
        if label_source is None:
            problems.add(
                ("model", "label", "source"),
                f"expected one of the sources ({one_of(self.sources)}), got {model.label.source!r}",
            )
        else:
            fields = label_source.contract.fields
            if model.label.field not in fields:
                problems.add(
                    ("model", "label", "field"),
                    f"expected a field of source {model.label.source!r} ({one_of(fields)}), "
                    f"got {model.label.field!r}",
                )
            elif fields[model.label.field].type not in LABEL_TYPES[model.task]:
                problems.add(
                    ("model", "label", "field"),
                    f"expected a {one_of(LABEL_TYPES[model.task])} field for {model.task}, "
                    f"got {model.label.field!r} of type {fields[model.label.field].type}",
                )
        resolved: list[FeatureDef] = []
        for i, ref in enumerate(model.features):
            loc = ("model", "features", i)
            try:
                found = _expand_refs((ref,), self)
            except KeyError:
                problems.add(
                    loc, f"expected a view or view.feature ({self._suggest(ref)}), got {ref!r}"
                )
                continue
            for feature in found:
                if feature.kind == "timestamp":
                    problems.add(
                        loc,
                        f"expected numeric or categorical features, got timestamp {feature.ref!r}",
                    )
                if any(f.ref == feature.ref for f in resolved):
                    problems.add(loc, f"expected each feature once, got {feature.ref!r} again")
                resolved.append(feature)
        entities = {self.features[f.view].entity for f in resolved}
        if len(entities) > 1:
            problems.add(
                ("model", "features"),
                "expected views of one entity (Predict fetches features by one id), "
                f"got {sorted(entities)}",
            )
        if label_source is not None and len(entities) == 1:
            target = self.training_source()
            target_entity = self.sources[target].entity
            (entity,) = entities
            if target_entity != entity:
                problems.add(
                    ("model", "label", "source"),
                    f"expected labels of events keyed by {entity!r} like the features, "
                    f"got source {target!r} keyed by {target_entity!r}",
                )

    def _check_drift_and_serving(self, problems: ProblemList) -> None:
        features = {f.ref: f for f in self.model_features()}
        for ref, tests in self.drift.features.items():
            loc = ("drift", "features", ref)
            if ref not in features:
                problems.add(
                    loc, f"expected one of the model's features ({self._suggest(ref)}), got {ref!r}"
                )
                continue
            kind = features[ref].kind
            allowed = {"psi", "ks"} if kind == "numeric" else {"psi", "chi2", "jensen_shannon"}
            for test in tests:
                if test not in allowed:
                    problems.add(
                        loc,
                        f"expected tests for a {kind} feature ({one_of(allowed)}), got {test!r}",
                    )
        serving = self.serving
        if self.model.gates.promote_to == "canary" and serving.canary_weight == 0:
            problems.add(
                ("model", "gates", "promote_to"),
                "a canary needs traffic to be judged: set serving.canary_weight above 0, "
                "or promote_to: champion",
            )
        if serving.model != self.model.name:
            problems.add(
                ("serving", "model"),
                f"expected the model's name {self.model.name!r}, got {serving.model!r}",
            )
        for ref, value in serving.defaults.items():
            loc = ("serving", "defaults", ref)
            if ref not in features:
                problems.add(
                    loc, f"expected one of the model's features ({self._suggest(ref)}), got {ref!r}"
                )
                continue
            if features[ref].is_aggregate:
                problems.add(
                    loc,
                    f"{ref!r} is a window aggregate: it is never missing (an entity without "
                    "events in the window has the aggregate of nothing, as in training; "
                    "ADR 0020), so it takes no default; remove this line",
                )
                continue
            reason = _default_mismatch(features[ref], value)
            if reason:
                problems.add(loc, reason)
        if serving.missing_features == "default":
            missing = [
                ref
                for ref, f in features.items()
                if not f.is_aggregate and ref not in serving.defaults
            ]
            if missing:
                problems.add(
                    ("serving", "defaults"),
                    "expected a default for every raw model feature (missing_features: default), "
                    f"missing {', '.join(missing)}",
                )

    def _suggest(self, ref: str) -> str:
        """Close matches first, so a typo's fix is in the message."""
        known = [*self.features, *(f.ref for f in self.all_features())]
        close = get_close_matches(ref, known, n=3, cutoff=0.6)
        if close:  # closest first, so not through one_of (which sorts)
            shown = [repr(name) for name in close]
            tail = f" or {shown[-1]}" if len(shown) > 1 else ""
            return "did you mean " + ", ".join(shown[: len(shown) - 1 or 1]) + tail
        return one_of(self.features) if self.features else "no feature views are defined"


def _expand_refs(refs: tuple[str, ...], spec: ProjectSpec) -> tuple[FeatureDef, ...]:
    """`view` → all its features, `view.feature` → that one; KeyError for anything else."""
    out: list[FeatureDef] = []
    for ref in refs:
        if "." in ref:
            out.append(spec.feature(ref))
        else:
            out.extend(spec.view_features(ref))
    return tuple(out)


def _default_mismatch(feature: FeatureDef, value: FeatureValue) -> str | None:
    if feature.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number for {feature.dtype} feature {feature.ref!r}, got {value!r}"
        return None
    if feature.dtype == "bool":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if not isinstance(value, str):
        return f"expected a string for {feature.dtype} feature {feature.ref!r}, got {value!r}"
    if feature.values is not None and value not in feature.values:
        return f"expected one of {one_of(feature.values)}, got {value!r}"
    return None
