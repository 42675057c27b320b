"""Which running searches an idle trainer replica may join (ADR 0023): pure decisions on a
study's attributes, no storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlbus.training import JOINABLE_ATTR, join_refusal

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def attrs(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "fraud",
        "status": "running",
        JOINABLE_ATTR: True,
        "creator": "replica-a",
        "spec_fingerprint": "spec1",
        "dataset_fingerprint": "data1",
        "started_at": (NOW - timedelta(seconds=30)).isoformat(),
        "budget_timeout_s": 600,
    }
    return {**base, **changes}


def refusal(a: dict[str, Any], worker: str = "replica-b") -> str | None:
    return join_refusal(a, model="fraud", worker=worker, spec_fingerprint="spec1", now=NOW)


def test_a_running_joinable_search_of_another_replica_may_be_joined() -> None:
    assert refusal(attrs()) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "other"},
        {"status": "completed"},
        {"status": "cancelled"},
        {JOINABLE_ATTR: False},
        {"cancelled": "superseded by request x"},
        {"dataset_fingerprint": None},  # the creator is still loading its data
    ],
)
def test_searches_that_are_not_candidates_are_skipped_silently(changes: dict[str, Any]) -> None:
    assert refusal(attrs(**changes)) == ""


def test_a_replica_does_not_join_its_own_search() -> None:
    assert refusal(attrs(), worker="replica-a") == ""


def test_a_different_spec_is_refused_with_a_reason() -> None:
    assert "spec differs" in (refusal(attrs(spec_fingerprint="spec2")) or "")


def test_a_search_older_than_its_budget_is_refused_as_abandoned() -> None:
    old = (NOW - timedelta(seconds=700)).isoformat()
    assert "beyond its 600s budget" in (refusal(attrs(started_at=old)) or "")
