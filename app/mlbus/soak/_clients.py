"""What the soak talks through: the status reporter, the delivering producer, the
ModelInfer client, the Prometheus scraper, and small conversions."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlbus.bus import Publisher
from mlbus.runtime import port_open

from ._checks import (
    Position,
    TimedEvent,
)

log = logging.getLogger(__name__)


class StatusReporter:
    """The demo's `Reporter` as one-line statuses (its phases and news)."""

    def __init__(self, status: Callable[[str], None], clock: Callable[[], float]) -> None:
        self._status = status
        self._clock = clock

    def phase(self, name: str, total: int | None = None) -> None:
        self._status(f"[{self._clock():6.0f}s] {name}")

    def advance(self, steps: int = 1) -> None:
        return None

    def news(self, text: str) -> None:
        self._status(f"[{self._clock():6.0f}s]   {text}")


@dataclass
class Sent:
    """What the soak sent and the broker acknowledged: the truth the stores are checked
    against."""

    payments: dict[str, tuple[str, TimedEvent]] = field(default_factory=dict)
    """Payment event id → (entity id, the event as the feature service sees it)."""
    labels: set[str] = field(default_factory=set)
    malformed: dict[Position, bytes] = field(default_factory=dict)
    retries: int = 0
    """Deliveries the producer had to send again (the broker failed or timed out)."""


class Delivery:
    """Sends records and sends again the ones whose delivery failed, until acknowledged,
    as a producer that must not lose data would."""

    def __init__(self, publisher: Publisher, sent: Sent) -> None:
        self.publisher = publisher
        self.sent = sent
        self._tasks: set[asyncio.Task[None]] = set()

    def send(
        self,
        topic: str,
        value: bytes,
        key: str,
        on_ack: Callable[[Position], None],
    ) -> None:
        task = asyncio.create_task(self._deliver(topic, value, key, on_ack))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, topic: str, value: bytes, key: str, on_ack: Callable[[Position], None]
    ) -> None:
        while True:
            try:
                future = await self.publisher.send_raw(topic, value, key)
                meta = await future
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiokafka's errors share no useful base: retry them all
                self.sent.retries += 1
                log.warning("delivery to %s failed (%s); sending again", topic, exc)
                await asyncio.sleep(0.5)
                continue
            on_ack((topic, meta.partition, meta.offset))
            return

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))


def as_json_bytes(event: dict[str, Any]) -> bytes:
    import json

    return json.dumps(event, separators=(",", ":")).encode()


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class InferClient:
    """ModelInfer over the Open Inference Protocol with an all-zeros input of the served
    signature (only numeric inputs: anything else is not cheap to make up)."""

    def __init__(self, address: str, model: str) -> None:
        import grpc.aio

        from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as oip_grpc

        self.model = model
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = oip_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._request: Any = None

    async def prepare(self) -> str | None:
        """Build the request from the model's metadata; a reason when ModelInfer is skipped."""
        import grpc.aio
        import numpy as np

        from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as oip

        try:
            meta = await self._stub.ModelMetadata(
                oip.ModelMetadataRequest(name=self.model), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            return f"ModelMetadata failed: {exc.code().name}"
        dtypes = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
        request = oip.ModelInferRequest(model_name=self.model)
        for tensor in meta.inputs:
            if tensor.datatype not in dtypes:
                return f"input {tensor.name} is {tensor.datatype}"
            shape = [1 if d < 0 else int(d) for d in tensor.shape]
            request.inputs.append(
                oip.ModelInferRequest.InferInputTensor(
                    name=tensor.name, datatype=tensor.datatype, shape=shape
                )
            )
            zeros = np.zeros(shape, dtype=dtypes[tensor.datatype])
            request.raw_input_contents.append(zeros.tobytes())
        self._request = request
        return None

    async def infer(self, deadline_s: float) -> tuple[str, int | None, str]:
        """(status name, version answered, what the server said with a failure)."""
        import grpc.aio

        try:
            answer = await self._stub.ModelInfer(self._request, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, None, exc.details() or ""
        return "OK", int(answer.model_version) if answer.model_version else None, ""

    @property
    def ready(self) -> bool:
        return self._request is not None

    async def close(self) -> None:
        await self._channel.close()


def scrape(port: int | None) -> dict[str, float]:
    """`name{labels}` → value of a service's Prometheus endpoint ({} when it does not answer)."""
    if port is None:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def metric_sum(metrics: dict[str, float], prefix: str, *needles: str) -> float:
    """The sum of the samples named `prefix…` whose name and labels hold every needle (a
    counter's `_created` timestamp is not a count)."""
    return sum(
        value
        for name, value in metrics.items()
        if name.startswith(prefix) and "_created{" not in name and all(n in name for n in needles)
    )


def port_answers(port: int) -> Awaitable[bool]:
    return asyncio.to_thread(port_open, "127.0.0.1", port)


def parse_ms(text: str) -> int:
    return epoch_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
