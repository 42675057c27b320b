"""A serving worker without a spec loads neither the spec tooling nor reflection's descriptors.

Each module kept out is resident memory in every worker (issue #7: ≤ 100 MB per
worker): yaml and the spec models (~1 MB) load only with MLBUS_SPEC, the
runtime only in the supervisor, protobuf's `descriptor_pb2` (~4.4 MB) only when
a client first calls server reflection, the registry client and its protos
(~0.6 MB) only with MLBUS_INFERENCE_REGISTRY_ADDRESS. Checked in a fresh
interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import asyncio, sys
from pathlib import Path
from mlbus.inference import InferenceServer, InferenceSettings

async def main():
    settings = InferenceSettings(grpc_port=0, data_dir=Path(sys.argv[1]))
    async with InferenceServer(settings, host="127.0.0.1"):
        pass

asyncio.run(main())
kept_out = (
    "yaml",
    "mlbus.spec",
    "mlbus.runtime",
    "google.protobuf.descriptor_pb2",
    "mlbus.registry_client",
)
print(",".join(m for m in kept_out if m in sys.modules))
"""


def test_a_started_server_without_spec_imports_no_spec_runtime_reflection_or_registry(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1:] in ([], [""]), done.stdout
