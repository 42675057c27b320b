"""What every page handler shares: the sources, the snapshot, and rendering a page."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from mlbus.errors import MlbusError, NotFound, RetryableError

from ._collector import Collector, Snapshot
from ._security import remember_csrf
from ._sources import ConsoleSources

NAV = (
    ("overview", "/", "Overview"),
    ("models", "/models", "Models"),
    ("drift", "/drift", "Drift"),
    ("features", "/features", "Features"),
    ("traces", "/traces", "Traces"),
    ("experiments", "/experiments", "Experiments"),
    ("labeling", "/labeling", "Labeling"),
)


def sources(request: Request) -> ConsoleSources:
    found: ConsoleSources = request.app.state.sources
    return found


def snapshot(request: Request) -> Snapshot:
    collector: Collector = request.app.state.collector
    return collector.snapshot


def templates(request: Request) -> Jinja2Templates:
    found: Jinja2Templates = request.app.state.templates
    return found


def page(
    request: Request, name: str, context: dict[str, Any], *, active: str, status: int = 200
) -> Response:
    """Render a full page (or its fragment) with the navigation and the snapshot's errors."""
    full = {"nav": NAV, "active": active, "snap": snapshot(request), **context}
    response = templates(request).TemplateResponse(request, name, full, status_code=status)
    remember_csrf(request, response)
    return response


def fragment(request: Request, name: str, context: dict[str, Any]) -> str:
    """A template rendered to a string (the live parts sent over SSE)."""
    template = templates(request).get_template(name)
    text: str = template.render({"request": request, "snap": snapshot(request), **context})
    return text


def failure(request: Request, exc: MlbusError, *, active: str) -> Response:
    """A page that names what could not be read (404 for an unknown name, 503 when down)."""
    status = 404 if isinstance(exc, NotFound) else 503 if isinstance(exc, RetryableError) else 502
    return page(request, "error.html", {"message": str(exc)}, active=active, status=status)


def not_found(request: Request, message: str, *, active: str) -> Response:
    return page(request, "error.html", {"message": message}, active=active, status=404)


def html(text: str, status: int = 200) -> Response:
    return HTMLResponse(text, status_code=status)
