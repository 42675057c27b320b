"""`python -m mlbus.inference [--workers N]`: build settings, run the inference."""

from __future__ import annotations

import argparse
import sys

from mlbus.errors import ConfigError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlbus.inference",
        description="Serve models over gRPC (settings: MLBUS_INFERENCE_*, see README.md).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT); overrides "
        "MLBUS_INFERENCE_WORKERS (default 1)",
    )
    args = parser.parse_args(argv)
    from mlbus.config import load_settings

    from . import InferenceSettings, run

    try:
        overrides = {} if args.workers is None else {"workers": args.workers}
        run(load_settings(InferenceSettings, **overrides))
    except ConfigError as exc:
        sys.stderr.write(f"inference: {exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
