"""`mlbus example generate`: one JSON-lines file per source, a summary, clean errors."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from mlbus.cli import app
from mlbus.example import fraud_spec_path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fraud" / "mlbus.yaml"
START = "2026-03-01T00:00:00Z"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["example", "generate", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_generate_writes_one_file_per_source(tmp_path: Path) -> None:
    out = tmp_path / "data"
    code, output = run(
        "--spec",
        str(EXAMPLE),
        "--out",
        str(out),
        "--events",
        "1200",
        "--drift-at",
        "800",
        "--seed",
        "3",
        "--drift-kind",
        "concept",
    )
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["chargebacks.jsonl", "transactions.jsonl"]
    transactions = (out / "transactions.jsonl").read_text().splitlines()
    chargebacks = (out / "chargebacks.jsonl").read_text().splitlines()
    assert len(transactions) == 1200
    assert len(chargebacks) == 1200
    first = json.loads(transactions[0])
    assert set(first) == {
        "transaction_id",
        "card_id",
        "merchant_id",
        "amount",
        "merchant_category",
        "country",
        "channel",
        "ts",
    }
    assert "transactions.jsonl (1,200)" in output
    assert "concept drift from event 800" in output
    assert "fraud rate" in output


def test_same_seed_same_bytes_through_the_cli(tmp_path: Path) -> None:
    for name in ("a", "b"):
        code, output = run(
            "--out", str(tmp_path / name), "--events", "300", "--seed", "9", "--start", START
        )
        assert code == 0, output
    for file in ("transactions.jsonl", "chargebacks.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_default_timeline_ends_now_so_the_spec_accepts_it_and_future_labels_are_reported(
    tmp_path: Path,
) -> None:
    """A newcomer's `generate` then `ingest validate`: the contract accepts every payment."""
    before = datetime.now(UTC)
    code, output = run(  # the README's command
        "--spec", str(EXAMPLE), "--out", str(tmp_path), "--events", "100000", "--drift-at", "60000"
    )  # fmt: skip
    assert code == 0, output
    now = datetime.now(UTC)
    times = [
        datetime.fromisoformat(json.loads(line)["ts"])
        for line in (tmp_path / "transactions.jsonl").read_text().splitlines()
    ]
    assert max(times) <= now  # no payment from the future…
    assert max(times) > now - timedelta(days=1)  # …and the timeline ends now, not in the past
    validated = CliRunner().invoke(
        app,
        ["ingest", "validate", str(tmp_path / "transactions.jsonl"), "--spec", str(EXAMPLE)],
        env={"COLUMNS": "200"},
    )
    assert validated.exit_code == 0, validated.output
    assert "100,000 accepted" in validated.output
    labels = [
        datetime.fromisoformat(json.loads(line)["ts"])
        for line in (tmp_path / "chargebacks.jsonl").read_text().splitlines()
    ]
    reported = re.search(r"([\d,]+) chargebacks dated after now", output)
    assert reported is not None, output
    # chargebacks come days after their payment: some are not due yet, and all are reported
    count = int(reported.group(1).replace(",", ""))
    assert sum(1 for t in labels if t > now) <= count <= sum(1 for t in labels if t > before)
    assert count > 0


def test_default_spec_is_the_packaged_fraud_example(tmp_path: Path) -> None:
    code, output = run("--out", str(tmp_path), "--events", "50", "--start", "2026-03-01T00:00:00Z")
    assert code == 0, output
    assert fraud_spec_path().is_file()
    first = json.loads((tmp_path / "transactions.jsonl").read_text().splitlines()[0])
    assert first["ts"].startswith("2026-03-0")
    assert "no drift" in output


def test_invalid_spec_is_one_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "mlbus.yaml"
    bad.write_text(EXAMPLE.read_text().replace("  metric: auc", "  metric: rmse"))
    code, output = run("--spec", str(bad), "--out", str(tmp_path / "o"), "--events", "10")
    assert code == 2
    assert "model.metric: expected a classification metric" in output
    assert "Traceback" not in output
    assert not (tmp_path / "o").exists()


def test_bad_arguments_fail_cleanly(tmp_path: Path) -> None:
    code, output = run("--out", str(tmp_path), "--events", "10", "--drift-at", "20")
    assert code == 1
    assert "drift_at between 0 and 10" in output
    code, output = run("--out", str(tmp_path), "--events", "10", "--start", "yesterday")
    assert code == 1
    assert "--start: expected an ISO-8601 time" in output
    code, output = run("--out", str(tmp_path), "--events", "10", "--drift-kind", "sideways")
    assert code == 2
