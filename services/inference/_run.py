"""`python -m mlbus.inference`: one serving process, or a supervisor of `--workers N`.

Only the path taken is imported: a single process loads the serving stack
(`_server`: gRPC, ONNX Runtime, numpy); a supervisor only spawns and watches
(`_workers`), so it stays ~50 MB lighter than a worker (docs/adr/0018).
"""

from __future__ import annotations

import asyncio

from mlbus.config import load_settings
from mlbus.telemetry import setup_telemetry

from ._malloc import limit_malloc_arenas
from ._settings import InferenceSettings


def run(settings: InferenceSettings | None = None) -> None:
    """Entry point of `python -m mlbus.inference`."""
    from mlbus.runstate import discover  # here only: workers are handed their settings

    settings = discover(settings or load_settings(InferenceSettings))
    if settings.workers > 1:
        _run_supervisor(settings)
        return
    from ._server import serve

    limit_malloc_arenas()
    telemetry = setup_telemetry("inference", settings)
    try:
        asyncio.run(serve(settings))
    finally:
        telemetry.shutdown()


def _run_supervisor(settings: InferenceSettings) -> None:
    from ._workers import run_workers

    if settings.tls_cert_file is not None:
        from ._tls import server_credentials

        server_credentials(settings)  # unreadable files: one clear error, before any worker
    if settings.spec is not None:
        from mlbus.spec import load_spec

        load_spec(settings.spec)  # likewise for a bad spec
    # The supervisor serves no metrics (the workers do, each on its own port).
    quiet = settings.model_copy(
        update={"telemetry": settings.telemetry.model_copy(update={"metrics_port": None})}
    )
    telemetry = setup_telemetry("inference", quiet)
    try:
        code = run_workers(settings)
    finally:
        telemetry.shutdown()
    if code:
        raise SystemExit(code)
