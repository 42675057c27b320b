"""Traces, metrics and logs for every mlbus process."""

from mlbus.telemetry._propagation import extract_kafka_context, inject_kafka_headers

__all__ = ["extract_kafka_context", "inject_kafka_headers"]
