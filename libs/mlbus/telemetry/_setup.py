"""`setup_telemetry(service, settings)`: traces, metrics and logs for one process.

Traces go to the OTLP/gRPC collector at `OTEL_EXPORTER_OTLP_ENDPOINT` when it
is set, otherwise to `<data_dir>/spans/<service>-<pid>.jsonl` (read by
`mlbus trace`), always through a `BatchSpanProcessor` so that ending a span
costs a queue append. Metrics are pulled by Prometheus: a
`PrometheusMetricReader`, served over HTTP when a metrics port is set.

OpenTelemetry's global providers can be set once per process. The first
`setup_telemetry` installs its providers globally and sets up logging;
calling it again returns the same handle. `install_global=False` builds a
private handle that touches nothing process-wide — what tests use to get
fresh providers, each with its own Prometheus registry.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

import mlbus
from mlbus.config import MlbusSettings
from mlbus.errors import ConfigError
from mlbus.telemetry._logging import _service_name, setup_logging
from mlbus.telemetry._sampling import mlbus_sampler, set_data_sample_ratio
from mlbus.telemetry._spanfile import SpanFileExporter

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

_lock = threading.Lock()
_active: Telemetry | None = None
_globals_installed = False


class Telemetry:
    """Handle on one process's telemetry; `shutdown()` flushes and stops it (idempotent)."""

    def __init__(
        self,
        service: str,
        settings: MlbusSettings,
        *,
        install_global: bool = False,
        metrics_host: str = "0.0.0.0",
    ) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry

        self._shutdown_done = False
        self.service = service
        self.service_name = _service_name(service)
        cfg = settings.telemetry
        resource = Resource.create(
            {
                "service.name": self.service_name,
                "service.namespace": "mlbus",
                "service.version": mlbus.__version__,
                "process.pid": os.getpid(),
            }
        )

        self.span_file: Path | None = None
        exporter: SpanExporter
        if cfg.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint)
        else:
            file_exporter = SpanFileExporter(settings.data.spans, service)
            self.span_file = file_exporter.path
            exporter = file_exporter
        self.tracer_provider = TracerProvider(
            resource=resource,
            sampler=mlbus_sampler(cfg.sample_ratio, cfg.data_sample_ratio),
            shutdown_on_exit=install_global,
        )
        self.tracer_provider.add_span_processor(BatchSpanProcessor(exporter))

        # The process-wide handle also serves plain prometheus_client metrics
        # (the default registry); a private one gets a registry of its own.
        self.metrics_registry: CollectorRegistry = (
            REGISTRY if install_global else _private_registry(CollectorRegistry)
        )
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        self._reader = PrometheusMetricReader(registry=self.metrics_registry)
        self.meter_provider = MeterProvider(
            metric_readers=[self._reader], resource=resource, shutdown_on_exit=install_global
        )

        self.metrics_port: int | None = None
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        if cfg.metrics_port is not None:
            try:
                self._start_metrics_server(metrics_host, cfg.metrics_port)
            except BaseException:
                self._shutdown_providers()
                raise

    def _start_metrics_server(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=host, registry=self.metrics_registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                "set MLBUS_TELEMETRY_METRICS_PORT to a free port, or 0 to pick one"
            ) from None
        self._http = (server, thread)
        self.metrics_port = int(server.server_address[1])

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name, mlbus.__version__)

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name, mlbus.__version__)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export every finished span now; False if it did not finish in time."""
        return self.tracer_provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flush pending spans, stop exporters and the metrics server. Safe to call twice."""
        global _active
        with _lock:
            if self._shutdown_done:
                return
            self._shutdown_done = True
            if _active is self:
                _active = None
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None
        self._shutdown_providers()

    def _shutdown_providers(self) -> None:
        self.tracer_provider.shutdown()  # flushes the batch processor first
        self.meter_provider.shutdown()  # unregisters the Prometheus collector

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        where = f"file {self.span_file}" if self.span_file else "OTLP"
        return f"Telemetry({self.service_name!r}, spans to {where}, port {self.metrics_port})"


def _private_registry(factory: type[CollectorRegistry]) -> CollectorRegistry:
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = factory()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def setup_telemetry(
    service: str,
    settings: MlbusSettings,
    *,
    install_global: bool = True,
    metrics_host: str = "0.0.0.0",
) -> Telemetry:
    """Start traces, metrics and logging for this process; call once, early, in `run()`.

    Idempotent: while a handle is active, later calls return it. With
    `install_global=False` a new private handle is returned instead (no
    global providers, no logging changes) — for tests and embedded use.
    """
    global _active, _globals_installed
    if not install_global:
        return Telemetry(service, settings, metrics_host=metrics_host)
    with _lock:
        if _active is not None:
            if _active.service != service:
                log.warning(
                    "telemetry already set up for %r; ignoring setup for %r",
                    _active.service,
                    service,
                )
            return _active
        handle = Telemetry(service, settings, install_global=True, metrics_host=metrics_host)
        set_data_sample_ratio(settings.telemetry.data_sample_ratio)
        if not _globals_installed:
            trace.set_tracer_provider(handle.tracer_provider)
            metrics.set_meter_provider(handle.meter_provider)
            _globals_installed = True
        # else: set up again after a shutdown. OpenTelemetry's globals cannot be
        # replaced; `tracer()` and `meter()` below follow the new handle.
        _active = handle
    setup_logging(service, settings)
    log.debug("telemetry ready: %r", handle)
    return handle


def active_telemetry() -> Telemetry | None:
    """The handle `setup_telemetry` installed for this process, if any."""
    return _active


def tracer(name: str) -> trace.Tracer:
    """A tracer from this process's telemetry (a no-op one before `setup_telemetry`).

    Safe at import time: before setup it is OpenTelemetry's proxy tracer,
    which starts recording once the global provider is installed.
    """
    handle = _active
    if handle is not None:
        return handle.tracer(name)
    return trace.get_tracer(name, mlbus.__version__)


def meter(name: str) -> metrics.Meter:
    """A meter from this process's telemetry; like `tracer`, safe before setup."""
    handle = _active
    if handle is not None:
        return handle.meter(name)
    return metrics.get_meter(name, mlbus.__version__)
