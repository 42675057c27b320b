"""TLS and client certificates (mTLS) by settings, with certificates made in the test."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from mlbus.errors import ConfigError
from mlbus.inference import InferenceServer, InferenceSettings
from tests.integration.test_inference import serving

pytestmark = pytest.mark.integration

Key = ec.EllipticCurvePrivateKey


def _certificate(
    name: str, key: Key, issuer: tuple[x509.Name, Key] | None, *, ca: bool = False
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("mlbus test CA", ca_key, None, ca=True)
    files: dict[str, Path] = {}
    for name, data in {"ca.pem": _pem(ca), "ca.key": _key_pem(ca_key)}.items():
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(who, key, (ca.subject, ca_key))
        files[f"{who}.pem"] = tmp_path / f"{who}.pem"
        files[f"{who}.pem"].write_bytes(_pem(cert))
        files[f"{who}.key"] = tmp_path / f"{who}.key"
        files[f"{who}.key"].write_bytes(_key_pem(key))
    return files


async def live(channel: grpc.aio.Channel) -> bool:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    return bool((await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)).live)


async def test_tls_serves_encrypted_and_refuses_plaintext(
    pki: dict[str, Path], unique: str
) -> None:
    tls = {"tls_cert_file": pki["server.pem"], "tls_key_file": pki["server.key"]}
    async with serving(f"m-{unique}", None, **tls) as (server, _):
        address = f"127.0.0.1:{server.port}"
        trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].read_bytes())
        async with grpc.aio.secure_channel(address, trusted) as channel:
            assert await live(channel)
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await live(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # a client that does not trust the server's CA does not connect either
        other_ca = x509.load_pem_x509_certificate(pki["client.pem"].read_bytes())
        untrusted = grpc.ssl_channel_credentials(root_certificates=_pem(other_ca))
        async with grpc.aio.secure_channel(address, untrusted) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await live(channel)


async def test_a_client_ca_requires_client_certificates(pki: dict[str, Path], unique: str) -> None:
    mtls = {
        "tls_cert_file": pki["server.pem"],
        "tls_key_file": pki["server.key"],
        "tls_client_ca_file": pki["ca.pem"],
    }
    async with serving(f"m-{unique}", None, **mtls) as (server, _):
        address = f"127.0.0.1:{server.port}"
        ca = pki["ca.pem"].read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki["client.key"].read_bytes(),
            certificate_chain=pki["client.pem"].read_bytes(),
        )
        async with grpc.aio.secure_channel(address, with_cert) as channel:
            assert await live(channel)
        without = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(address, without) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await live(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_unreadable_or_mismatched_tls_files_are_clear_config_errors(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    missing = InferenceSettings(
        grpc_port=0, tls_cert_file=tmp_path / "nope.pem", tls_key_file=pki["server.key"]
    )
    with pytest.raises(ConfigError, match=r"MLBUS_INFERENCE_TLS_CERT_FILE=.*nope\.pem"):
        async with InferenceServer(missing, host="127.0.0.1"):
            pass
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello")
    junk = InferenceSettings(grpc_port=0, tls_cert_file=pki["server.pem"], tls_key_file=not_pem)
    with pytest.raises(ConfigError, match=r"MLBUS_INFERENCE_TLS_KEY_FILE.*not a PEM"):
        async with InferenceServer(junk, host="127.0.0.1"):
            pass
    mismatched = InferenceSettings(
        grpc_port=0, tls_cert_file=pki["server.pem"], tls_key_file=pki["client.key"]
    )
    with pytest.raises(ConfigError, match="certificate and key"):
        async with InferenceServer(mismatched, host="127.0.0.1"):
            pass
