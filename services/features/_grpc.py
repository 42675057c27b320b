"""gRPC `mlbus.features.v1.FeatureService`: online values through `mlbus.featurestore`,
evaluated at the request's moment (now, or `event_time`) exactly as serving reads them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc.aio

from mlbus.api.features.v1 import features_pb2 as pb
from mlbus.api.features.v1 import features_pb2_grpc as pb_grpc
from mlbus.errors import InvalidInput
from mlbus.events import Scalar
from mlbus.featurestore import OnlineStore, ViewAggregator
from mlbus.rpc import timestamp_ms
from mlbus.spec import ProjectSpec

MAX_ENTITIES = 10_000


def expand_refs(spec: ProjectSpec, requested: Sequence[str]) -> list[str]:
    """`view.feature` refs, a bare view name standing for every feature of the view."""
    refs: list[str] = []
    for item in requested:
        if "." in item:
            view, _, name = item.partition(".")
            if view not in spec.features:
                raise InvalidInput(
                    f"unknown feature view {view!r} (known: {sorted(spec.features)})"
                )
            if name not in spec.features[view].feature_names():
                raise InvalidInput(f"unknown feature {item!r}")
            refs.append(item)
        elif item in spec.features:
            refs.extend(f"{item}.{name}" for name in spec.features[item].feature_names())
        else:
            raise InvalidInput(f"expected 'view.feature' or a view name, got {item!r}")
    return refs


def to_proto(value: Scalar, age_s: float) -> pb.FeatureValue:
    out = pb.FeatureValue(status=pb.FeatureValue.PRESENT, age_s=age_s)
    if value is None:
        out.null_value = True
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    else:
        out.string_value = value
    return out


_NOT_FOUND = pb.FeatureValue(status=pb.FeatureValue.NOT_FOUND)


class FeatureServicer(pb_grpc.FeatureServiceServicer):
    def __init__(
        self, spec: ProjectSpec, store: OnlineStore, views: Mapping[str, ViewAggregator]
    ) -> None:
        self.spec = spec
        self.store = store
        self.versions = {name: view.version for name, view in spec.features.items()}
        self.views = views

    async def GetOnlineFeatures(  # noqa: N802 (gRPC method name)
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOnlineFeaturesResponse:
        if not request.entities:
            raise InvalidInput("expected at least one entity")
        if len(request.entities) > MAX_ENTITIES:
            raise InvalidInput(f"expected at most {MAX_ENTITIES} entities per call")
        refs = expand_refs(self.spec, request.features or list(self.spec.features))
        at_ms = timestamp_ms(request, "event_time")
        vectors = await self.store.get_features(
            list(request.entities), refs, self.versions, at_ms=at_ms, views=self.views
        )
        response = pb.GetOnlineFeaturesResponse(feature_names=refs)
        for vector in vectors:
            row = response.entities.add(entity_id=vector.entity_id)
            for ref in refs:
                if ref in vector.values:
                    row.values.append(to_proto(vector.values[ref], vector.ages_s[ref]))
                else:
                    row.values.append(_NOT_FOUND)
        return response
