"""One `mlbus demo` run for a test module: the embedded stack, silent, its failure kept."""

from __future__ import annotations

import os
from pathlib import Path

from mlbus.config import MlbusSettings
from mlbus.demo import DemoConfig, DemoRun, PhaseFailed, SilentReporter, run_demo


def run_for_tests(data_dir: Path, config: DemoConfig) -> DemoRun:
    """Run the demo in `data_dir`; a failed phase is kept in `run.error` for the tests to
    judge, one claim each, instead of failing the fixture."""
    for name in ("MLBUS_KAFKA_BOOTSTRAP_SERVERS", "MLBUS_REDIS_URL", "REDIS_URL"):
        assert name not in os.environ, f"unset {name}: the demo runs its own embedded stack"
    run = DemoRun()
    try:
        run_demo(MlbusSettings(data_dir=data_dir), config, SilentReporter(), run)
    except PhaseFailed as exc:
        run.error = exc
    return run
