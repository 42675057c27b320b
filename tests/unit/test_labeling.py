"""Which predictions ask for a label, and what a submitted answer becomes."""

from __future__ import annotations

import json
import uuid

import pytest

from mlbus.errors import InvalidInput, NotFound
from mlbus.example import fraud_spec_path
from mlbus.labeling import answer_record, label_record, labeling_request, parse_label
from mlbus.spec import LabelingSpec, load_spec


def test_disagreement_outranks_the_band_which_outranks_the_sample() -> None:
    rules = LabelingSpec(band=0.1, disagreement=0.3, sample_rate=1.0)
    disagree = labeling_request(rules, event_id="a", threshold=0.5, champion=0.9, shadow=0.2)
    near = labeling_request(rules, event_id="b", threshold=0.5, champion=0.52)
    nearer = labeling_request(rules, event_id="c", threshold=0.5, champion=0.5)
    sample = labeling_request(rules, event_id="d", threshold=0.5, champion=0.99)
    assert disagree is not None
    assert near is not None
    assert nearer is not None
    assert sample is not None
    assert disagree[0] == "disagreement"
    assert near[0] == "band"
    assert disagree[1] > nearer[1] > near[1] > sample[1]
    assert sample[0] == "sample"


def test_confident_agreeing_predictions_are_not_asked() -> None:
    rules = LabelingSpec(band=0.1, disagreement=0.3, sample_rate=0.0)
    assert labeling_request(rules, event_id="a", threshold=0.5, champion=0.95, shadow=0.9) is None


def test_the_sample_is_a_stable_share_of_event_ids() -> None:
    rules = LabelingSpec(band=None, disagreement=None, sample_rate=0.1)
    ids = [str(uuid.UUID(int=i)) for i in range(20_000)]
    chosen = [labeling_request(rules, event_id=i, threshold=0.5, champion=0.9) for i in ids]
    share = sum(c is not None for c in chosen) / len(ids)
    assert 0.09 < share < 0.11
    again = [labeling_request(rules, event_id=i, threshold=0.5, champion=0.1) for i in ids]
    assert [c is None for c in chosen] == [c is None for c in again]  # by id, not by score


def test_a_submitted_label_passes_the_labels_source_contract() -> None:
    spec = load_spec(fraud_spec_path())
    scored = str(uuid.uuid4())
    topic, key, raw = label_record(
        spec, scored_event_id=scored, value="yes", entity_id="card_000042"
    )
    doc = json.loads(raw)
    assert topic == spec.sources["chargebacks"].topic
    assert key == b"card_000042"
    assert doc["transaction_id"] == scored
    assert doc["is_fraud"] is True
    assert doc["reason_code"] is None  # nullable: what the person does not know
    uuid.UUID(doc["chargeback_id"])


def test_a_label_that_breaks_the_contract_names_every_problem() -> None:
    spec = load_spec(fraud_spec_path())
    with pytest.raises(InvalidInput, match=r"transaction_id.*card_id"):
        label_record(spec, scored_event_id="not-a-uuid", value="true", entity_id="card_1")
    with pytest.raises(InvalidInput, match="true or false"):
        parse_label("maybe", "bool")
    assert parse_label("3", "int") == 3
    assert parse_label("2.5", "float") == 2.5


def test_an_answer_may_not_replace_its_own_fields_or_leave_them_empty() -> None:
    spec = load_spec(fraud_spec_path())
    scored = str(uuid.uuid4())
    with pytest.raises(InvalidInput, match=r"\['is_fraud', 'transaction_id'\]"):
        label_record(
            spec,
            scored_event_id=scored,
            value="true",
            entity_id="card_000042",
            extra={"is_fraud": False, "transaction_id": str(uuid.uuid4())},
        )
    for empty, named in (
        ({"scored_event_id": " "}, "scored_event_id"),
        ({"value": ""}, "value"),
        ({"entity_id": ""}, "entity_id"),
    ):
        given = {"scored_event_id": scored, "value": "true", "entity_id": "card_000042"} | empty
        with pytest.raises(InvalidInput, match=named):
            label_record(spec, **given)


async def test_without_an_entity_or_a_queued_request_the_answer_is_not_found() -> None:
    spec = load_spec(fraud_spec_path())
    with pytest.raises(NotFound, match="entity_id"):
        await answer_record(
            spec, None, scored_event_id=str(uuid.uuid4()), value="true", entity_id=None
        )
