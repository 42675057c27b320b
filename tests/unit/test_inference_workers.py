"""Worker-mode and TLS settings without I/O: per-worker settings, exit reports, validation."""

from __future__ import annotations

import signal

import pytest

from mlbus.config import TelemetrySettings, load_settings
from mlbus.errors import ConfigError
from mlbus.inference import InferenceSettings
from mlbus.inference.__main__ import main
from mlbus.inference._workers import describe_exit, worker_settings


def test_each_worker_gets_the_shared_port_one_process_and_its_own_metrics_port() -> None:
    settings = InferenceSettings(
        workers=3, grpc_port=0, telemetry=TelemetrySettings(metrics_port=9400)
    )
    per_worker = [worker_settings(settings, i, 8123) for i in range(3)]
    assert [(s.grpc_port, s.workers) for s in per_worker] == [(8123, 1)] * 3
    assert [s.telemetry.metrics_port for s in per_worker] == [9400, 9401, 9402]
    unset = worker_settings(InferenceSettings(workers=2), 1, 8123)
    assert unset.telemetry.metrics_port is None  # no metrics server stays none
    picked = InferenceSettings(workers=2, telemetry=TelemetrySettings(metrics_port=0))
    assert worker_settings(picked, 1, 8123).telemetry.metrics_port == 0  # 0: each picks one


def test_exit_reports_name_the_signal_or_the_code() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(None) == "still running"


def test_worker_count_is_validated_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLBUS_INFERENCE_WORKERS", "0")
    with pytest.raises(ConfigError, match="MLBUS_INFERENCE_WORKERS"):
        load_settings(InferenceSettings)
    monkeypatch.setenv("MLBUS_INFERENCE_WORKERS", "4")
    assert load_settings(InferenceSettings).workers == 4


def test_the_workers_flag_overrides_the_setting_and_is_validated(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLBUS_INFERENCE_WORKERS", "4")
    with pytest.raises(SystemExit) as exited:
        main(["--workers", "-1"])
    assert exited.value.code == 2
    assert "MLBUS_INFERENCE_WORKERS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--workers", "two"])  # argparse: not a number


def test_half_a_tls_setup_is_refused() -> None:
    with pytest.raises(ConfigError, match="TLS needs both"):
        load_settings(InferenceSettings, tls_cert_file="/etc/cert.pem")
    with pytest.raises(ConfigError, match="CLIENT_CA_FILE"):
        load_settings(InferenceSettings, tls_client_ca_file="/etc/ca.pem")
    ok = load_settings(InferenceSettings, tls_cert_file="/c.pem", tls_key_file="/k.pem")
    assert ok.tls_client_ca_file is None
