"""The outcomes service's pages: experiments (outcomes per alias, verdicts and actions) and
the labeling queue, with the form that sends a person's label (token and CSRF checked)."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any, TypeGuard
from urllib.parse import quote

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from mlbus.errors import InvalidInput, MlbusError, Unauthenticated
from mlbus.events import LabelingRequested

from ._charts import difference_figure, outcomes_figure
from ._security import CSRF_REFUSED, checked_form
from ._web import failure, page, snapshot, sources

log = logging.getLogger(__name__)

OPEN_SHOWN = 50
"""Open labeling requests listed (the most urgent)."""
ID_MAX = 200
VALUE_MAX = 200


def routes() -> list[Route]:
    return [
        Route("/experiments", experiments),
        Route("/labeling", labeling),
        Route("/labeling/labels", send_label, methods=["POST"]),
    ]


# ── experiments ──────────────────────────────────────────────────────────────


def window_label(seconds: float) -> str:
    """3600 → "1 h", 86400 → "1 d": how the spec's windows read."""
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def _moment(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and math.isfinite(value)


def experiments_context(
    status: dict[str, Any] | None, champion_now: int | None, min_samples: int | None
) -> dict[str, Any]:
    """The page's content from the outcomes service's status (`mlbus.outcomesstatus`)."""
    if status is None:
        return {"status": None, "experiments": [], "arms": [], "figures": [], "metrics": []}
    rows: list[dict[str, Any]] = status.get("windows", [])
    metrics: list[str] = []
    for row in rows:
        metrics += [name for name in row["metrics"] if name not in metrics]
    # (version, alias) → window → row: one series per arm, champion first, newest version first.
    arms: dict[tuple[int, str], dict[float, dict[str, Any]]] = {}
    for row in rows:
        arms.setdefault((int(row["version"]), row["alias"]), {})[float(row["window_s"])] = row
    order = sorted(arms, key=lambda a: (a[1] != "champion", -a[0], a[1]))
    figures = [
        outcomes_figure(
            name,
            [
                (
                    f"v{version} {alias}",
                    [
                        (window_label(w), arms[(version, alias)][w]["metrics"].get(name, {}))
                        for w in sorted(arms[(version, alias)])
                    ],
                )
                for version, alias in order
            ],
        )
        for name in metrics
    ]
    table = [
        {
            "version": version,
            "alias": alias,
            "champion_now": alias == "champion" and version == champion_now,
            "windows": [
                (window_label(w), arms[(version, alias)][w]) for w in sorted(arms[(version, alias)])
            ],
        }
        for version, alias in order
    ]
    if champion_now is not None and (champion_now, "champion") not in arms:
        # A champion just promoted has answered nothing labelled yet: say which it is anyway.
        table.insert(
            0, {"version": champion_now, "alias": "champion", "champion_now": True, "windows": []}
        )
    found = []
    for record in sorted(
        status.get("experiments", []), key=lambda r: str(r.get("started_at")), reverse=True
    ):
        last: dict[str, Any] = record.get("last") or {}
        champion = (int(record["champion_version"]), "champion")
        challenger = (int(record["challenger_version"]), str(record["alias"]))
        side_by_side = [
            {
                "window": window_label(w),
                "champion": arms.get(champion, {}).get(w),
                "challenger": arms.get(challenger, {}).get(w),
            }
            for w in sorted(set(arms.get(champion, {})) | set(arms.get(challenger, {})))
        ]
        interval = [last.get("difference"), last.get("ci_low"), last.get("ci_high")]
        numbers = [float(x) for x in interval if _finite(x)]
        figure = None
        if last.get("ready") and len(numbers) == 3:
            figure = difference_figure(str(last.get("metric")), *numbers)
        found.append(
            {
                "r": record,
                "last": last,
                "started": _moment(record.get("started_at")),
                "decided": _moment(record.get("decided_at")),
                "side_by_side": side_by_side,
                "figure": figure,
                "min_samples": min_samples,
            }
        )
    return {
        "status": status,
        "evaluated": _moment(status.get("evaluated_at")),
        "experiments": found,
        "arms": table,
        "figures": figures,
        "metrics": metrics,
    }


async def experiments(request: Request) -> Response:
    snap = snapshot(request)
    spec = sources(request).spec
    status = snap.outcomes
    model = status["model"] if status else (spec.model.name if spec else None)
    champion_now = next((m.aliases.get("champion") for m in snap.models if m.model == model), None)
    rules = spec.outcomes.experiments if spec is not None else None
    context = experiments_context(status, champion_now, rules.min_samples if rules else None)
    context.update(
        model=model,
        alpha=rules.alpha if rules else None,
        decided=list(reversed(snap.decided)),
        acted=list(reversed(snap.acted)),
        window_label=window_label,
    )
    return page(request, "experiments.html", context, active="experiments")


# ── labeling ─────────────────────────────────────────────────────────────────


def short_names(names: list[str]) -> dict[str, str]:
    """Feature name → how it is shown: without its view ("card_activity.amount" → "amount")
    when that leaves the names distinct."""
    short = {name: name.rsplit(".", 1)[-1] for name in names}
    return short if len(set(short.values())) == len(short) else {n: n for n in names}


async def labeling(request: Request, *, message: str = "", status: int = 200) -> Response:
    src = sources(request)
    spec = src.spec
    context: dict[str, Any] = {"message": message, "spec": spec}
    if spec is None:
        return page(request, "labeling.html", context, active="labeling", status=status)
    try:
        queue = await src.labeling_queue(OPEN_SHOWN)
    except MlbusError as exc:
        return failure(request, exc, active="labeling")
    items: list[LabelingRequested] = []
    unreadable = 0
    for raw in queue["open"]:
        try:
            items.append(LabelingRequested.model_validate(raw))
        except ValidationError:
            unreadable += 1
    label_source = spec.sources[spec.model.label.source]
    label_field = label_source.contract.fields[spec.model.label.field]
    choices = ["true", "false"] if label_field.type == "bool" else list(label_field.values or ())
    sent = request.query_params.get("sent", "")[:ID_MAX]
    context.update(
        model=queue["model"],
        counts=queue["counts"],
        items=items,
        short={i.scored_event_id: short_names(sorted(i.features)) for i in items},
        unreadable=unreadable,
        rules=spec.outcomes.labeling,
        label_name=spec.model.label.field,
        label_type=label_field.type,
        label_topic=label_source.topic,
        choices=choices,
        sent=sent if not message else "",
    )
    return page(request, "labeling.html", context, active="labeling", status=status)


async def send_label(request: Request) -> Response:
    """A person's label for an open request; needs CSRF and the registry's token."""
    form = await checked_form(request)
    if form is None:
        return await labeling(request, message=CSRF_REFUSED, status=403)
    token = str(form.get("token") or "")
    event_id = str(form.get("scored_event_id") or "").strip()[:ID_MAX]
    value = str(form.get("label") or "").strip()[:VALUE_MAX]
    if not token:
        return await labeling(
            request, message="refused: a label needs the registry's bearer token", status=401
        )
    if not event_id:
        return await labeling(request, message="refused: the form names no request", status=400)
    if not value:
        return await labeling(
            request, message=f"refused: no label was given for {event_id}", status=400
        )
    src = sources(request)
    try:
        await src.check_token(token)
    except Unauthenticated:
        return await labeling(
            request, message="refused by the registry: the token is wrong", status=401
        )
    except MlbusError as exc:
        return await labeling(
            request, message=f"the token could not be checked by the registry: {exc}", status=503
        )
    try:
        topic = await src.send_label(event_id, value)
    except InvalidInput as exc:
        return await labeling(
            request, message=f"refused, nothing sent for {event_id}: {exc}", status=400
        )
    except MlbusError as exc:
        return await labeling(request, message=f"the label was not sent: {exc}", status=503)
    log.info("label for %s sent to %s from the console", event_id, topic)
    return RedirectResponse(f"/labeling?sent={quote(event_id, safe='')}", status_code=303)
