"""Plotly figures as plain dicts (data + layout), drawn in the browser by plotly.js.

The page embeds each figure as JSON (Jinja's `tojson`, which escapes `<`, `>`
and `&`), so names and values from the data never reach the page as markup.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from mlbus.profiles import CategoricalProfile, ColumnProfile, NumericProfile
from mlbus.telemetry.spans import Trace

Figure = dict[str, Any]

REFERENCE = "#8c96a8"
LIVE = "#d9534f"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "margin": {"l": 50, "r": 20, "t": 40, "b": 40},
        "height": 260,
        "legend": {"orientation": "h", "y": -0.25},
        **extra,
    }


def rates_figure(history: Iterable[tuple[datetime, Mapping[str, float]]]) -> Figure:
    """Events per second of each topic that had any, over the refreshes kept."""
    points = list(history)
    topics = sorted({t for _, rates in points for t, r in rates.items() if r > 0})
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": topic,
            "x": [at.isoformat() for at, _ in points],
            "y": [round(rates.get(topic, 0.0), 2) for _, rates in points],
            "line": {"color": PALETTE[i % len(PALETTE)]},
        }
        for i, topic in enumerate(topics)
    ]
    return {"data": data, "layout": _layout("events / s per topic", yaxis={"rangemode": "tozero"})}


def histogram_figure(feature: str, profile: ColumnProfile, live: Sequence[Any]) -> Figure:
    """Reference against live shares per bin (numeric) or per category."""
    if isinstance(profile, NumericProfile):
        labels = _bin_labels(profile.edges)
        reference = [float(x) for x in profile.fractions()]
        counts = profile.bin_counts(live) if live else [0] * len(labels)
    else:
        assert isinstance(profile, CategoricalProfile)
        found = profile.counts_for(live)
        labels = list(found)
        total_ref = profile.n or 1
        reference = [profile.frequencies.get(k, 0) / total_ref for k in labels]
        counts = [found[k] for k in labels]
    n_live = int(sum(int(c) for c in counts))
    live_share = [int(c) / n_live if n_live else 0.0 for c in counts]
    data = [
        {
            "type": "bar",
            "name": "reference",
            "x": labels,
            "y": reference,
            "marker": {"color": REFERENCE},
        },
        {
            "type": "bar",
            "name": f"live (n={n_live:,})",
            "x": labels,
            "y": live_share,
            "marker": {"color": LIVE},
        },
    ]
    layout = _layout(
        feature, barmode="group", yaxis={"tickformat": ".0%"}, xaxis={"type": "category"}
    )
    return {"data": data, "layout": layout}


def _bin_labels(edges: Sequence[float]) -> list[str]:
    labels = [f"≤{_short(edges[0])}"] if edges else []
    labels += [f"{_short(a)}–{_short(b)}" for a, b in itertools.pairwise(edges)]
    labels.append(f">{_short(edges[-1])}" if edges else "all")
    return labels


def _short(value: float) -> str:
    return f"{value:.3g}"


def scores_figure(
    title: str,
    series: Mapping[str, Sequence[tuple[datetime, float]]],
    detections: Sequence[datetime] = (),
) -> Figure:
    """Each test's distance to its threshold over time (≥ 1: over it; log scale), with the
    line at 1 and detections as markers."""
    data: list[dict[str, Any]] = []
    xs: list[str] = []
    for i, (test, points) in enumerate(sorted(series.items())):
        x = [at.isoformat() for at, _ in points]
        xs += x
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": test,
                "x": x,
                "y": [max(r, 1e-3) for _, r in points],
                "marker": {"size": 4},
                "line": {"color": PALETTE[i % len(PALETTE)]},
            }
        )
    if xs:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "threshold",
                "x": [min(xs), max(xs)],
                "y": [1, 1],
                "line": {"dash": "dash", "color": LIVE},
            }
        )
    if detections:
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "detection",
                "x": [d.isoformat() for d in detections],
                "y": [1] * len(detections),
                "marker": {"symbol": "x", "size": 11, "color": "#000"},
            }
        )
    layout = _layout(title, yaxis={"type": "log", "title": {"text": "÷ threshold"}})
    return {"data": data, "layout": layout}


def metrics_figure(
    a: tuple[str, Mapping[str, float]], b: tuple[str, Mapping[str, float]]
) -> Figure:
    """Two versions' metrics side by side."""
    names = sorted(set(a[1]) | set(b[1]))
    data = [
        {
            "type": "bar",
            "name": label,
            "x": names,
            "y": [metrics.get(n) for n in names],
            "marker": {"color": colour},
        }
        for (label, metrics), colour in ((a, PALETTE[0]), (b, PALETTE[1]))
    ]
    return {"data": data, "layout": _layout("metrics", barmode="group")}


def waterfall_figure(trace: Trace) -> Figure:
    """Each span as a bar from its start to its end, in tree order, coloured by service."""
    rows = list(trace.walk())
    origin = trace.start_ns
    services = sorted({node.span.service for _, node in rows})
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(services)}
    labels = [
        f"{i:03d} {'· ' * depth}{node.span.service}: {node.span.name}"
        for i, (depth, node) in enumerate(rows)
    ]
    data = []
    for service in services:
        members = [
            (label, node)
            for label, (_, node) in zip(labels, rows, strict=True)
            if node.span.service == service
        ]
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": service,
                "y": [label for label, _ in members],
                "base": [(node.span.start_ns - origin) / 1e6 for _, node in members],
                "x": [max(node.span.duration_ms, 0.05) for _, node in members],
                "marker": {"color": colour[service]},
                "hovertemplate": "%{y}<br>start %{base:.1f} ms, %{x:.2f} ms<extra></extra>",
            }
        )
    layout = _layout(
        f"trace {trace.trace_id[:16]}… — {trace.duration_ms:,.1f} ms",
        barmode="overlay",
        height=max(260, 22 * len(rows) + 80),
        xaxis={"title": {"text": "ms since the trace began"}},
        yaxis={
            "autorange": "reversed",
            "categoryorder": "array",
            "categoryarray": labels,
            "automargin": True,
        },
    )
    return {"data": data, "layout": layout}


def outcomes_figure(
    metric: str, series: Sequence[tuple[str, Sequence[tuple[str, Mapping[str, Any]]]]]
) -> Figure:
    """One metric per (version, alias) and window: the value with its 95% interval.

    `series`: (label, [(window label, estimate)]), an estimate being the outcomes
    service's `{"value", "ci_low", "ci_high", "n"}` (None where it has no value yet).
    """
    data = []
    for i, (label, points) in enumerate(series):
        shown = [(w, e) for w, e in points if e.get("value") is not None]
        values = [float(e["value"]) for _, e in shown]
        high = [_above(e) for _, e in shown]
        low = [_below(e) for _, e in shown]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": label,
                "x": [w for w, _ in shown],
                "y": values,
                "error_y": {"type": "data", "symmetric": False, "array": high, "arrayminus": low},
                "customdata": [e.get("n") for _, e in shown],
                "hovertemplate": f"{label}: %{{y:.4f}} (n=%{{customdata:,}})<extra></extra>",
                "marker": {"size": 9, "color": PALETTE[i % len(PALETTE)]},
            }
        )
    layout = _layout(
        f"{metric.replace('_', ' ')} (95% interval) per window",
        scattermode="group",
        xaxis={"type": "category"},
    )
    return {"data": data, "layout": layout}


def _above(estimate: Mapping[str, Any]) -> float:
    high = estimate.get("ci_high")
    return 0.0 if high is None else max(0.0, float(high) - float(estimate["value"]))


def _below(estimate: Mapping[str, Any]) -> float:
    low = estimate.get("ci_low")
    return 0.0 if low is None else max(0.0, float(estimate["value"]) - float(low))


def difference_figure(metric: str, difference: float, ci_low: float, ci_high: float) -> Figure:
    """An experiment's difference (challenger − champion, positive = better) with its
    always-valid interval, against no difference at 0."""
    data = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "difference",
            "x": [difference],
            "y": [metric.replace("_", " ")],
            "error_x": {
                "type": "data",
                "symmetric": False,
                "array": [max(0.0, ci_high - difference)],
                "arrayminus": [max(0.0, difference - ci_low)],
            },
            "marker": {"size": 11, "color": PALETTE[0]},
        }
    ]
    span = max(abs(ci_low), abs(ci_high), abs(difference), 1e-6) * 1.15
    layout = _layout(
        "difference, always-valid interval (positive: the challenger is better)",
        height=170,
        showlegend=False,
        xaxis={"range": [-span, span], "zeroline": True, "zerolinewidth": 2},
        yaxis={"type": "category"},
        margin={"l": 70, "r": 20, "t": 40, "b": 30},
    )
    return {"data": data, "layout": layout}
