"""`python -m mlbus.ingestion`: settings from the environment, telemetry, run until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from mlbus.config import load_settings
from mlbus.errors import ConfigError
from mlbus.service import tune_gc_for_streams
from mlbus.telemetry import setup_telemetry

from . import IngestionService, IngestionSettings

log = logging.getLogger("mlbus.ingestion")


async def _serve(service: IngestionService) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()


def main() -> int:
    try:
        settings = load_settings(IngestionSettings)
        service = IngestionService(settings)
    except ConfigError as exc:
        print(f"mlbus.ingestion: {exc}", file=sys.stderr)  # noqa: T201 - before logging exists
        return 2
    telemetry = setup_telemetry("ingestion", settings)
    tune_gc_for_streams()
    try:
        asyncio.run(_serve(service))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
