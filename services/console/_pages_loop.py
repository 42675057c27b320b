"""The pages of the running loop: overview, drift (and a detection), features, traces."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlbus.errors import InvalidInput, MlbusError, NotFound
from mlbus.events import DriftDetected
from mlbus.profiles import ReferenceProfile
from mlbus.telemetry.spans import Trace, find_trace

from ._charts import histogram_figure, rates_figure, scores_figure, waterfall_figure
from ._sources import SpanView
from ._web import failure, fragment, not_found, page, snapshot, sources

TRACES_LISTED = 60
ENTITY_MAX = 200


def routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/drift", drift),
        Route("/drift/detections/{event_id}", detection),
        Route("/features", features),
        Route("/traces", traces),
        Route("/traces/{trace_id}", trace),
    ]


# ── overview ─────────────────────────────────────────────────────────────────


def _overview_context(request: Request) -> dict[str, Any]:
    snap = snapshot(request)
    detections = {d["event_id"]: d for d in snap.drift.get("detections", []) if "event_id" in d}
    return {
        "rates_fig": rates_figure(snap.rate_history),
        "recent_detections": list(reversed(snap.detections))[:8],
        "decisions": detections,
        "trainings": snap.trainings()[:8],
    }


async def overview(request: Request) -> Response:
    return page(request, "overview.html", _overview_context(request), active="overview")


async def overview_live(request: Request) -> str:
    return fragment(request, "_overview_live.html", _overview_context(request))


# ── drift ────────────────────────────────────────────────────────────────────


async def _profiles(request: Request, keys: list[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """Reference profiles of the monitored versions (cached: a version never changes)."""
    cache: dict[tuple[str, int], ReferenceProfile | None] = request.app.state.__dict__.setdefault(
        "profiles", {}
    )
    missing = [k for k in keys if k not in cache]
    found = await asyncio.gather(
        *(sources(request).registry.get_version(m, v) for m, v in missing), return_exceptions=True
    )
    for key, info in zip(missing, found, strict=True):
        if not isinstance(info, BaseException):
            cache[key] = info.reference_profile
    return {k: cache.get(k) for k in keys}


CACHED_CONTEXTS = 32


async def _drift_context(request: Request) -> dict[str, Any]:
    """The drift page's context, built once per refresh of the snapshot (and `?version=`):
    the histograms bin a few thousand predictions per feature."""
    cache: dict[str, tuple[int, dict[str, Any]]] = request.app.state.__dict__.setdefault(
        "drift_contexts", {}
    )
    key = request.query_params.get("version", "")
    version = snapshot(request).version
    hit = cache.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    context = await _build_drift_context(request)
    if len(cache) >= CACHED_CONTEXTS:
        cache.clear()
    cache[key] = (version, context)
    return context


async def _build_drift_context(request: Request) -> dict[str, Any]:
    """Per model, the chosen monitored version (`?version=`, else the newest) in full: tests,
    reference against live histograms, scores over time; the other versions as links."""
    snap = snapshot(request)
    entries = snap.drift.get("models", [])
    wanted = request.query_params.get("version", "")
    by_model: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_model.setdefault(entry["model"], []).append(entry)
    chosen: list[dict[str, Any]] = []
    for found in by_model.values():
        found.sort(key=lambda e: int(e["version"]))
        pick = next((e for e in found if str(e["version"]) == wanted), found[-1])
        chosen.append(pick)
    profiles = await _profiles(request, [(e["model"], int(e["version"])) for e in chosen])
    models = []
    for entry in chosen:
        model, version = entry["model"], int(entry["version"])
        profile = profiles.get((model, version))
        live = [p for p in snap.predictions if p.model == model and p.version == version]
        histograms = []
        if profile is not None:
            for feature, column in profile.features.items():
                values = [p.features.get(feature) for p in live]
                histograms.append(histogram_figure(feature, column, values))
        detected = [
            d.occurred_at for d in snap.detections if (d.model, d.version) == (model, version)
        ]
        per_feature: dict[str, dict[str, list[tuple[Any, float]]]] = {}
        for row in entry["summary"]:
            series: Any = snap.scores.get((model, version, row["feature"], row["test"]), ())
            per_feature.setdefault(row["feature"], {})[row["test"]] = [
                (p.at, p.ratio) for p in series
            ]
        scores = [scores_figure(f, tests, detected) for f, tests in sorted(per_feature.items())]
        models.append(
            {
                "model": model,
                "version": version,
                "versions": [int(e["version"]) for e in by_model[model]],
                "summary": entry["summary"],
                "monitors": entry["monitors"],
                "histograms": histograms,
                "scores": scores,
                "live_n": len(live),
                "has_profile": profile is not None,
            }
        )
    decisions = {d["event_id"]: d for d in snap.drift.get("detections", []) if "event_id" in d}
    return {
        "models": models,
        "detections": list(reversed(snap.detections)),
        "decisions": decisions,
        "armed": snap.drift.get("armed", []),
    }


async def drift(request: Request) -> Response:
    return page(request, "drift.html", await _drift_context(request), active="drift")


async def drift_live(request: Request) -> str:
    return fragment(request, "_drift_live.html", await _drift_context(request))


async def detection(request: Request) -> Response:
    snap = snapshot(request)
    event_id = request.path_params["event_id"]
    found: DriftDetected | None = next((d for d in snap.detections if d.event_id == event_id), None)
    if found is None:
        return not_found(
            request, f"no detection {event_id!r} among the recent ones", active="drift"
        )
    decision = next(
        (d for d in snap.drift.get("detections", []) if d.get("event_id") == event_id), None
    )
    caused = [
        {"request": r, "outcome": snap.outcome_of(r.event_id)} for r in snap.caused_by(event_id)
    ]
    context = {"d": found, "decision": decision, "caused": caused}
    return page(request, "detection.html", context, active="drift")


# ── features ─────────────────────────────────────────────────────────────────


async def features(request: Request) -> Response:
    src = sources(request)
    entity = request.query_params.get("entity", "").strip()[:ENTITY_MAX]
    try:
        consistency, examples = await asyncio.gather(src.consistency(), src.sample_entities())
        online = await src.entity(entity) if entity else None
    except MlbusError as exc:
        return failure(request, exc, active="features")
    context = {
        "entity": entity,
        "online": online,
        "consistency": consistency,
        "examples": examples,
        "has_spec": src.spec is not None,
    }
    return page(request, "features.html", context, active="features")


# ── traces ───────────────────────────────────────────────────────────────────


def _all_traces(request: Request) -> list[Trace]:
    return sources(request).spans.latest()


def traces_context(view: SpanView) -> dict[str, Any]:
    """The traces page's figures; with `dropped`, the traces kept are only the newest."""
    kinds = view.kinds
    return {
        "loops": kinds["loop"][:TRACES_LISTED],
        "others": kinds["data"][:TRACES_LISTED],
        "hidden": len(kinds["probe"]) + view.health_checks,
        "total": len(view.traces) + view.health_checks,
        "kept": len(view.traces),
        "dropped": view.dropped_traces,
        "max_spans": view.max_spans,
    }


async def traces(request: Request) -> Response:
    view = await asyncio.to_thread(sources(request).spans.view)
    return page(request, "traces.html", traces_context(view), active="traces")


async def trace(request: Request) -> Response:
    found = await asyncio.to_thread(_all_traces, request)
    try:
        chosen = find_trace(found, request.path_params["trace_id"])
    except (NotFound, InvalidInput) as exc:
        return not_found(request, str(exc), active="traces")
    rows = [(depth, node.span) for depth, node in chosen.walk()]
    context = {"t": chosen, "fig": waterfall_figure(chosen), "rows": rows}
    return page(request, "trace.html", context, active="traces")
