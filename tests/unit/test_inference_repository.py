"""The model repository: version routing and atomic swaps that in-flight requests never see."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from mlbus.errors import NotFound
from mlbus.inference import ModelRepository
from tests.unit.test_inference_model import FEATURES, loaded, version_of


def test_unknown_models_and_versions_are_not_found() -> None:
    repository = ModelRepository()
    repository.swap(loaded(2))
    with pytest.raises(NotFound, match="model 'other' is not served here \\(served: 'm'\\)"):
        repository.get("other")
    assert repository.get("m").version == 2
    assert repository.get("m", "2").version == 2
    with pytest.raises(NotFound, match="model 'm' version '1' is not served here"):
        repository.get("m", "1")


def test_a_request_keeps_the_version_it_started_with() -> None:
    repository = ModelRepository()
    repository.swap(loaded(1))
    in_flight = repository.get("m")  # what a running request holds
    previous = repository.swap(loaded(2))
    assert previous is in_flight
    x = np.ones((1, FEATURES), dtype=np.float32)
    assert list(version_of(x, in_flight.run({"x": x})["y"])) == [1]
    assert list(version_of(x, repository.get("m").run({"x": x})["y"])) == [2]


def test_the_replaced_session_is_released_once_no_request_holds_it() -> None:
    repository = ModelRepository()
    repository.swap(loaded(1))
    in_flight = repository.get("m")
    released = weakref.ref(in_flight.session)
    repository.swap(loaded(2))
    gc.collect()
    assert released() is not None  # still answering the request that holds it
    del in_flight
    gc.collect()
    assert released() is None


def test_the_served_version_per_alias_is_observed_for_the_dashboard() -> None:
    from mlbus.inference import ModelReloader
    from mlbus.inference._reload import _observe_served_versions

    class NoFetch:
        async def fetch(self, model: str, version: int, artifact_uri: str) -> bytes:
            raise AssertionError("not fetched here")

    repository = ModelRepository()
    reloader = ModelReloader(repository, NoFetch(), alias="champion")
    assert reloader.version_observations() == []
    repository.swap(loaded(3))
    repository.swap(loaded(4), "canary")

    seen = {(o.attributes["alias"], o.value) for o in reloader.version_observations()}  # type: ignore[index]
    assert seen == {("champion", 3), ("canary", 4)}
    # The gauge's callback reads every live reloader of the process.
    observed = list(_observe_served_versions(None))  # type: ignore[arg-type]
    assert {(o.attributes["model"], o.value) for o in observed} >= {("m", 3), ("m", 4)}  # type: ignore[index]


def test_before_any_model_is_loaded_a_request_is_told_to_retry_not_that_the_model_is_unknown() -> (
    None
):
    """A restarted process answers UNAVAILABLE (clients retry) until its first model loads;
    once one is served, an unknown name is NOT_FOUND."""
    import grpc

    from mlbus.errors import ModelNotReady

    repository = ModelRepository()
    with pytest.raises(ModelNotReady) as starting:
        repository.get("fraud_detector")
    assert starting.value.grpc_status == grpc.StatusCode.UNAVAILABLE
    assert "no model is loaded here yet" in str(starting.value)
