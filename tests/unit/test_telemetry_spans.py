"""Reading span files back: torn lines, cross-file parents, orphans, id prefixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlbus.config import DataDir
from mlbus.errors import InvalidInput, NotFound
from mlbus.telemetry.spans import (
    SpanFileTail,
    SpanRecord,
    build_traces,
    find_trace,
    read_span_file,
    read_spans,
)

T1 = "1" * 8 + "a" * 24
T2 = "2" * 8 + "b" * 24
T3 = "1" * 8 + "c" * 24  # shares T1's 8-char prefix


def span(
    trace_id: str, span_id: str, parent: str | None, name: str, start_ms: int, **kw: object
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id * 16 if len(span_id) == 1 else span_id,
        parent_span_id=(parent * 16 if parent and len(parent) == 1 else parent),
        name=name,
        kind=str(kw.get("kind", "INTERNAL")),
        service=str(kw.get("service", "mlbus-test")),
        start_ns=1_700_000_000_000_000_000 + start_ms * 1_000_000,
        end_ns=1_700_000_000_000_000_000 + (start_ms + int(str(kw.get("ms", 10)))) * 1_000_000,
    )


def write(path: Path, *records: SpanRecord, tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r.to_json()) + "\n" for r in records)
    path.write_text(lines + tail)


def test_record_json_round_trip() -> None:
    record = SpanRecord(
        trace_id=T1,
        span_id="a" * 16,
        parent_span_id="b" * 16,
        name="predict",
        kind="SERVER",
        service="mlbus-inference",
        start_ns=5,
        end_ns=2_000_005,
        status="ERROR",
        status_message="boom",
        attributes={"rpc.method": "ModelInfer", "n": 3},
        links=(("c" * 32, "d" * 16),),
        scope="mlbus",
    )
    line = json.loads(json.dumps(record.to_json()))
    assert line["duration_ms"] == 2.0
    assert SpanRecord.from_json(line) == record


def test_torn_last_line_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    root = span(T1, "a", None, "root", 0)
    write(
        spans_dir / "svc-1.jsonl",
        root,
        tail='not json\n{"trace_id": "xyz"}\n[1, 2]\n\n{"trace_id": "' + T1 + '", "span_id": "bb',
    )
    (spans_dir / "notes.txt").write_text("ignored: not a .jsonl file")
    assert read_spans(spans_dir) == [root]
    assert read_spans(DataDir(tmp_path)) == [root]


def test_missing_folder_is_empty(tmp_path: Path) -> None:
    assert read_spans(tmp_path / "nowhere") == []
    assert build_traces([]) == []


def test_parent_in_another_file_attaches_and_missing_parent_becomes_root(tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    write(
        spans_dir / "ingestion-10.jsonl",
        span(T1, "a", None, "publish", 0, service="mlbus-ingestion"),
    )
    write(
        spans_dir / "features-20.jsonl",
        span(T1, "b", "a", "process", 5, service="mlbus-features"),
        span(T1, "c", "b", "write online", 6, service="mlbus-features"),
        span(T2, "d", "f", "orphan", 50, service="mlbus-features"),  # parent never written
    )
    newest, oldest = build_traces(read_spans(spans_dir))
    assert newest.trace_id == T2
    assert [r.span.name for r in newest.roots] == ["orphan"]

    assert oldest.trace_id == T1
    assert [(depth, node.span.name) for depth, node in oldest.walk()] == [
        (0, "publish"),
        (1, "process"),
        (2, "write online"),
    ]
    assert oldest.services == ("mlbus-ingestion", "mlbus-features")
    assert oldest.root_name == "publish"
    assert oldest.duration_ms == pytest.approx(16.0)


def test_parent_cycle_still_shows_every_span() -> None:
    (trace,) = build_traces([span(T1, "a", "b", "x", 0), span(T1, "b", "a", "y", 1)])
    assert sorted(node.span.name for _, node in trace.walk()) == ["x", "y"]


def test_duplicate_lines_are_read_once(tmp_path: Path) -> None:
    record = span(T1, "a", None, "root", 0)
    write(tmp_path / "a-1.jsonl", record, record)
    write(tmp_path / "a-2.jsonl", record)
    assert read_spans(tmp_path) == [record]


def test_find_trace_by_id_or_unique_prefix() -> None:
    traces = build_traces(
        [span(T1, "a", None, "one", 0), span(T2, "b", None, "two", 1), span(T3, "c", None, "3", 2)]
    )
    assert find_trace(traces, T1).trace_id == T1
    assert find_trace(traces, T2.upper()).trace_id == T2
    assert find_trace(traces, T2[:8]).trace_id == T2
    assert find_trace(traces, T3[:9]).trace_id == T3
    with pytest.raises(InvalidInput, match="matches 2 traces"):
        find_trace(traces, T1[:8])
    with pytest.raises(InvalidInput, match="at least 8"):
        find_trace(traces, T2[:7])
    with pytest.raises(InvalidInput, match="not a trace id"):
        find_trace(traces, "zzzzzzzzzz")
    with pytest.raises(NotFound, match="no trace"):
        find_trace(traces, "f" * 32)


def test_tail_reads_only_what_was_appended_and_waits_for_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "svc-1.jsonl"
    first, second = span(T1, "a", None, "root", 0), span(T1, "b", "a", "child", 1)
    write(path, first)
    tail = SpanFileTail(path)
    assert tail.read() == [first]
    assert tail.read() == []  # nothing new
    torn = json.dumps(second.to_json()) + "\n"
    with path.open("a") as out:
        out.write(torn[:30])
    assert tail.read() == []  # the writer is mid-line: the line waits
    assert tail.offset == len(json.dumps(first.to_json())) + 1
    with path.open("a") as out:
        out.write(torn[30:])
    assert tail.read() == [second]
    assert not tail.restarted
    assert tail.bytes_read == path.stat().st_size + 30


def test_tail_starts_over_on_a_truncated_or_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "svc-1.jsonl"
    a, b, c = (span(t, "a", None, "root", 0) for t in (T1, T2, T3))
    write(path, a, b)
    tail = SpanFileTail(path)
    assert tail.read() == [a, b]
    write(path, c)  # shorter than what was read
    assert tail.read() == [c]
    assert tail.restarted
    write(path, b, a, c)  # rewritten in place, longer than before: its first bytes differ
    assert tail.read() == [b, a, c]
    assert tail.restarted
    assert tail.read() == []
    assert not tail.restarted


def test_tail_reads_in_steps_of_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "svc-1.jsonl"
    records = [span(T1, f"{n:016x}", None, f"s{n}", n) for n in range(10)]
    write(path, *records)
    tail, got, steps = SpanFileTail(path), [], 0
    while True:
        got += tail.read(max_bytes=100)  # shorter than one line: a whole line per step
        steps += 1
        if tail.at_end:
            break
    assert got == records
    assert steps == len(records)


def test_read_span_file_leaves_out_a_last_line_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "svc-1.jsonl"
    root, unfinished = span(T1, "a", None, "root", 0), span(T2, "b", None, "other", 1)
    write(path, root, tail=json.dumps(unfinished.to_json()))
    assert read_span_file(path) == [root]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12), count=st.integers(1, 6)
)
def test_tail_reads_every_span_once_however_the_writes_fall(
    tmp_path: Path, cuts: list[int], count: int
) -> None:
    path = tmp_path / "svc-1.jsonl"  # emptied for each example, read by a new tail
    records = [span(T1, f"{n:016x}", None, f"s{n}", n) for n in range(count)]
    data = "".join(json.dumps(r.to_json()) + "\n" for r in records).encode()
    points = sorted({min(c, len(data)) for c in cuts} | {len(data)})
    path.write_bytes(b"")
    tail, got, done = SpanFileTail(path), [], 0
    for point in points:
        with path.open("ab") as out:
            out.write(data[done:point])
        done = point
        got += tail.read()
    assert got == records
