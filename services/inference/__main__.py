"""`python -m mlbus.inference`: build settings, run the inference."""

from __future__ import annotations

import sys

from mlbus.errors import ConfigError


def main() -> None:
    from . import run

    try:
        run()
    except ConfigError as exc:
        sys.stderr.write(f"inference: {exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
