"""A trace started by a producer continues in a consumer in another process and
shows, as one tree, in `mlbus trace show`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlbus.bus import ensure_topics
from mlbus.config import KafkaSettings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PEER = Path(__file__).with_name("_trace_peer.py")


def run(args: list[str], data_dir: Path, timeout_s: float = 90) -> str:
    env = {**os.environ, "MLBUS_DATA_DIR": str(data_dir)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr
    return done.stdout


def flatten(node: dict[str, object]) -> list[dict[str, object]]:
    children = node.get("children", [])
    assert isinstance(children, list)
    return [node, *(span for child in children for span in flatten(child))]


async def test_producer_trace_continues_in_the_consumer_and_shows_in_mlbus_trace(
    kafka: KafkaSettings, unique: str, tmp_path: Path
) -> None:
    topic = f"t.e2e.trace.{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    bootstrap = kafka.require_bootstrap()

    trace_id = run([sys.executable, str(PEER), "produce", bootstrap, topic], tmp_path).strip()
    assert len(trace_id) == 32
    run([sys.executable, str(PEER), "consume", bootstrap, topic, f"g-{unique}"], tmp_path)

    shown = run([sys.executable, "-m", "mlbus.cli", "trace", "show", trace_id, "--json"], tmp_path)
    tree = json.loads(shown)
    roots = tree["spans"]  # the root spans, each with its children nested
    assert [root["name"] for root in roots] == ["user clicks retrain"]  # one tree, no orphans
    spans = [span for root in roots for span in flatten(root)]
    by_name = {str(span["name"]): span for span in spans}

    assert by_name["user clicks retrain"]["service"] == "mlbus-checkout"
    publish = by_name[f"{topic} publish"]
    process = by_name[f"{topic} process"]
    work = by_name["train model"]
    assert publish["service"] == "mlbus-checkout"
    assert process["service"] == "mlbus-trainer"
    assert work["service"] == "mlbus-trainer"
    assert process["parent_span_id"] == publish["span_id"]
    assert work["parent_span_id"] == process["span_id"]
    assert {span["trace_id"] for span in spans} == {trace_id}

    listed = run([sys.executable, "-m", "mlbus.cli", "trace", "list", "--json"], tmp_path)
    assert trace_id in listed
