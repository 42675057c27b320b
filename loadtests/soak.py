"""The soak: the whole stack under steady load for minutes, with faults, checked at the end.

Starts broker, Redis and every service (as `mlbus up --spec examples/fraud/mlbus.yaml`)
in a fresh data folder, trains the first model, then sends payments and labels at
`--rate` events/s and calls Predict and ModelInfer at `--requests` calls/s with
deadlines, asking for a training run every `--train-every` seconds. With `--faults`,
on a seeded schedule: kill -9 of every service in turn, SIGSTOP/SIGCONT of the broker
(10 s) and Redis (5 s), malformed events on every source topic, a promotion of a
corrupt artifact and of one with a wrong signature, and a hostile burst at every gRPC
server (random, mutated and oversized requests, slow clients; `--hostile` runs only
that kind); each with its recovery time.
At the end every invariant is checked (see `mlbus.soak`) and the report is printed
as JSON (and written to `--json`). Exit code 1 when an invariant fails.

    python loadtests/soak.py --minutes 10 --faults --json soak.json
    python loadtests/soak.py --minutes 2 --rate 200 --requests 50        # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console

from mlbus.soak import SoakConfig, run_soak

err = Console(stderr=True, highlight=False, soft_wrap=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--faults", action="store_true")
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="hostile gRPC bursts only (with --faults they are one of the kinds anyway)",
    )
    parser.add_argument(
        "--hostile-burst", type=float, default=8.0, help="seconds each hostile burst fuzzes"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    parser.add_argument("--rate", type=float, default=500.0, help="payments + labels per second")
    parser.add_argument(
        "--requests", type=float, default=300.0, help="Predict + ModelInfer per second"
    )
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds, on every request")
    parser.add_argument(
        "--train-every", type=float, default=90.0, help="seconds between training requests"
    )
    parser.add_argument(
        "--serving-timeout-ms",
        type=int,
        default=None,
        help="replace the spec's serving.timeout_ms (the online store's budget in Predict)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default: a new temporary folder"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = SoakConfig(
        minutes=args.minutes,
        faults=args.faults,
        hostile=args.hostile,
        hostile_burst_s=args.hostile_burst,
        rate=args.rate,
        requests=args.requests,
        deadline_s=args.deadline,
        train_every_s=args.train_every,
        seed=args.seed,
        data_dir=args.data_dir,
        serving_timeout_ms=args.serving_timeout_ms,
    )
    report = run_soak(config, status=lambda line: err.print(line))
    text = json.dumps(report, indent=2, default=str)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    for name, invariant in report.get("invariants", {}).items():
        mark = "[green]pass[/]" if invariant["passed"] else "[red]FAIL[/]"
        err.print(f"{mark} {name}")
    err.print(
        f"lost {report.get('lost')}, duplicated {report.get('duplicated')}: "
        + (
            "[green]every invariant holds[/]"
            if report.get("passed")
            else "[red]invariants failed[/]"
        )
    )
    return 0 if report.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
