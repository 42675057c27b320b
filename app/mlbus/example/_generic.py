"""The contract-driven scenario: valid random events for any spec, with optional drift.

Each data source gets `n` events over the timeline, entities drawn from a
pool, values within the contract. Each labels source gets one label per
event of the source it labels, a little later. A boolean or numeric label
leans on the data source's first numeric field, so a model has something to
learn; concept drift reverses that lean, covariate drift moves the inputs.
"""

from __future__ import annotations

import numpy as np

from mlbus.example._dataset import DriftKind, GeneratedData, SourceEvents
from mlbus.example._values import (
    BoolArray,
    Cell,
    FloatArray,
    IntArray,
    field_values,
    iso_times,
    unique_strings,
)
from mlbus.spec import FieldSpec, ProjectSpec, Source

DAY_MS = 86_400_000
LABEL_DELAY_MS = (60_000, 6 * 3_600_000)


def generate_generic(
    spec: ProjectSpec,
    n: int,
    *,
    drift_at: int | None,
    drift_kind: DriftKind,
    seed: int,
    start_ms: int,
    days: int,
) -> GeneratedData:
    """`n` events per data source and one label per labelled event."""
    sources: dict[str, SourceEvents] = {}
    drivers: dict[str, FloatArray] = {}
    times: dict[str, IntArray] = {}
    post = np.arange(n) >= (n if drift_at is None else drift_at)
    covariate = post & (drift_kind in ("covariate", "both"))
    concept = post & (drift_kind in ("concept", "both"))
    for index, (name, source) in enumerate(spec.data_sources().items()):
        rng = np.random.default_rng([seed, index])
        t = np.sort(rng.integers(0, days * DAY_MS, size=n)) + start_ms
        sources[name] = _data_events(name, source, n, rng, covariate, t)
        drivers[name] = _driver(source, sources[name], rng)
        times[name] = t
    rates: list[tuple[float | None, float | None]] = []
    for index, (name, source) in enumerate(spec.label_sources().items()):
        assert source.labels is not None
        target = source.labels.source
        rng = np.random.default_rng([seed, 1000 + index])
        events, rate = _label_events(
            name,
            source,
            spec.sources[target],
            sources[target],
            drivers[target],
            times[target],
            rng,
            post,
            concept,
        )
        sources[name] = events
        rates.append(rate)
    model_label = spec.model.label.source
    label_names = list(spec.label_sources())
    before, after = (
        rates[label_names.index(model_label)] if model_label in label_names else (None, None)
    )
    return GeneratedData(
        scenario="generic",
        sources={name: sources[name] for name in spec.sources},
        drift_at=drift_at,
        drift_kind=drift_kind,
        seed=seed,
        label_rate_before=before,
        label_rate_after=after,
    )


def _data_events(
    name: str, source: Source, n: int, rng: np.random.Generator, shifted: BoolArray, t: IntArray
) -> SourceEvents:
    fields = source.contract.fields
    pool_size = max(10, n // 20)
    entity_pool = _keys(fields[source.entity], source.entity, pool_size, rng)
    entity = rng.integers(0, pool_size, size=n)
    columns: dict[str, list[Cell]] = {}
    for field_name, field_spec in fields.items():
        if field_name == source.entity:
            columns[field_name] = [entity_pool[i] for i in entity]
        elif field_name == source.event_id:
            columns[field_name] = list(_keys(field_spec, field_name, n, rng))
        elif field_name == source.event_time:
            columns[field_name] = list(iso_times(t))
        else:
            columns[field_name] = field_values(field_spec, field_name, n, rng, shifted, t)
    return SourceEvents(source=name, columns=columns)


def _keys(spec: FieldSpec, name: str, n: int, rng: np.random.Generator) -> list[Cell]:
    """Distinct ids for an entity or event-id field, ints counting up from `min`."""
    if spec.type == "int":
        low = int(spec.min) if spec.min is not None else 1
        if spec.max is not None and spec.max - low + 1 < n:
            raise ValueError(f"field {name!r} allows fewer than {n} distinct ids")
        return list(range(low, low + n))
    return list(unique_strings(spec, name, n, rng))


def _driver(source: Source, events: SourceEvents, rng: np.random.Generator) -> FloatArray:
    """The standardised first numeric field (what labels lean on), or noise if there is none."""
    keys = {source.entity, source.event_id, source.event_time}
    for name, spec in source.contract.fields.items():
        if spec.is_numeric and name not in keys:
            raw = np.array(
                [
                    v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan
                    for v in events.columns[name]
                ],
                dtype=float,
            )
            mean = np.nanmean(raw) if np.isfinite(raw).any() else 0.0
            raw = np.where(np.isnan(raw), mean, raw)
            spread = float(raw.std()) or 1.0
            return (raw - float(raw.mean())) / spread
    return rng.normal(0.0, 1.0, len(events))


def _label_events(
    name: str,
    source: Source,
    target: Source,
    target_events: SourceEvents,
    driver: FloatArray,
    target_times: IntArray,
    rng: np.random.Generator,
    post: BoolArray,
    concept: BoolArray,
) -> tuple[SourceEvents, tuple[float | None, float | None]]:
    assert source.labels is not None
    assert target.event_id is not None
    n = len(target_events)
    lean = np.where(concept, -1.5, 1.5) * driver + rng.normal(0.0, 0.5, n)
    delay = rng.integers(*LABEL_DELAY_MS, size=n)
    order = np.argsort(target_times + delay, kind="stable")
    t = (target_times + delay)[order]
    fields = source.contract.fields
    label_spec = fields[source.labels.label_field]
    positive = np.zeros(n, dtype=bool)
    label: list[Cell]
    if label_spec.type == "bool":
        positive = rng.random(n) < 1.0 / (1.0 + np.exp(-(lean - 1.0)))
        label = [bool(v) for v in positive]
    elif label_spec.type in ("int", "float"):
        label = _numeric_label(label_spec, lean)
    elif label_spec.type == "enum":
        options = list(label_spec.values or ())
        cuts = np.quantile(lean, np.linspace(0, 1, len(options) + 1)[1:-1])
        label = [options[i] for i in np.searchsorted(cuts, lean)]
    else:
        label = field_values(label_spec, source.labels.label_field, n, rng)
    columns: dict[str, list[Cell]] = {}
    for field_name, field_spec in fields.items():
        if field_name == source.labels.event_id_field:
            ids = target_events.columns[target.event_id]
            columns[field_name] = [ids[i] for i in order]
        elif field_name == source.labels.label_field:
            columns[field_name] = [label[i] for i in order]
        elif field_name == source.event_time:
            columns[field_name] = list(iso_times(t))
        elif field_name == source.event_id:
            columns[field_name] = _keys(field_spec, field_name, n, rng)
        elif (
            field_name == source.entity
            and fields[field_name].type == target.contract.fields[target.entity].type
        ):
            entities = target_events.columns[target.entity]
            columns[field_name] = [entities[i] for i in order]
        else:
            columns[field_name] = field_values(field_spec, field_name, n, rng, None, t)
    before = float(positive[~post].mean()) if label_spec.type == "bool" and (~post).any() else None
    after = float(positive[post].mean()) if label_spec.type == "bool" and post.any() else None
    return SourceEvents(source=name, columns=columns), (before, after)


def _numeric_label(spec: FieldSpec, lean: FloatArray) -> list[Cell]:
    lo = spec.min if spec.min is not None else 0.0
    hi = spec.max if spec.max is not None else lo + 100.0
    scaled = lo + (hi - lo) / (1.0 + np.exp(-lean))
    if spec.type == "int":
        return [int(v) for v in np.clip(np.round(scaled), np.ceil(lo), np.floor(hi))]
    return [float(v) for v in np.clip(np.round(scaled, 4), lo, hi)]
