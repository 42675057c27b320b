"""`mlbus spec check|schema`, on a root app built here until the lead registers the group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mlbus.cli import _spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fraud" / "mlbus.yaml"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()
    _spec.register(root)

    @root.callback()
    def main() -> None:
        """A root with a callback, so `spec` stays a group."""

    return root


def run(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["spec", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_check_summarises_a_valid_spec(app: typer.Typer) -> None:
    code, output = run(app, "check", str(EXAMPLE))
    assert code == 0, output
    for expected in ("transactions", "payments.chargebacks.v1", "card_activity", "amount_sum_1h"):
        assert expected in output
    assert "model fraud_detector: classification with hist_gradient_boosting, 13 features" in output
    assert output.rstrip().endswith(f"ok {EXAMPLE}")


def test_check_prints_file_line_and_path_without_emoji(app: typer.Typer, tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    padding = 100 - (text.splitlines().index("    ttl_s: 7d") + 1)
    text = "#\n" * padding + text  # the error lands on line 100; Rich would print ":100:" as 💯
    bad = tmp_path / "mlbus.yaml"
    bad.write_text(text.replace("    ttl_s: 7d", "    ttl_s: soon"))
    line = 100
    code, output = run(app, "check", str(bad))
    assert code == 2
    assert f"{bad}:{line}: features.card_activity.ttl_s: expected a duration" in output.replace(
        "\n", ""
    )


def test_check_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    code, output = run(app, "check", str(tmp_path / "absent.yaml"))
    assert code == 2
    assert "absent.yaml: no such file" in output


def test_schema_is_json_schema_of_the_spec(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "mlbus.schema.json"
    code, output = run(app, "schema", str(out))
    assert code == 0, output
    schema = json.loads(out.read_text())
    assert {"project", "sources", "model"} <= set(schema["required"])
