"""W3C trace context in Kafka headers (`traceparent`, `tracestate`)."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

KafkaHeaders = list[tuple[str, bytes]]


class _HeaderSetter(Setter[KafkaHeaders]):
    def set(self, carrier: KafkaHeaders, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode()))


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("latin-1") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_SETTER = _HeaderSetter()
_GETTER = _HeaderGetter()


def inject_kafka_headers(headers: KafkaHeaders, context: Context | None = None) -> None:
    """Add the current (or given) trace context to a Kafka header list, in place."""
    propagate.inject(headers, context=context, setter=_SETTER)


def extract_kafka_context(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """The trace context a producer put in these headers (empty if none)."""
    return propagate.extract(headers or (), getter=_GETTER)
