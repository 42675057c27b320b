"""`python -m mlbus.ingestion`: build settings, run until SIGTERM."""

from __future__ import annotations


def main() -> int:
    from mlbus.config import run_service

    from . import IngestionSettings, run

    return run_service("ingestion", IngestionSettings, run)


if __name__ == "__main__":
    raise SystemExit(main())
