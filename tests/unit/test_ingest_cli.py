"""`mlbus ingest validate`: the offline report, its exit codes and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mlbus.cli import _ingest
from mlbus.example import fraud_spec_path, generate
from mlbus.spec import load_spec

HISTORICAL_NOW = "2025-01-20T00:00:00Z"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()
    _ingest.register(root)

    @root.callback()
    def main() -> None:
        """Root."""

    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("data")
    return generate(load_spec(fraud_spec_path()), 100, seed=1).write_jsonl(out)


def run(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ingest", "validate", *args])
    return result.exit_code, result.output


def test_a_clean_file_passes(app: typer.Typer, files: dict[str, Path]) -> None:
    spec = str(fraud_spec_path())
    code, out = run(app, str(files["transactions"]), "--spec", spec, "--now", HISTORICAL_NOW)
    assert code == 0, out
    assert "100 accepted" in out
    assert "0 rejected" in out


def test_a_broken_file_reports_each_reason_and_fails(
    app: typer.Typer, files: dict[str, Path], tmp_path: Path
) -> None:
    lines = files["transactions"].read_text().splitlines()
    broken = tmp_path / "payments.jsonl"
    bad = json.loads(lines[0]) | {"country": "ZZ", "amount": -1}
    broken.write_text("\n".join([*lines[:10], lines[0], "oops", json.dumps(bad)]) + "\n")
    code, out = run(
        app,
        str(broken),
        "--spec",
        str(fraud_spec_path()),
        "--source",
        "transactions",
        "--now",
        HISTORICAL_NOW,
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    assert (report["accepted"], report["rejected"], report["duplicates"]) == (10, 2, 1)
    reasons = {r["code"]: r for r in report["reasons"]}
    assert set(reasons) == {"not_json", "not_in_enum", "out_of_range"}
    assert reasons["not_in_enum"]["fields"] == {"country": 1}
    assert reasons["not_in_enum"]["examples"][0]["line"] == 13


def test_lateness_uses_the_real_clock_by_default_and_hints_at_now(
    app: typer.Typer, files: dict[str, Path]
) -> None:
    code, out = run(app, str(files["transactions"]), "--spec", str(fraud_spec_path()))
    assert code == 1
    assert "too_late" in out
    assert "--now" in out


def test_the_source_must_be_known(app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text("{}\n")
    code, out = run(app, str(path), "--spec", str(fraud_spec_path()))
    assert code == 2
    assert "--source" in out
    code, out = run(app, str(path), "--spec", str(fraud_spec_path()), "--source", "nope")
    assert code == 2
    assert "transactions" in out


def test_a_bad_now_is_refused(app: typer.Typer, files: dict[str, Path]) -> None:
    code, out = run(
        app, str(files["transactions"]), "--spec", str(fraud_spec_path()), "--now", "2025-01-01"
    )
    assert code == 1
    assert "UTC offset" in out


def test_positions_parse_as_printed() -> None:
    assert _ingest.parse_position("2:41") == (2, 41)
    with pytest.raises(typer.BadParameter):
        _ingest.parse_position("41")
