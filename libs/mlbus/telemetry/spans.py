"""Read the local span files back and assemble them into traces.

Without an OTLP endpoint every process appends its finished spans to
`<data_dir>/spans/<service>-<pid>.jsonl`, one JSON object per line (see
`SpanRecord.to_json` for the fields). This module reads all of those files
at once, so a consumer span whose parent lives in the producer's file still
lands under it. It is pure standard library: `mlbus trace` stays fast.

A file being written by a live process may end in a half-written line; any
line that is not a complete span is skipped, never fatal. A reader that
follows the files as they grow (the console) keeps a `SpanFileTail` per file
and parses only the lines appended since its last read; `read_span_file` is
the same reader started at byte 0.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from mlbus.config import DataDir
from mlbus.errors import InvalidInput, NotFound

SPAN_FILE_SUFFIX = ".jsonl"
MIN_TRACE_ID_PREFIX = 8
HEAD_BYTES = 64
"""A file's first bytes, kept to tell a rewritten file from the one read before:
the first line starts with its span's trace id, which no other file repeats."""


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    timestamp_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span as written to a span file. Ids are lower-case hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str = "UNSET"
    status_message: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    """(trace_id, span_id) of linked spans, e.g. the messages of a consumed batch."""
    scope: str | None = None

    @property
    def duration_ms(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e6

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.start_ns / 1e9, UTC)

    def to_json(self) -> dict[str, Any]:
        """The span-file line for this span (before `json.dumps`)."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "service": self.service,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "start": self.start.isoformat(timespec="microseconds"),
            "duration_ms": round(self.duration_ms, 3),
            "status": {"code": self.status, "message": self.status_message},
            "attributes": dict(self.attributes),
            "events": [
                {"name": e.name, "timestamp_ns": e.timestamp_ns, "attributes": dict(e.attributes)}
                for e in self.events
            ],
            "links": [{"trace_id": t, "span_id": s} for t, s in self.links],
            "scope": self.scope,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SpanRecord:
        """Parse one span-file object; raises `ValueError` if it is not a span."""
        try:
            status = data.get("status") or {}
            return cls(
                trace_id=_hex_id(data["trace_id"], 32),
                span_id=_hex_id(data["span_id"], 16),
                parent_span_id=(
                    _hex_id(data["parent_span_id"], 16) if data.get("parent_span_id") else None
                ),
                name=_shared(data["name"]),
                kind=_shared(data.get("kind", "INTERNAL")),
                service=_shared(data.get("service", "unknown")),
                start_ns=int(data["start_ns"]),
                end_ns=int(data["end_ns"]),
                status=_shared(status.get("code", "UNSET")),
                status_message=status.get("message"),
                attributes={_shared(k): v for k, v in (data.get("attributes") or {}).items()},
                events=tuple(
                    SpanEvent(
                        name=str(e["name"]),
                        timestamp_ns=int(e["timestamp_ns"]),
                        attributes=dict(e.get("attributes") or {}),
                    )
                    for e in data.get("events") or ()
                ),
                links=tuple(
                    (_hex_id(link["trace_id"], 32), _hex_id(link["span_id"], 16))
                    for link in data.get("links") or ()
                ),
                scope=_shared(data["scope"]) if data.get("scope") is not None else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a span record: {exc!r}") from None


def _shared(value: object) -> str:
    """One string object for a text every span repeats (names, services, attribute keys):
    a reader that keeps many spans (the console) holds each once, not once per span."""
    return sys.intern(str(value))


def _hex_id(value: object, length: int) -> str:
    text = str(value).lower()
    if len(text) != length or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"bad id {value!r}")
    return text


@dataclass(slots=True, eq=False)
class SpanNode:
    span: SpanRecord
    children: list[SpanNode] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Trace:
    """All spans of one trace id, as a forest (normally a single root)."""

    trace_id: str
    spans: tuple[SpanRecord, ...]
    roots: tuple[SpanNode, ...]

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def duration_ms(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e6

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.start_ns / 1e9, UTC)

    @property
    def root_name(self) -> str:
        return self.roots[0].span.name

    @property
    def services(self) -> tuple[str, ...]:
        """Services in the order they joined the trace."""
        ordered = sorted(self.spans, key=lambda s: s.start_ns)
        return tuple(dict.fromkeys(s.service for s in ordered))

    def walk(self) -> Iterable[tuple[int, SpanNode]]:
        """(depth, node) in display order: depth first, children by start time."""
        stack = [(0, root) for root in reversed(self.roots)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, child) for child in reversed(node.children))


def span_files(spans_dir: Path | DataDir) -> list[Path]:
    folder = spans_dir.spans if isinstance(spans_dir, DataDir) else spans_dir
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == SPAN_FILE_SUFFIX and p.is_file())


class SpanFileTail:
    """One span file read as it grows: each `read` parses only the complete lines
    appended since the one before.

    `offset` is the byte just past the last complete line read (a torn last line,
    a writer mid-line, waits for the next read). The file's identity (device,
    inode and first bytes) is remembered too: when the path now names another
    file, or one shorter than `offset`, `read` starts again from byte 0 and sets
    `restarted`, so whatever was read from it before should be forgotten.
    `bytes_read` counts every byte read from the file, so the work is observable.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.bytes_read = 0
        self.restarted = False
        self.at_end = True
        """False when the last `read` stopped at `max_bytes` with more already written."""
        self._identity: tuple[int, int] | None = None
        self._head = b""
        self._seen_size = 0

    def read(self, max_bytes: int | None = None) -> list[SpanRecord]:
        """The complete spans after `offset`, from about `max_bytes` of the file at most
        (always at least one whole line; `None`: to the end as it is now)."""
        self.restarted = False
        self.at_end = True
        try:
            stat = self.path.stat()
            if self._unchanged(stat):
                return []
            with self.path.open("rb") as handle:
                return self._read_from(handle, os.fstat(handle.fileno()), max_bytes)
        except OSError:  # removed or unreadable between listing and reading
            return []

    def _unchanged(self, stat: os.stat_result) -> bool:
        return (stat.st_dev, stat.st_ino) == self._identity and stat.st_size == self._seen_size

    def _read_from(
        self, handle: BinaryIO, stat: os.stat_result, max_bytes: int | None
    ) -> list[SpanRecord]:
        identity = (stat.st_dev, stat.st_ino)
        if self.offset and (
            identity != self._identity
            or stat.st_size < self.offset
            or os.pread(handle.fileno(), len(self._head), 0) != self._head
        ):
            self.offset, self._head, self.restarted = 0, b"", True
        start = self.offset
        handle.seek(start)
        remaining = stat.st_size - start
        window = remaining if max_bytes is None else min(max(max_bytes, 1), remaining)
        data = handle.read(window)
        end = data.rfind(b"\n")
        while end < 0 and len(data) < remaining:  # one line longer than the window
            more = handle.read(min(window, remaining - len(data)))
            if not more:
                break
            data += more
            end = data.rfind(b"\n")
        self.bytes_read += len(data)
        if len(self._head) < HEAD_BYTES:  # the head so far covers the file up to `start`
            self._head = (self._head[:start] + data)[:HEAD_BYTES]
        self.at_end = start + len(data) >= stat.st_size
        self._identity = identity
        self._seen_size = stat.st_size if self.at_end else -1
        if end < 0:  # nothing complete yet: a torn line waits for the next read
            return []
        self.offset = start + end + 1
        return _parse_lines(data[: end + 1])


def _parse_lines(data: bytes) -> list[SpanRecord]:
    records: list[SpanRecord] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                records.append(SpanRecord.from_json(parsed))
        except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
            continue
    return records


def read_span_file(path: Path) -> list[SpanRecord]:
    """Every complete span in one file; torn or foreign lines are skipped, and so is a
    last line without its newline (still being written)."""
    return SpanFileTail(path).read()


def read_spans(spans_dir: Path | DataDir) -> list[SpanRecord]:
    """Every span in every `*.jsonl` file of the span folder (a `DataDir` or the folder itself).

    A missing folder is simply empty. A span written twice is returned once.
    """
    unique: dict[tuple[str, str], SpanRecord] = {}
    for path in span_files(spans_dir):
        for record in read_span_file(path):
            unique.setdefault((record.trace_id, record.span_id), record)
    return list(unique.values())


def build_traces(spans: Iterable[SpanRecord]) -> list[Trace]:
    """Group spans by trace id and link each to its parent; newest trace first.

    A span whose parent is not among the spans read (not flushed yet, sampled
    out, or in a process that wrote elsewhere) becomes a root of its trace.
    """
    by_trace: dict[str, list[SpanRecord]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    traces = [assemble_trace(trace_id, members) for trace_id, members in by_trace.items()]
    traces.sort(key=lambda t: t.start_ns, reverse=True)
    return traces


def assemble_trace(trace_id: str, members: Iterable[SpanRecord]) -> Trace:
    """One trace from its spans (all of `trace_id`, each once), linked to their parents."""
    ordered = sorted(members, key=lambda s: (s.start_ns, s.span_id))
    nodes = {s.span_id: SpanNode(s) for s in ordered}
    roots: list[SpanNode] = []
    for span in ordered:
        parent = nodes.get(span.parent_span_id) if span.parent_span_id else None
        if parent is None or span.parent_span_id == span.span_id:
            roots.append(nodes[span.span_id])
        else:
            parent.children.append(nodes[span.span_id])
    # Corrupt parent links can form a cycle that no root reaches: promote
    # the earliest unreached span of each cycle so every span is shown.
    reached = {id(node) for root in roots for node in _descendants(root)}
    for span in ordered:
        node = nodes[span.span_id]
        if id(node) not in reached and span.parent_span_id:
            parent = nodes[span.parent_span_id]
            parent.children = [child for child in parent.children if child is not node]
            roots.append(node)
            reached.update(id(n) for n in _descendants(node))
    roots.sort(key=lambda n: (n.span.start_ns, n.span.span_id))
    return Trace(trace_id=trace_id, spans=tuple(ordered), roots=tuple(roots))


def _descendants(root: SpanNode) -> Iterable[SpanNode]:
    stack, seen = [root], set[int]()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(node.children)


def find_trace(traces: Iterable[Trace], trace_id: str) -> Trace:
    """The trace with this id, or the only one starting with this prefix (≥8 hex chars).

    Raises `NotFound` when none matches and `InvalidInput` when the prefix is
    too short, not hex, or matches several traces.
    """
    wanted = trace_id.strip().lower()
    if len(wanted) < MIN_TRACE_ID_PREFIX or any(c not in "0123456789abcdef" for c in wanted):
        raise InvalidInput(
            f"{trace_id!r} is not a trace id: give the 32 hex characters "
            f"or a unique prefix of at least {MIN_TRACE_ID_PREFIX}"
        )
    matches = [t for t in traces if t.trace_id.startswith(wanted)]
    exact = [t for t in matches if t.trace_id == wanted]
    if exact:
        return exact[0]
    if not matches:
        raise NotFound(f"no trace {trace_id!r} in the span files")
    if len(matches) > 1:
        shown = ", ".join(t.trace_id for t in matches[:5])
        raise InvalidInput(f"prefix {trace_id!r} matches {len(matches)} traces: {shown}")
    return matches[0]
