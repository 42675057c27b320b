"""The fraud example's training frame without the stack: generated payments and
chargebacks, each payment's features computed by the feature service's own
`ViewAggregator` (window aggregates at the payment's time over the card's earlier
payments, ADR 0020), joined with its chargeback. The frame `load_dataset` would
build after `mlbus up` had ingested the same events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa

from mlbus.example import fraud_spec_path, generate
from mlbus.featurestore._windows import ViewAggregator
from mlbus.spec import ProjectSpec, load_spec
from mlbus.training import Dataset, dataset_from_table


def _ms(value: Any) -> int:
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


def fraud_frame(spec: ProjectSpec, events: int, seed: int) -> pa.Table:
    data = generate(spec, events, seed=seed)
    view_name = "card_activity"
    view = spec.features[view_name]
    features = spec.view_features(view_name)
    aggregator = ViewAggregator(view, features, 0)
    labels = {str(e["transaction_id"]): e["is_fraud"] for e in data.sources["chargebacks"].events()}
    rows: dict[str, list[Any]] = {"entity_id": [], "as_of": [], "label": []}
    for f in features:
        rows[f"{view_name}.{f.name}"] = []
    states: dict[str, Any] = {}
    payments = sorted(data.sources["transactions"].events(), key=lambda e: _ms(e["ts"]))
    for event in payments:
        card = str(event["card_id"])
        ms = _ms(event["ts"])
        state = states.get(card) or aggregator.load(None)
        states[card] = state
        values = aggregator.event_values(state, ms, event)  # type: ignore[arg-type]
        aggregator.apply(state, str(event["transaction_id"]), ms, event)  # type: ignore[arg-type]
        label = labels.get(str(event["transaction_id"]))
        if label is None:
            continue
        rows["entity_id"].append(card)
        rows["as_of"].append(ms)
        rows["label"].append(label)
        for f in features:
            rows[f"{view_name}.{f.name}"].append(values[f.name])
    ts = pa.array(rows.pop("as_of"), pa.timestamp("ms", tz="UTC"))
    table = pa.table({**rows, "as_of": ts, "feature_time": ts})
    return table


def fraud_dataset(events: int, seed: int, **model: Any) -> tuple[ProjectSpec, Dataset]:
    """The example spec (its model section updated with `model`) and its dataset."""
    spec = load_spec(fraud_spec_path())
    if model:
        doc = spec.model_dump(mode="json")
        doc["model"] = {**doc["model"], **model}
        spec = ProjectSpec.model_validate(doc)
    frame = fraud_frame(spec, events, seed)
    return spec, dataset_from_table(spec, frame, f"fraud-{events}-{seed}")
