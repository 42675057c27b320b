"""The `mlbus` command line (Typer + Rich).

Each command group lives in its own module and registers itself on the root
app; heavy imports happen inside commands so `mlbus --help` stays instant.
"""

from __future__ import annotations

import typer

from mlbus.cli import (
    _common,
    _demo,
    _drift,
    _example,
    _experiments,
    _features,
    _ingest,
    _labels,
    _models,
    _runs,
    _runtime,
    _schemas,
    _spec,
    _topics,
    _trace,
    _train,
)

app = typer.Typer(
    name="mlbus",
    help="Close the machine-learning loop over Kafka: ingest, features, train, serve, watch drift.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(data_dir: _common.DataDirOption = None, verbose: _common.VerboseOption = False) -> None:
    """Options for every command: which data folder's `mlbus up` to talk to, and how loudly."""
    _common.global_options.data_dir = data_dir
    _common.global_options.verbose = verbose


for _module in (
    _runtime,
    _demo,
    _ingest,
    _features,
    _train,
    _models,
    _runs,
    _drift,
    _experiments,
    _labels,
    _trace,
    _spec,
    _example,
    _schemas,
    _topics,
):
    _module.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling
        raise SystemExit(130) from None
