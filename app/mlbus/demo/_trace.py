"""Which hops of the loop one trace really links, read from the span files like `mlbus trace`.

The trace is the one the drift detection travelled in (the `traceparent` of
the `drift.detected` record); without a detection, the retraining request's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from mlbus.telemetry.spans import SpanRecord, read_spans

from ._summary import TraceLinks

SpanCheck = Callable[[SpanRecord], bool]


def _service(span: SpanRecord) -> str:
    return span.service.removeprefix("mlbus-")  # services name themselves "mlbus-<name>"


LINKS: tuple[tuple[str, SpanCheck], ...] = (
    ("drift detection", lambda s: _service(s) == "drift"),
    ("training request", lambda s: "mlbus.training.requested.v1" in s.name),
    ("training run", lambda s: s.name == "training.run"),
    ("registration", lambda s: s.name == "registry.register"),
    (
        "alias move",
        lambda s: "mlbus.model.published.v1" in s.name and _service(s) == "registry",
    ),
    (
        "reload",
        lambda s: _service(s) == "inference" and "mlbus.model.published.v1" in s.name,
    ),
)
"""Each hop and how its span is recognised (span names from the services and the bus)."""


def trace_links(spans: Iterable[SpanRecord], trace_id: str | None) -> TraceLinks:
    """Which of `LINKS` have a span in trace `trace_id`."""
    if trace_id is None:
        return TraceLinks(
            trace_id=None,
            links={name: False for name, _ in LINKS},
            note="no trace id: the drift detection and the training request carried no "
            "traceparent header",
        )
    members = [s for s in spans if s.trace_id == trace_id]
    links = {name: any(check(s) for s in members) for name, check in LINKS}
    missing = [name for name, ok in links.items() if not ok]
    note = (
        f"{len(members)} spans; every hop linked"
        if not missing
        else f"{len(members)} spans; not in this trace: {', '.join(missing)}"
    )
    return TraceLinks(
        trace_id=trace_id,
        links=links,
        services=tuple(sorted({s.service for s in members})),
        note=note,
    )


def read_trace_links(spans_dir: Path, trace_id: str | None) -> TraceLinks:
    return trace_links(read_spans(spans_dir), trace_id)
