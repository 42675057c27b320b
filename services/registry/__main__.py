"""`python -m mlbus.registry`: build settings, run the registry."""

from __future__ import annotations

import sys

from mlbus.errors import ConfigError


def main() -> None:
    from . import run

    try:
        run()
    except ConfigError as exc:
        sys.stderr.write(f"registry: {exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
