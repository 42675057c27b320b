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


def _all_subclasses(cls: type[MlbusError]) -> list[type[MlbusError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def test_every_error_status_is_a_grpc_status_code() -> None:
    assert set(get_args(StatusName)) <= set(grpc.StatusCode.__members__)
    errors = [MlbusError, *_all_subclasses(MlbusError)]
    assert len(errors) >= 8  # the tree of mlbus.errors at least
    for error in errors:  # __new__: some take more than a message
        assert error.__new__(error).grpc_status is grpc.StatusCode[error.status]
