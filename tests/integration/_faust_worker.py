"""A user's Faust app reading mlbus events through `mlbus.faust` (run as a real worker).

    python _faust_worker.py BOOTSTRAP APP_ID OUT_FILE MODEL worker -l warning

Each record of MODEL is written to OUT_FILE as one JSON line: what the typed
record, the CloudEvents attributes and the trace context gave the agent.
"""

import dataclasses
import json
import sys
from pathlib import Path

import faust
from opentelemetry import trace

from mlbus.faust import (
    DriftDetectedRecord,
    PredictionLoggedRecord,
    cloud_event,
    drift_detected_topic,
    prediction_logged_topic,
    trace_context,
)

bootstrap, app_id, out_file, model = sys.argv[1:5]
out = Path(out_file)

app = faust.App(
    app_id,
    broker=f"kafka://{bootstrap}",
    store="memory://",
    web_enabled=False,
    broker_session_timeout=6,  # the embedded broker completes a join in about half
    consumer_auto_offset_reset="earliest",
    topic_replication_factor=1,
)


def report(kind: str, event: faust.EventT, extra: dict[str, object]) -> None:
    span_context = trace.get_current_span(trace_context(event)).get_span_context()
    line = {
        "kind": kind,
        "record": type(event.value).__name__,
        "event_id": event.value.event_id,
        "occurred_at": event.value.occurred_at.isoformat(),
        "cloud_event": dataclasses.asdict(cloud_event(event)),
        "trace_id": f"{span_context.trace_id:032x}" if span_context.is_valid else None,
        **extra,
    }
    with out.open("a") as file:
        file.write(json.dumps(line) + "\n")


@app.agent(prediction_logged_topic(app))
async def predictions(stream: faust.StreamT) -> None:
    async for event in stream.events():
        value = event.value
        assert isinstance(value, PredictionLoggedRecord)
        if value.model == model:
            report("prediction", event, {"outputs": value.outputs, "entity_id": value.entity_id})


@app.agent(drift_detected_topic(app))
async def detections(stream: faust.StreamT) -> None:
    async for event in stream.events():
        value = event.value
        assert isinstance(value, DriftDetectedRecord)
        if value.model == model:
            first = value.results[0]
            report(
                "drift",
                event,
                {
                    "feature": first.feature,
                    "drifted": first.drifted,
                    "result": type(first).__name__,
                },
            )


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *sys.argv[5:]]
    app.main()
