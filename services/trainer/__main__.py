"""`python -m mlbus.trainer`: build settings, run until SIGTERM."""

from __future__ import annotations


def main() -> int:
    from mlbus.config import run_service

    from . import TrainerSettings, run

    return run_service("trainer", TrainerSettings, run)


if __name__ == "__main__":
    raise SystemExit(main())
