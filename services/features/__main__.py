"""`python -m mlbus.features`: build settings, run until SIGTERM."""

from __future__ import annotations


def main() -> int:
    from mlbus.config import run_service

    from . import FeaturesSettings, run

    return run_service("features", FeaturesSettings, run)


if __name__ == "__main__":
    raise SystemExit(main())
