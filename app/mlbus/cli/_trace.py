"""`mlbus trace list|show`: traces from the local span files, as tables and trees.

Every mlbus process without an OTLP endpoint appends its spans to
`$MLBUS_DATA_DIR/spans/<service>-<pid>.jsonl`; these commands read all of
them, so one trace that crossed Kafka and gRPC shows as one tree.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlbus.cli._common import connect, console, fail

if TYPE_CHECKING:
    from rich.text import Text

    from mlbus.config import MlbusSettings
    from mlbus.telemetry.spans import SpanNode, Trace

_MAX_ATTRIBUTES = 8
_MAX_VALUE_CHARS = 80
_FULL_ID_WIDTH = 110  # narrower terminals get 16-character ids (any ≥8-char prefix works)


def register(app: typer.Typer) -> None:
    trace = typer.Typer(
        help=(
            "Inspect traces recorded in the local span files "
            "($MLBUS_DATA_DIR/spans, written when no OTLP endpoint is set)."
        ),
        no_args_is_help=True,
    )
    app.add_typer(trace, name="trace")

    @trace.command("list")
    def list_traces(
        limit: Annotated[
            int, typer.Option("--limit", "-n", min=1, help="Show at most this many traces.")
        ] = 20,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print a JSON array instead of a table.")
        ] = False,
    ) -> None:
        """List recent traces, newest first: id, root span, services, spans, start, duration."""

        settings = connect().settings
        traces = _load(settings)[:limit]
        if as_json:
            typer.echo(json.dumps([_summary(t) for t in traces], indent=2))
            return
        if not traces:
            console.print(_no_traces_hint(settings), highlight=False)
            return
        console.print(_table(traces, full_ids=console.width >= _FULL_ID_WIDTH))

    @trace.command("show")
    def show(
        trace_id: Annotated[
            str,
            typer.Argument(
                help="Trace id (32 hex characters) or a unique prefix of at least 8.",
                show_default=False,
            ),
        ],
        as_json: Annotated[
            bool,
            typer.Option("--json", help="Print the trace as JSON (spans nested under 'children')."),
        ] = False,
    ) -> None:
        """Show one trace as a tree: each span's name, service, duration and key attributes."""
        from mlbus.errors import MlbusError
        from mlbus.telemetry.spans import find_trace

        settings = connect().settings
        traces = _load(settings)
        try:
            found = find_trace(traces, trace_id)
        except MlbusError as exc:
            fail(f"{exc} (span folder {settings.data.spans})")
        if as_json:
            typer.echo(json.dumps(_trace_json(found), indent=2, default=str))
            return
        console.print(_tree(found))


def _load(settings: MlbusSettings) -> list[Trace]:
    from mlbus.telemetry.spans import build_traces, read_spans

    return build_traces(read_spans(settings.data.spans))


def _no_traces_hint(settings: MlbusSettings) -> str:
    hint = f"no traces in {settings.data.spans}"
    if settings.telemetry.otlp_endpoint:
        hint += (
            f" (spans are sent to the OTLP endpoint {settings.telemetry.otlp_endpoint}; "
            "look for them in your tracing backend)"
        )
    return hint


def _local_time(value: datetime) -> str:  # to the millisecond, in the local zone
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ms(value: float) -> str:
    return f"{value:,.1f} ms" if value >= 1 else f"{value:.3f} ms"


def _summary(trace: Trace) -> dict[str, Any]:
    return {
        "trace_id": trace.trace_id,
        "root": trace.root_name,
        "services": list(trace.services),
        "span_count": len(trace.spans),
        "start": trace.start.isoformat(timespec="microseconds"),
        "duration_ms": round(trace.duration_ms, 3),
    }


def _table(traces: list[Trace], *, full_ids: bool) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    table.add_column("TRACE ID", no_wrap=True, style="cyan")
    table.add_column("ROOT SPAN / SERVICES", overflow="fold", ratio=1)
    table.add_column("SPANS", justify="right", no_wrap=True)
    table.add_column("STARTED", no_wrap=True)
    table.add_column("DURATION", justify="right", no_wrap=True)
    for trace in traces:
        services = ", ".join(s.removeprefix("mlbus-") for s in trace.services)
        table.add_row(
            trace.trace_id if full_ids else trace.trace_id[:16] + "…",
            Text.assemble(trace.root_name, "\n", (services, "magenta")),
            str(len(trace.spans)),
            trace.start.astimezone().strftime("%m-%d %H:%M:%S"),
            _ms(trace.duration_ms),
        )
    return table


def _tree(trace: Trace) -> Any:
    from rich.text import Text
    from rich.tree import Tree

    header = Text.assemble(
        ("trace ", "bold"),
        (trace.trace_id, "bold cyan"),
        f"  {_local_time(trace.start)}  {_ms(trace.duration_ms)}  ",
        f"{len(trace.spans)} span{'s' if len(trace.spans) != 1 else ''}  ",
        (", ".join(trace.services), "magenta"),
    )
    tree = Tree(header, guide_style="dim")
    branches: dict[int, Tree] = {}
    for depth, node in trace.walk():
        label = _span_label(node, trace.start_ns)
        parent = tree if depth == 0 else branches[depth - 1]
        branches[depth] = parent.add(label)
    return tree


def _span_label(node: SpanNode, trace_start_ns: int) -> Text:
    from rich.text import Text

    span = node.span
    failed = span.status == "ERROR"
    label = Text.assemble(
        (span.name, "bold red" if failed else "bold"),
        "  ",
        (span.service, "magenta"),
        "  ",
        (_ms(span.duration_ms), "green"),
        (f"  +{(span.start_ns - trace_start_ns) / 1e6:,.1f} ms", "dim"),
        (f"  {span.kind.lower()}", "dim"),
    )
    if failed:
        label.append(f"\nERROR{': ' + span.status_message if span.status_message else ''}", "red")
    items = list(span.attributes.items())
    if items:
        shown = "  ".join(f"{k}={_short(v)}" for k, v in items[:_MAX_ATTRIBUTES])
        more = f"  … +{len(items) - _MAX_ATTRIBUTES} more" if len(items) > _MAX_ATTRIBUTES else ""
        label.append(f"\n{shown}{more}", "dim")
    for event in span.events:
        if event.name == "exception":
            kind = event.attributes.get("exception.type", "exception")
            message = event.attributes.get("exception.message", "")
            label.append(f"\n{kind}: {_short(message)}", "red")
    return label


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _trace_json(trace: Trace) -> dict[str, Any]:
    def node_json(node: SpanNode) -> dict[str, Any]:
        return {**node.span.to_json(), "children": [node_json(c) for c in node.children]}

    return {**_summary(trace), "spans": [node_json(root) for root in trace.roots]}
