"""Process logging: stdlib `logging`, text or JSON lines, stamped with the trace.

Every record handled by the mlbus handler gets `service`, `trace_id` and
`span_id` (empty outside a span) from `TraceContextFilter`. Fields passed
with `extra=` (such as `event_id`) are kept: as `key=value` in text, as
top-level keys in JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from mlbus.config import MlbusSettings

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "service",
    "trace_id",
    "span_id",
}
_HANDLER_MARK = "_mlbus_handler"


class TraceContextFilter(logging.Filter):
    """Adds `service`, `trace_id` and `span_id` of the current span to each record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = f"{ctx.trace_id:032x}"
            record.span_id = f"{ctx.span_id:016x}"
        else:
            record.trace_id = getattr(record, "trace_id", "")
            record.span_id = getattr(record, "span_id", "")
        if not hasattr(record, "service"):
            record.service = self.service
        return True


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, service, trace_id, span_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", ""),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextLogFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value … trace_id=…` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{k}={v}" for k, v in _extra_fields(record).items()]
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            pairs.append(f"trace_id={trace_id}")
        if not pairs:
            return line
        head, sep, tail = line.partition("\n")  # keep tracebacks below the pairs
        return f"{head} {' '.join(pairs)}{sep}{tail}"


def setup_logging(
    service: str, settings: MlbusSettings, *, stream: TextIO | None = None
) -> logging.Handler:
    """Route the root logger to one handler (stderr by default) in the configured format.

    Idempotent: a second call replaces the handler the first one installed.
    Returns the handler so a caller (or a test) can remove it again.
    """
    telemetry = settings.telemetry
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonLogFormatter() if telemetry.log_format == "json" else TextLogFormatter()
    )
    handler.addFilter(TraceContextFilter(_service_name(service)))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(telemetry.log_level)
    return handler


def _service_name(service: str) -> str:
    return service if service.startswith("mlbus-") else f"mlbus-{service}"
