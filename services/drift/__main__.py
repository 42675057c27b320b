"""`python -m mlbus.drift`: build settings, run until SIGTERM."""

from __future__ import annotations


def main() -> int:
    from mlbus.config import run_service

    from . import DriftSettings, run

    return run_service("drift", DriftSettings, run)


if __name__ == "__main__":
    raise SystemExit(main())
