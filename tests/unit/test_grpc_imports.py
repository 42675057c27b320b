"""A process that neither serves nor calls gRPC does not import grpc.

grpc costs ~12 MB resident and ~30 ms of start-up in every process that
imports it. The ingestion worker, the `mlbus` CLI, the runtime supervisor
(`mlbus up`, `mlbus demo`) and the `--workers N` supervisor of inference use
no gRPC, yet imported it through `mlbus.errors` (status codes) and
`mlbus.telemetry` (the gRPC interceptors). Checked in a fresh interpreter, with
telemetry set up as a service does, since this test process imported grpc long
ago.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import grpc
import pytest

from mlbus.errors import MlbusError, StatusName

PROBE = """
import importlib, sys
from pathlib import Path
from mlbus.config import MlbusSettings
from mlbus.telemetry import setup_telemetry

for module in sys.argv[2:]:
    importlib.import_module(module)
settings = MlbusSettings(data_dir=Path(sys.argv[1]))
setup_telemetry("probe", settings, install_global=False).shutdown()
print("grpc" in sys.modules)
"""

NO_GRPC = {
    "ingestion": ("mlbus.ingestion.__main__",),
    "cli": ("mlbus.cli",),
    "runtime supervisor": ("mlbus.runtime",),
    "inference supervisor": (
        "mlbus.inference._run",
        "mlbus.inference._settings",
        "mlbus.inference._workers",
    ),
}


@pytest.mark.parametrize("modules", NO_GRPC.values(), ids=NO_GRPC.keys())
def test_a_process_without_grpc_work_does_not_import_grpc(
    tmp_path: Path, modules: tuple[str, ...]
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), *modules],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_the_grpc_names_of_telemetry_still_load_on_first_use() -> None:
    from mlbus import telemetry
    from mlbus.telemetry._grpc import TracingServerInterceptor

    assert telemetry.TracingServerInterceptor is TracingServerInterceptor


def test_each_error_answers_with_its_grpc_status() -> None:
    from mlbus.errors import (
        ConfigError,
        InvalidInput,
        ModelNotReady,
        NotFound,
        PermanentError,
        RetryableError,
        Unauthenticated,
    )
    from mlbus.inference import DeadlineExceeded
    from mlbus.registry._artifacts import ArtifactCorrupted

    expected = {
        MlbusError: grpc.StatusCode.INTERNAL,
        ConfigError: grpc.StatusCode.INTERNAL,
        RetryableError: grpc.StatusCode.UNAVAILABLE,
        ModelNotReady: grpc.StatusCode.UNAVAILABLE,
        PermanentError: grpc.StatusCode.FAILED_PRECONDITION,
        InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
        NotFound: grpc.StatusCode.NOT_FOUND,
        Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
        DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
        ArtifactCorrupted: grpc.StatusCode.DATA_LOSS,
    }
    for error, status in expected.items():  # __new__: some take more than a message
        assert error.__new__(error).grpc_status is status, error.__name__
    assert set(get_args(StatusName)) <= set(grpc.StatusCode.__members__)
