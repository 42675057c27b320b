"""`mlbus trace list|show` on span files written to a temporary data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mlbus.cli import app
from mlbus.telemetry.spans import SpanEvent, SpanRecord

OLD = "0123456789abcdef" * 2  # the older trace: drift → training
NEW = "fedcba98" + "7" * 24  # the newer trace: one inference call
TWIN = "fedcba98" + "6" * 24  # shares NEW's first 8 characters
BASE_NS = 1_700_000_000_000_000_000


def rec(
    trace_id: str,
    span_id: str,
    parent: str | None,
    name: str,
    service: str,
    start_ms: int,
    ms: int,
    **kw: object,
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id * 16,
        parent_span_id=parent * 16 if parent else None,
        name=name,
        kind=str(kw.pop("kind", "INTERNAL")),
        service=service,
        start_ns=BASE_NS + start_ms * 1_000_000,
        end_ns=BASE_NS + (start_ms + ms) * 1_000_000,
        **kw,  # type: ignore[arg-type]
    )


def write(path: Path, *records: SpanRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(r.to_json()) + "\n" for r in records)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    spans = tmp_path / "spans"
    write(
        spans / "drift-100.jsonl",
        rec(OLD, "a", None, "drift check", "mlbus-drift", 0, 40),
        rec(
            OLD,
            "b",
            "a",
            "mlbus.drift.detected.v1 publish",
            "mlbus-drift",
            30,
            2,
            kind="PRODUCER",
            attributes={"messaging.destination.name": "mlbus.drift.detected.v1"},
        ),
    )
    write(
        spans / "trainer-200.jsonl",
        rec(
            OLD,
            "c",
            "b",
            "mlbus.drift.detected.v1 process",
            "mlbus-trainer",
            50,
            900,
            kind="CONSUMER",
            attributes={"event_id": "e-42", "model": "fraud"},
        ),
        rec(
            OLD,
            "d",
            "c",
            "fit",
            "mlbus-trainer",
            60,
            800,
            status="ERROR",
            status_message="did not converge",
            events=(
                SpanEvent(
                    "exception",
                    BASE_NS,
                    {"exception.type": "ValueError", "exception.message": "nan loss"},
                ),
            ),
        ),
    )
    write(
        spans / "inference-300.jsonl",
        rec(
            NEW,
            "e",
            None,
            "inference.v2.GRPCInferenceService/ModelInfer",
            "mlbus-inference",
            5_000,
            3,
            kind="SERVER",
            attributes={"rpc.system": "grpc"},
        ),
    )
    with (spans / "inference-300.jsonl").open("a") as f:
        f.write('{"trace_id": "' + NEW + '", "span_i')  # a torn line from a live writer
    return tmp_path


def run(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["trace", *args], env={"MLBUS_DATA_DIR": str(data_dir)})


def test_list_shows_newest_first(data_dir: Path) -> None:
    result = run(data_dir, "list")
    assert result.exit_code == 0, result.output
    out = result.stdout  # 80 columns: ids shortened to 16 characters
    assert f"{OLD[:16]}…" in out
    assert f"{NEW[:16]}…" in out
    assert out.index(NEW[:16]) < out.index(OLD[:16])
    assert "drift check" in out
    assert "drift, trainer" in out
    assert "950.0 ms" in out


def test_list_json_and_limit(data_dir: Path) -> None:
    result = run(data_dir, "list", "--json")
    assert result.exit_code == 0, result.output
    newest, oldest = json.loads(result.stdout)
    assert newest["trace_id"] == NEW
    assert oldest == {
        "trace_id": OLD,
        "root": "drift check",
        "services": ["mlbus-drift", "mlbus-trainer"],
        "span_count": 4,
        "start": "2023-11-14T22:13:20.000000+00:00",
        "duration_ms": 950.0,
    }
    limited = run(data_dir, "list", "--limit", "1", "--json")
    assert [t["trace_id"] for t in json.loads(limited.stdout)] == [NEW]


def test_list_on_an_empty_folder_says_so(tmp_path: Path) -> None:
    result = run(tmp_path, "list")
    assert result.exit_code == 0
    assert "no traces in" in result.stdout
    assert json.loads(run(tmp_path, "list", "--json").stdout) == []


def test_show_renders_the_tree_across_services(data_dir: Path) -> None:
    result = run(data_dir, "show", OLD)
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # long lines wrap at 80 columns
    order = ["drift check", "detected.v1 publish", "detected.v1 process", "fit"]
    positions = [out.index(name) for name in order]
    assert positions == sorted(positions)
    assert "900.0 ms" in out  # the consumer's duration
    assert "event_id=e-42" in out  # attributes
    assert "did not converge" in out  # error status
    assert "ValueError: nan loss" in out  # exception event
    assert "mlbus-trainer" in out


def test_show_accepts_a_unique_prefix_and_prints_json(data_dir: Path) -> None:
    result = run(data_dir, "show", OLD[:8], "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["trace_id"] == OLD
    (root,) = shown["spans"]
    assert root["name"] == "drift check"
    (publish,) = root["children"]
    (process,) = publish["children"]
    assert process["service"] == "mlbus-trainer"
    assert process["parent_span_id"] == publish["span_id"]
    assert [c["name"] for c in process["children"]] == ["fit"]


def test_show_unknown_or_ambiguous_id_fails_clearly(data_dir: Path) -> None:
    unknown = run(data_dir, "show", "deadbeef")
    assert unknown.exit_code == 1
    assert "no trace 'deadbeef'" in unknown.stderr
    assert str(data_dir / "spans") in unknown.stderr.replace("\n", "")

    write(data_dir / "spans" / "x-1.jsonl", rec(TWIN, "f", None, "twin", "mlbus-x", 9_000, 1))
    ambiguous = run(data_dir, "show", NEW[:8])
    assert ambiguous.exit_code == 1
    assert "matches 2 traces" in ambiguous.stderr
    assert run(data_dir, "show", NEW[:9]).exit_code == 0

    short = run(data_dir, "show", "0123")
    assert short.exit_code == 1
    assert "at least 8" in short.stderr


def test_help_explains_the_commands() -> None:
    result = CliRunner().invoke(app, ["trace", "show", "--help"])
    assert result.exit_code == 0
    assert "unique prefix" in result.stdout
