"""setup_telemetry: span files, Kafka trace continuity, logs, Prometheus metrics."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, Status, StatusCode
from typer.testing import CliRunner

from mlbus.cli import app
from mlbus.config import MlbusSettings, TelemetrySettings
from mlbus.errors import ConfigError
from mlbus.telemetry import (
    Telemetry,
    build_traces,
    extract_kafka_context,
    inject_kafka_headers,
    read_spans,
    setup_logging,
    setup_telemetry,
)


def make_settings(data_dir: Path, **telemetry: object) -> MlbusSettings:
    fields: dict[str, Any] = {"otlp_endpoint": None, "metrics_port": None, **telemetry}
    return MlbusSettings(data_dir=data_dir, telemetry=TelemetrySettings(**fields))


@pytest.fixture
def settings(tmp_path: Path) -> MlbusSettings:
    return make_settings(tmp_path)


@pytest.fixture
def private() -> Iterator[list[Telemetry]]:
    """Handles created by a test, shut down even if it fails."""
    handles: list[Telemetry] = []
    yield handles
    for handle in handles:
        handle.shutdown()


def start(service: str, settings: MlbusSettings, handles: list[Telemetry]) -> Telemetry:
    handle = setup_telemetry(service, settings, install_global=False, metrics_host="127.0.0.1")
    handles.append(handle)
    return handle


# ── span file ───────────────────────────────────────────────────────────────


def test_spans_round_trip_through_the_span_file(
    settings: MlbusSettings, private: list[Telemetry]
) -> None:
    telemetry = start("trainer", settings, private)
    tracer = telemetry.tracer("test")
    with tracer.start_as_current_span("train", attributes={"model": "fraud"}) as root:
        with tracer.start_as_current_span("fit", attributes={"tags": ("a", "b")}) as fit:
            fit.add_event("epoch", {"n": 1})
        with tracer.start_as_current_span("evaluate") as evaluate:
            evaluate.set_status(Status(StatusCode.ERROR, "auc too low"))

    telemetry.shutdown()
    telemetry.shutdown()  # idempotent

    assert telemetry.span_file == settings.data.spans / f"trainer-{os.getpid()}.jsonl"
    spans = {s.name: s for s in read_spans(settings.data)}
    assert set(spans) == {"train", "fit", "evaluate"}
    trace_id = f"{root.get_span_context().trace_id:032x}"
    assert {s.trace_id for s in spans.values()} == {trace_id}
    assert spans["train"].parent_span_id is None
    assert spans["fit"].parent_span_id == spans["train"].span_id
    assert spans["evaluate"].parent_span_id == spans["train"].span_id
    assert spans["train"].service == "mlbus-trainer"
    assert spans["train"].kind == "INTERNAL"
    assert spans["train"].attributes == {"model": "fraud"}
    assert spans["fit"].attributes == {"tags": ["a", "b"]}
    assert [(e.name, dict(e.attributes)) for e in spans["fit"].events] == [("epoch", {"n": 1})]
    assert (spans["evaluate"].status, spans["evaluate"].status_message) == ("ERROR", "auc too low")
    assert spans["train"].duration_ms >= spans["fit"].duration_ms >= 0

    (trace,) = build_traces(spans.values())
    assert [n.span.name for n in trace.roots] == ["train"]
    assert [c.span.name for c in trace.roots[0].children] == ["fit", "evaluate"]


def test_force_flush_writes_without_shutdown(
    settings: MlbusSettings, private: list[Telemetry]
) -> None:
    telemetry = start("ingestion", settings, private)
    with telemetry.tracer("test").start_as_current_span("validate"):
        pass
    assert telemetry.force_flush()
    assert [s.name for s in read_spans(settings.data.spans)] == ["validate"]


def test_sample_ratio_zero_records_nothing_new(tmp_path: Path, private: list[Telemetry]) -> None:
    telemetry = start("drift", make_settings(tmp_path, sample_ratio=0.0), private)
    with telemetry.tracer("test").start_as_current_span("check") as span:
        assert not span.is_recording()
    telemetry.shutdown()
    assert read_spans(tmp_path / "spans") == []


def test_otlp_endpoint_replaces_the_span_file(tmp_path: Path, private: list[Telemetry]) -> None:
    telemetry = start(
        "registry", make_settings(tmp_path, otlp_endpoint="http://127.0.0.1:1"), private
    )
    assert telemetry.span_file is None
    assert "OTLP" in repr(telemetry)


# ── Kafka: a producer's trace continues in the consumer ─────────────────────


def test_trace_started_by_producer_continues_in_consumer(
    tmp_path: Path, private: list[Telemetry]
) -> None:
    producer = start("ingestion", make_settings(tmp_path), private)
    # The consumer samples nothing on its own: it must follow the producer's decision.
    consumer = start("features", make_settings(tmp_path, sample_ratio=0.0), private)

    headers: list[tuple[str, bytes]] = [("ce_id", b"event-1")]
    with producer.tracer("bus").start_as_current_span(
        "mlbus.ingest.validated.v1 publish", kind=SpanKind.PRODUCER
    ) as sent:
        inject_kafka_headers(headers)
    assert any(key == "traceparent" for key, _ in headers)

    context = extract_kafka_context(headers)  # in the consumer, no span is current
    with consumer.tracer("bus").start_as_current_span(
        "mlbus.ingest.validated.v1 process", context=context, kind=SpanKind.CONSUMER
    ) as received:
        assert received.is_recording()
        with consumer.tracer("features").start_as_current_span("update aggregates"):
            pass

    sent_ctx, received_ctx = sent.get_span_context(), received.get_span_context()
    assert received_ctx.trace_id == sent_ctx.trace_id
    producer.shutdown()
    consumer.shutdown()

    files = sorted(p.name for p in (tmp_path / "spans").iterdir())
    assert files == [f"features-{os.getpid()}.jsonl", f"ingestion-{os.getpid()}.jsonl"]
    (trace,) = build_traces(read_spans(tmp_path / "spans"))
    (root,) = trace.roots
    assert root.span.name == "mlbus.ingest.validated.v1 publish"
    assert root.span.kind == "PRODUCER"
    (process,) = root.children
    assert process.span.parent_span_id == f"{sent_ctx.span_id:016x}"
    assert process.span.service == "mlbus-features"
    assert [c.span.name for c in process.children] == ["update aggregates"]
    assert trace.services == ("mlbus-ingestion", "mlbus-features")

    # … and `mlbus trace show` renders it from the span files.
    result = CliRunner().invoke(
        app, ["trace", "show", trace.trace_id[:10]], env={"MLBUS_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert trace.trace_id in out
    assert out.index("publish") < out.index("process") < out.index("update aggregates")
    assert "mlbus-features" in out


def test_consumer_without_trace_headers_starts_a_new_trace(
    settings: MlbusSettings, private: list[Telemetry]
) -> None:
    consumer = start("features", settings, private)
    with consumer.tracer("bus").start_as_current_span(
        "process", context=extract_kafka_context(None), kind=SpanKind.CONSUMER
    ):
        pass
    consumer.shutdown()
    (span,) = read_spans(settings.data)
    assert span.parent_span_id is None


# ── logs ────────────────────────────────────────────────────────────────────


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_json_logs_carry_trace_and_extra_fields(tmp_path: Path, private: list[Telemetry]) -> None:
    settings = make_settings(tmp_path, log_format="json", log_level="debug")
    telemetry = start("ingestion", settings, private)
    buffer = io.StringIO()
    setup_logging("ingestion", settings, stream=io.StringIO())
    setup_logging("ingestion", settings, stream=buffer)  # replaces the first handler
    assert (
        sum(
            isinstance(h, logging.StreamHandler) and h.stream is buffer
            for h in logging.getLogger().handlers
        )
        == 1
    )
    log = logging.getLogger("mlbus.ingestion.test")

    with telemetry.tracer("test").start_as_current_span("validate") as span:
        log.debug("validated %s", "order-1", extra={"event_id": "e-1"})
    log.warning("outside any span")

    inside, outside = (json.loads(line) for line in buffer.getvalue().splitlines())
    ctx = span.get_span_context()
    assert inside["message"] == "validated order-1"
    assert inside["level"] == "DEBUG"
    assert inside["logger"] == "mlbus.ingestion.test"
    assert inside["service"] == "mlbus-ingestion"
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"
    assert inside["event_id"] == "e-1"
    assert inside["ts"].endswith("+00:00")
    assert outside["trace_id"] == ""
    assert outside["level"] == "WARNING"


@pytest.mark.usefixtures("restore_root_logger")
def test_text_logs_append_extras_and_trace_id(tmp_path: Path, private: list[Telemetry]) -> None:
    settings = make_settings(tmp_path, log_level="INFO")
    telemetry = start("drift", settings, private)
    buffer = io.StringIO()
    setup_logging("drift", settings, stream=buffer)
    log = logging.getLogger("mlbus.drift.test")

    with telemetry.tracer("test").start_as_current_span("check") as span:
        log.info("drift detected", extra={"event_id": "e-9"})
        log.debug("hidden at INFO")

    (line,) = buffer.getvalue().splitlines()
    assert " INFO    mlbus.drift.test: drift detected" in line
    assert line.endswith(f"event_id=e-9 trace_id={span.get_span_context().trace_id:032x}")


# ── metrics ─────────────────────────────────────────────────────────────────


def fetch_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_prometheus_endpoint_serves_counters(tmp_path: Path, private: list[Telemetry]) -> None:
    telemetry = start("inference", make_settings(tmp_path, metrics_port=0), private)
    assert telemetry.metrics_port is not None
    assert telemetry.metrics_port > 0
    counter = telemetry.meter("test").create_counter("mlbus_test_predictions", unit="1")
    counter.add(3, {"model": "fraud"})
    counter.add(2, {"model": "fraud"})

    body = fetch_metrics(telemetry.metrics_port)
    (sample,) = [
        line for line in body.splitlines() if line.startswith("mlbus_test_predictions_total{")
    ]
    assert 'model="fraud"' in sample
    assert sample.endswith(" 5.0")
    assert 'service_name="mlbus-inference"' in body  # target_info from the resource
    assert "process_cpu_seconds_total" in body or sys.platform != "linux"

    port = telemetry.metrics_port
    telemetry.shutdown()
    with pytest.raises(OSError):  # the server is gone
        fetch_metrics(port)


async def test_grpc_calls_are_served_on_the_metrics_port_next_to_the_sdk_metrics(
    tmp_path: Path, private: list[Telemetry]
) -> None:
    import grpc
    import grpc.aio

    from mlbus.rpc import ErrorInterceptor
    from mlbus.telemetry import MetricsServerInterceptor

    telemetry = start("inference", make_settings(tmp_path, metrics_port=0), private)
    assert telemetry.metrics_port is not None
    telemetry.meter("test").create_counter("mlbus_test_rows").add(7)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server(
        interceptors=[MetricsServerInterceptor(telemetry.metrics_registry), ErrorInterceptor()]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "mlbus.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(4):
                await channel.unary_unary("/mlbus.test.Echo/Echo")(b"hi")
    finally:
        await server.stop(grace=None)

    body = await asyncio.to_thread(fetch_metrics, telemetry.metrics_port)
    labels = 'rpc_grpc_status_code="OK",rpc_method="Echo",rpc_service="mlbus.test.Echo"'
    assert f"mlbus_rpc_server_requests_total{{{labels}}} 4.0" in body
    assert f'mlbus_rpc_server_duration_ms_bucket{{le="+Inf",{labels}}} 4.0' in body
    assert "mlbus_test_rows_total" in body  # the SDK's metrics, on the same registry


def test_metrics_work_in_process_without_a_port(
    settings: MlbusSettings, private: list[Telemetry]
) -> None:
    from prometheus_client import generate_latest

    telemetry = start("features", settings, private)
    assert telemetry.metrics_port is None
    telemetry.meter("test").create_counter("mlbus_test_rows").add(7)
    assert "mlbus_test_rows_total" in generate_latest(telemetry.metrics_registry).decode()


def test_busy_metrics_port_is_a_clear_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="MLBUS_TELEMETRY_METRICS_PORT"):
            setup_telemetry(
                "inference",
                make_settings(tmp_path, metrics_port=port),
                install_global=False,
                metrics_host="127.0.0.1",
            )


# ── the process-wide path (own interpreter: globals can be set only once) ───

_GLOBAL_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    from opentelemetry import trace
    from mlbus.config import MlbusSettings
    from mlbus.telemetry import active_telemetry, setup_telemetry, tracer

    settings = MlbusSettings()
    first = setup_telemetry("trainer", settings)
    again = setup_telemetry("trainer", settings)
    assert again is first and active_telemetry() is first
    with trace.get_tracer("global").start_as_current_span("outer"):
        with tracer("helper").start_as_current_span("inner"):
            logging.getLogger("mlbus.trainer").info("training", extra={"event_id": "e-1"})
    first.shutdown()
    first.shutdown()
    assert active_telemetry() is None
    print(json.dumps({"span_file": str(first.span_file)}))
    """
)


def test_setup_telemetry_is_idempotent_and_installs_globals(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLBUS_", "OTEL_"))}
    env.update(MLBUS_DATA_DIR=str(tmp_path), MLBUS_TELEMETRY_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    span_file = Path(json.loads(done.stdout)["span_file"])
    assert span_file.parent == tmp_path / "spans"
    assert span_file.name.startswith("trainer-")
    spans = {s.name: s for s in read_spans(tmp_path / "spans")}
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    (log_line,) = [json.loads(line) for line in done.stderr.splitlines() if '"training"' in line]
    assert log_line["trace_id"] == spans["inner"].trace_id
    assert log_line["span_id"] == spans["inner"].span_id
    assert log_line["event_id"] == "e-1"
