"""The registry's pages: models, a model's versions and alias history, a version's lineage,
two versions side by side, and the promote / roll back form (token and CSRF checked)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from mlbus.errors import InvalidInput, MlbusError, Unauthenticated

from ._charts import metrics_figure
from ._security import CSRF_REFUSED, checked_form
from ._web import failure, page, snapshot, sources

log = logging.getLogger(__name__)

REASON_MAX = 500


def routes() -> list[Route]:
    return [
        Route("/models", models),
        Route("/models/{model}", model),
        Route("/models/{model}/versions/{version:int}", version),
        Route("/models/{model}/compare", compare),
        Route("/models/{model}/alias", move_alias, methods=["POST"]),
    ]


async def models(request: Request) -> Response:
    try:
        found = await sources(request).models()
    except MlbusError as exc:
        return failure(request, exc, active="models")
    return page(request, "models.html", {"models": found}, active="models")


async def _model_context(request: Request, name: str) -> dict[str, Any]:
    src = sources(request)
    versions, history = await asyncio.gather(src.versions(name), src.alias_history(name))
    snap = snapshot(request)
    trainings = {t.version: t for t in snap.completed if t.model == name}
    return {"name": name, "versions": versions, "history": history, "trainings": trainings}


async def model(request: Request, *, message: str = "", status: int = 200) -> Response:
    name = request.path_params["model"]
    try:
        context = await _model_context(request, name)
    except MlbusError as exc:
        return failure(request, exc, active="models")
    context["message"] = message
    return page(request, "model.html", context, active="models", status=status)


async def version(request: Request) -> Response:
    name, number = request.path_params["model"], int(request.path_params["version"])
    try:
        lineage = await sources(request).lineage(name, number)
    except MlbusError as exc:
        return failure(request, exc, active="models")
    snap = snapshot(request)
    training = next((t for t in snap.completed if t.model == name and t.version == number), None)
    request_event = None
    if training is not None and training.request_event_id:
        request_event = next(
            (r for r in snap.requests if r.event_id == training.request_event_id), None
        )
    context = {
        "v": lineage.version,
        "history": lineage.alias_history,
        "training": training,
        "request_event": request_event,
    }
    return page(request, "version.html", context, active="models")


async def compare(request: Request) -> Response:
    name = request.path_params["model"]
    try:
        a, b = int(request.query_params["a"]), int(request.query_params["b"])
    except (KeyError, ValueError):
        return failure(
            request, InvalidInput("compare needs two versions: ?a=1&b=2"), active="models"
        )
    src = sources(request)
    try:
        left, right = await asyncio.gather(src.lineage(name, a), src.lineage(name, b))
    except MlbusError as exc:
        return failure(request, exc, active="models")
    params = sorted(set(left.version.params) | set(right.version.params))
    metrics = sorted(set(left.version.metrics) | set(right.version.metrics))
    views = sorted(set(left.version.feature_views) | set(right.version.feature_views))
    fig = metrics_figure((f"v{a}", left.version.metrics), (f"v{b}", right.version.metrics))
    context = {
        "name": name,
        "a": left.version,
        "b": right.version,
        "params": params,
        "metrics": metrics,
        "views": views,
        "fig": fig,
    }
    return page(request, "compare.html", context, active="models")


async def move_alias(request: Request) -> Response:
    """Promote a version to an alias, or roll an alias back; needs CSRF and the token."""
    name = request.path_params["model"]
    form = await checked_form(request)
    if form is None:
        return await model(request, message=CSRF_REFUSED, status=403)
    token = str(form.get("token") or "")
    alias = str(form.get("alias") or "champion").strip()
    action = str(form.get("action") or "")
    reason = str(form.get("reason") or "").strip()[:REASON_MAX] or f"{action} from the console"
    if not token:
        return await model(
            request,
            message="refused: promoting or rolling back needs the registry's bearer token",
            status=401,
        )
    target: int | None = None
    if action == "promote":
        try:
            target = int(str(form.get("version")))
        except ValueError:
            return await model(request, message="refused: no version to promote", status=400)
    elif action != "rollback":
        return await model(request, message=f"refused: unknown action {action!r}", status=400)
    try:
        change = await sources(request).move_alias(
            name, alias, target, token=token, reason=reason, actor="console"
        )
    except Unauthenticated:
        return await model(
            request, message="refused by the registry: the token is wrong", status=401
        )
    except MlbusError as exc:
        return await model(request, message=f"the registry refused: {exc}", status=400)
    log.info("%s: %s of %s → v%d (%s)", action, alias, name, change.version, reason)
    return RedirectResponse(f"/models/{name}", status_code=303)
