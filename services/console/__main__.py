"""`python -m mlbus.console`: build settings, serve the web console until SIGTERM."""

from __future__ import annotations


def main() -> int:
    from mlbus.config import run_service

    from . import ConsoleSettings, run

    return run_service("console", ConsoleSettings, run)


if __name__ == "__main__":
    raise SystemExit(main())
