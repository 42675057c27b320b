"""The console's span cache: files read where they grew, a cap on spans kept, whole traces.

Real span files in tmp_path, appended to as a live process would (torn lines
included); the work per read is counted in bytes, never timed.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from mlbus.console._app import _templates
from mlbus.console._pages_loop import traces_context
from mlbus.console._sources import HEALTH_CHECK, SpanCache
from mlbus.telemetry.spans import SpanRecord, build_traces, read_spans

BASE_NS = 1_700_000_000_000_000_000


def span(trace: int, n: int, *, parent: int | None = None, at_ms: int | None = None) -> SpanRecord:
    """Span `n` of trace `trace` (ids made from the numbers), starting at `at_ms`."""
    start = BASE_NS + (trace * 1000 + n if at_ms is None else at_ms) * 1_000_000
    return SpanRecord(
        trace_id=f"{trace:032x}",
        span_id=f"{trace:08x}{n:08x}",
        parent_span_id=None if parent is None else f"{trace:08x}{parent:08x}",
        name=f"step-{n}",
        kind="INTERNAL",
        service="mlbus-drift" if n % 2 else "mlbus-trainer",
        start_ns=start,
        end_ns=start + 1_000_000,
    )


def line(record: SpanRecord) -> bytes:
    return (json.dumps(record.to_json(), separators=(",", ":")) + "\n").encode()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


def ids(cache: SpanCache) -> list[tuple[str, str]]:
    """Every kept (trace id, span id), with repeats: a span doubled would show twice."""
    return sorted((s.trace_id, s.span_id) for t in cache.latest() for s in t.spans)


def test_appended_lines_are_read_once_each_even_torn_across_two_writes(tmp_path: Path) -> None:
    drift, trainer = tmp_path / "drift-1.jsonl", tmp_path / "trainer-2.jsonl"
    written: list[SpanRecord] = []
    cache = SpanCache(tmp_path)
    for round_ in range(6):
        batch = [span(round_, n, parent=None if n == 0 else 0) for n in range(3)]
        written += batch
        append(drift, line(batch[0]) + line(batch[1]))
        torn = line(batch[2])
        append(trainer, torn[:25])  # the writer is mid-line when the cache reads
        cache.traces()
        assert (f"{round_:032x}", batch[2].span_id) not in ids(cache)
        append(trainer, torn[25:])
        cache.traces()
    assert ids(cache) == sorted((s.trace_id, s.span_id) for s in written)
    assert cache.bytes_read == drift.stat().st_size + trainer.stat().st_size + 6 * 25
    assert [len(t.spans) for t in cache.latest()] == [3] * 6
    fresh = build_traces(read_spans(tmp_path))  # as a fresh read of the files sees them
    assert [(t.trace_id, t.spans) for t in cache.latest()] == [(t.trace_id, t.spans) for t in fresh]


def test_a_read_after_appending_one_line_reads_that_line_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "inference-1.jsonl"
    path.write_bytes(b"".join(line(span(t, n)) for t in range(1000) for n in range(2)))
    cache = SpanCache(tmp_path)
    before = {t.trace_id: t for t in cache.traces()}
    assert cache.bytes_read == path.stat().st_size
    read_before = cache.bytes_read

    added = line(span(7, 5, parent=0))
    append(path, added)
    after = cache.traces()

    assert cache.bytes_read - read_before == len(added)  # the work is the line, not the file
    changed = [t for t in after if before[t.trace_id] is not t]
    assert [t.trace_id for t in changed] == [f"{7:032x}"]  # only its trace assembled again
    assert len(changed[0].spans) == 3
    cache.traces()
    assert cache.bytes_read - read_before == len(added)  # nothing new: nothing read


def test_a_truncated_or_replaced_file_is_read_again_and_its_old_spans_dropped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "drift-1.jsonl"
    path.write_bytes(line(span(1, 0)) + line(span(2, 0)))
    cache = SpanCache(tmp_path)
    assert len(cache.traces()) == 2

    path.write_bytes(line(span(3, 0)))  # truncated in place, shorter than what was read
    assert [t.trace_id for t in cache.traces()] == [f"{3:032x}"]

    # Rewritten in place (same inode) and already longer than the offset read before.
    path.write_bytes(b"".join(line(span(4, n)) for n in range(3)))
    assert [t.trace_id for t in cache.traces()] == [f"{4:032x}"]

    other = tmp_path / "drift-1.tmp"
    other.write_bytes(b"".join(line(span(5, n)) for n in range(4)))
    other.replace(path)  # another file under the same name
    (trace,) = cache.traces()
    assert (trace.trace_id, len(trace.spans)) == (f"{5:032x}", 4)


def test_a_file_that_went_away_takes_its_spans_with_it(tmp_path: Path) -> None:
    (tmp_path / "a-1.jsonl").write_bytes(line(span(1, 0)))
    (tmp_path / "b-2.jsonl").write_bytes(line(span(2, 0)))
    cache = SpanCache(tmp_path)
    assert len(cache.traces()) == 2
    (tmp_path / "a-1.jsonl").unlink()
    assert [t.trace_id for t in cache.traces()] == [f"{2:032x}"]


def test_the_cap_drops_whole_traces_oldest_first_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "features-1.jsonl"
    # Ten traces of 30 spans (300 spans), the children written before their root as
    # a parent span ends (and is exported) after its children.
    for trace in range(10):
        children = b"".join(line(span(trace, n, parent=0)) for n in range(1, 30))
        append(path, children + line(span(trace, 0)))
    cache = SpanCache(tmp_path, max_spans=100)
    kept = cache.traces()
    assert [t.trace_id for t in kept] == [f"{t:032x}" for t in (9, 8, 7)]  # 90 spans
    assert all(len(t.spans) == 30 and len(t.roots) == 1 for t in kept)
    assert cache.dropped_traces == 7

    # A late span of a dropped trace is dropped too: no trace without its beginning.
    append(path, line(span(0, 99, parent=0)))
    assert [t.trace_id for t in cache.traces()] == [f"{t:032x}" for t in (9, 8, 7)]
    assert cache.dropped_traces == 7

    # A new trace pushes the oldest kept one out, whole.
    append(path, b"".join(line(span(10, n, parent=None if n == 0 else 0)) for n in range(20)))
    assert [len(t.spans) for t in cache.traces()] == [20, 30, 30]
    assert cache.dropped_traces == 8
    assert sum(len(t.spans) for t in cache.latest()) <= 100


def test_the_cap_holds_while_a_large_file_is_first_read_in_steps(tmp_path: Path) -> None:
    import mlbus.console._sources as sources_module

    path = tmp_path / "outcomes-1.jsonl"
    path.write_bytes(b"".join(line(span(t, n)) for t in range(300) for n in range(2)))
    high_water: list[int] = []

    class Watched(SpanCache):
        def _evict(self) -> None:
            super()._evict()
            high_water.append(self._kept_spans)

    step = len(line(span(1, 1))) * 50
    original, sources_module.READ_CHUNK_BYTES = sources_module.READ_CHUNK_BYTES, step
    try:
        cache = Watched(tmp_path, max_spans=100)
        kept = cache.traces()
    finally:
        sources_module.READ_CHUNK_BYTES = original
    assert len(high_water) > 10  # read in steps, the cap applied after each
    assert max(high_water) <= 100
    assert [t.trace_id for t in kept] == [f"{t:032x}" for t in range(299, 249, -1)]
    assert cache.dropped_traces == 250


def test_health_checks_are_counted_not_kept_and_not_capped(tmp_path: Path) -> None:
    path = tmp_path / "registry-1.jsonl"
    check = SpanRecord(
        f"{999:032x}", "9" * 16, None, HEALTH_CHECK, "SERVER", "mlbus-registry", 1, 2
    )
    checks = [
        SpanRecord(f"{900 + i:032x}", f"{i:016x}", None, HEALTH_CHECK, "SERVER", "r", 1, 2)
        for i in range(50)
    ]
    path.write_bytes(line(check) + b"".join(line(c) for c in checks) + line(span(1, 0)))
    cache = SpanCache(tmp_path, max_spans=100)
    assert [t.trace_id for t in cache.traces()] == [f"{1:032x}"]
    assert cache.health_checks == 51
    assert cache.dropped_traces == 0
    append(path, line(check))
    cache.traces()
    assert cache.health_checks == 52  # counted as read, as before


def test_traces_page_says_when_older_traces_were_dropped(tmp_path: Path) -> None:
    path = tmp_path / "drift-1.jsonl"
    for trace in range(5):
        append(path, b"".join(line(span(trace, n, parent=None if n == 0 else 0)) for n in range(2)))

    def render(cache: SpanCache) -> str:
        context = traces_context(cache.view())
        full = {"request": None, "nav": (), "active": "traces", **context}
        full["snap"] = SimpleNamespace(errors={}, at=None)
        return _templates().env.get_template("traces.html").render(full)

    whole = render(SpanCache(tmp_path))
    assert "(5 in the span files)" in whole
    assert "dropped" not in whole

    capped = SpanCache(tmp_path, max_spans=4)
    page = render(capped)
    assert "(the newest 2; 3 older ones dropped)" in page
    assert 'id="traces-dropped"' in page
    assert "at most 4 spans" in page
    assert "<title>Traces · mlbus</title>" in page
