"""`python -m mlbus.outcomes`: build settings, run until SIGTERM."""

from __future__ import annotations


def main() -> int:
    from mlbus.config import run_service

    from . import OutcomesSettings, run

    return run_service("outcomes", OutcomesSettings, run)


if __name__ == "__main__":
    raise SystemExit(main())
