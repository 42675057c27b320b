"""`python -m mlbus.drift`: build settings, run until SIGTERM."""

from __future__ import annotations

import sys

from mlbus.errors import ConfigError


def main() -> int:
    from mlbus.config import load_settings

    from . import DriftSettings, run

    try:
        run(load_settings(DriftSettings))
    except ConfigError as exc:
        sys.stderr.write(f"mlbus.drift: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
