# ruff: noqa: N802 - method names are the proto's RPC names
"""gRPC `mlbus.labeling.v1.Labeling`: the labeling queue and the answer, thin over `mlbus.labeling`.

The answer is checked and made a record by `mlbus.labeling.answer_record` (the
rule `mlbus labels submit` follows too) and sent with the service's own
producer, in the call's trace. Handlers raise `mlbus.errors`;
`mlbus.rpc.server_interceptors` turns them into status codes and, when the
service has the registry's token, guards SubmitLabel with it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from aiokafka.errors import KafkaError

from mlbus.api.labeling.v1 import labeling_pb2 as pb
from mlbus.api.labeling.v1 import labeling_pb2_grpc as pb_grpc
from mlbus.bus import Publisher
from mlbus.errors import InvalidInput, PermanentError, RetryableError
from mlbus.events import Scalar
from mlbus.labeling import LabelQueue, answer_record
from mlbus.redis_failures import REDIS_DOWN
from mlbus.spec import ProjectSpec
from mlbus.telemetry import inject_kafka_headers

SERVICE_NAME = "mlbus.labeling.v1.Labeling"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def protects(method: str) -> bool:
    """Whether a full method name (`/pkg.Service/Method`) needs the bearer token: a label
    changes what the next model learns, so sending one is guarded like a registration."""
    return method == f"/{SERVICE_NAME}/SubmitLabel"


def scalar_of(value: pb.FieldValue, name: str) -> Scalar:
    kind = value.WhichOneof("value")
    if kind is None:
        raise InvalidInput(f"fields[{name!r}] has no value: set one of its kinds")
    found: Scalar = getattr(value, kind)
    return found


def to_field_value(value: Any) -> pb.FieldValue:
    if value is None:
        return pb.FieldValue()
    if isinstance(value, bool):
        return pb.FieldValue(bool_value=value)
    if isinstance(value, int):
        return pb.FieldValue(int_value=value)
    if isinstance(value, float):
        return pb.FieldValue(double_value=value)
    return pb.FieldValue(string_value=str(value))


def request_to_proto(item: dict[str, Any]) -> pb.LabelingRequest:
    """One waiting request (the `LabelingRequested` JSON the queue keeps) as a message."""
    out = pb.LabelingRequest(
        scored_event_id=item["scored_event_id"],
        model=item["model"],
        version=int(item["version"]),
        reason=item["reason"],
        priority=float(item["priority"]),
        scores={k: float(v) for k, v in item.get("scores", {}).items()},
        features={k: to_field_value(v) for k, v in item.get("features", {}).items()},
    )
    if item.get("entity_id") is not None:
        out.entity_id = str(item["entity_id"])
    out.predicted_at.FromDatetime(datetime.fromisoformat(item["predicted_at"]))
    return out


class LabelingServicer(pb_grpc.LabelingServicer):  # type: ignore[misc]
    """`queue` is None when the spec has no `outcomes.labeling`: labels can still be
    submitted (with their entity), but nothing is queued."""

    def __init__(
        self,
        spec: ProjectSpec,
        queue: LabelQueue | None,
        publisher: Publisher,
        send_timeout_s: float,
    ) -> None:
        self.spec = spec
        self.queue = queue
        self.publisher = publisher
        self.send_timeout_s = send_timeout_s

    async def SubmitLabel(
        self, request: pb.SubmitLabelRequest, context: Any
    ) -> pb.SubmitLabelResponse:
        extra = {name: scalar_of(value, name) for name, value in request.fields.items()}
        try:
            topic, key, raw = await answer_record(
                self.spec,
                self.queue,
                scored_event_id=request.scored_event_id,
                value=request.value,
                entity_id=request.entity_id if request.HasField("entity_id") else None,
                extra=extra,
            )
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading the labeling queue: {exc}") from exc
        headers: list[tuple[str, bytes]] = []
        inject_kafka_headers(headers)  # the label's trace continues this call's
        try:
            async with asyncio.timeout(self.send_timeout_s):
                sent = await self.publisher.send_raw(topic, raw, key=key, headers=headers)
                metadata = await sent
        except TimeoutError:
            raise RetryableError(
                f"the broker did not acknowledge the label on {topic} "
                f"within {self.send_timeout_s:g} s"
            ) from None
        except KafkaError as exc:
            raise RetryableError(f"could not send the label to {topic}: {exc}") from exc
        return pb.SubmitLabelResponse(
            topic=topic,
            partition=metadata.partition,
            offset=metadata.offset,
            entity_id=key.decode(),
            label_json=raw.decode(),
        )

    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: Any
    ) -> pb.ListRequestsResponse:
        if self.queue is None:
            raise PermanentError(
                "the spec has no outcomes.labeling: no prediction is queued for a label"
            )
        if request.limit > MAX_LIMIT:
            raise InvalidInput(f"limit: at most {MAX_LIMIT}, got {request.limit}")
        limit = request.limit or DEFAULT_LIMIT
        try:
            counts = await self.queue.counts()
            waiting = await self.queue.top(limit)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading the labeling queue: {exc}") from exc
        rate = counts["answer_rate"]
        return pb.ListRequestsResponse(
            model=self.spec.model.name,
            counts=pb.QueueCounts(
                requested=counts["requested"],
                answered=counts["answered"],
                expired=counts["expired"],
                dropped=counts["dropped"],
                open=counts["open"],
                answer_rate=rate,
            ),
            requests=[request_to_proto(item) for item in waiting],
        )
