"""A span exporter that appends JSON lines to a per-process file.

Used when no OTLP endpoint is configured. It runs behind a
`BatchSpanProcessor`, so `export` is called from the processor's worker
thread (or from `force_flush`); a lock keeps writes whole. Each batch is one
`write` + `flush`, so readers see complete lines except, at worst, the last.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from mlbus.telemetry.spans import SPAN_FILE_SUFFIX, SpanEvent, SpanRecord

SERVICE_NAME = "service.name"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def span_file_name(service: str, pid: int) -> str:
    return f"{_UNSAFE.sub('_', service) or 'process'}-{pid}{SPAN_FILE_SUFFIX}"


def to_record(span: ReadableSpan) -> SpanRecord:
    ctx = span.get_span_context()
    if ctx is None:  # pragma: no cover - SDK spans always have one
        raise ValueError("span without a context")
    parent = span.parent
    start_ns = span.start_time or 0
    return SpanRecord(
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
        name=span.name,
        kind=span.kind.name,
        service=str(span.resource.attributes.get(SERVICE_NAME, "unknown")),
        start_ns=start_ns,
        end_ns=span.end_time or start_ns,
        status=span.status.status_code.name,
        status_message=span.status.description,
        attributes=_plain(span.attributes),
        events=tuple(
            SpanEvent(name=e.name, timestamp_ns=e.timestamp, attributes=_plain(e.attributes))
            for e in span.events
        ),
        links=tuple(
            (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in span.links
        ),
        scope=span.instrumentation_scope.name if span.instrumentation_scope else None,
    )


def _plain(attributes: Any) -> dict[str, Any]:
    if not attributes:
        return {}
    return {str(k): list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}


class SpanFileExporter(SpanExporter):
    """Append finished spans to `<folder>/<service>-<pid>.jsonl`, opened on first use."""

    def __init__(self, folder: Path, service: str) -> None:
        self._folder = folder
        self._service = service
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._pid = 0
        self._closed = False

    @property
    def path(self) -> Path:
        """The file this process writes (after a fork, the child's own file)."""
        return self._folder / span_file_name(self._service, os.getpid())

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        lines = "".join(
            json.dumps(to_record(span).to_json(), default=str, separators=(",", ":")) + "\n"
            for span in spans
        )
        try:
            with self._lock:
                handle = self._open()
                handle.write(lines)
                handle.flush()
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _open(self) -> IO[str]:
        if self._file is None or self._pid != os.getpid():
            # A forked child must not share the parent's file handle or name.
            if self._file is not None:
                self._file.close()
            self._folder.mkdir(parents=True, exist_ok=True)
            self._pid = os.getpid()
            self._file = self.path.open("a", encoding="utf-8")
        return self._file

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            if self._file is not None and not self._file.closed:
                self._file.flush()
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
