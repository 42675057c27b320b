"""An S3 emulator over real HTTP for the s3:// store tests: moto's server, as a subprocess.

moto emulates the S3 API; it is not S3, nor MinIO. What these tests prove is the
clients' side (requests, keys, hashes, errors) against that emulation.

pytest only loads `conftest.py` by itself; test modules that need the server
import the fixture:

    from tests.integration.s3_server import S3Server, s3_server_fixture  # noqa: F401

The server listens on a free loopback port for the whole session, with one
bucket created up front. The AWS credentials and region it accepts are set in
the environment for the session (and restored afterwards), so boto3 and
pyarrow's S3 client find them the way they would in production.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

READY_TIMEOUT_S = 20.0
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "mlbus-test",
    "AWS_SECRET_ACCESS_KEY": "mlbus-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe an instance-metadata service
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str

    def client(self) -> Any:
        """A plain boto3 client for the server (what an operator or attacker could do)."""
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=5, read_timeout=10, s3={"addressing_style": "path"}, retries={}
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server not listening on {port} after {READY_TIMEOUT_S} s")


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = _free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with pytest.MonkeyPatch.context() as env, log.open("wb") as output:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(process, port, log)
            server = S3Server(f"http://127.0.0.1:{port}", f"mlbus-{uuid.uuid4().hex[:12]}")
            server.client().create_bucket(Bucket=server.bucket)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
