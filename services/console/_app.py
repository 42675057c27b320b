"""The console's web app: Starlette routes, Jinja2 pages, live updates over SSE.

    app = build_app(settings)          # an ASGI app; its lifespan opens and closes the sources
    run(settings)                      # uvicorn on MLBUS_CONSOLE_HTTP_HOST:PORT until SIGTERM

Every answer says how long the server took in a `Server-Timing: app;dur=<ms>`
header (what `loadtests/bench_console.py` reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlbus.config import load_settings
from mlbus.runstate import discover

from . import _pages_loop, _pages_models, _pages_outcomes
from ._collector import Collector
from ._security import csrf_token
from ._settings import ConsoleSettings
from ._sources import ConsoleSources
from ._topics import TopicReader
from ._web import not_found

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SSE_KEEPALIVE_S = 15.0


class ServerTiming:
    """Adds `Server-Timing: app;dur=<ms>` to every HTTP answer (time to the headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                took_ms = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={took_ms:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals["csrf_token"] = csrf_token
    env.filters["ago"] = ago
    env.filters["duration"] = duration
    env.filters["num"] = num
    env.filters["signed"] = signed
    env.filters["when"] = when
    return templates


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return f"{duration((datetime.now(UTC) - moment).total_seconds())} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def signed(value: Any, digits: int = 4) -> str:
    """A difference with its sign: +0.0213."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "—"
    return f"{value:+.{digits}f}"


def when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_app(settings: ConsoleSettings, *, collect: bool = True) -> Starlette:
    """The console over the stack `settings` name. `collect=False`: one refresh at start, none
    after (tests drive `app.state.collector` themselves)."""
    templates = _templates()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sources = ConsoleSources(settings)
        topics = TopicReader(settings.kafka)
        collector = Collector(sources, topics)
        app.state.sources, app.state.collector, app.state.templates = sources, collector, templates
        # Pages answer at once (from an empty snapshot until the first refresh lands).
        task = asyncio.create_task(collector.run() if collect else collector.refresh())
        try:
            yield
        finally:
            collector.stop()
            await task
            await topics.stop()
            await sources.aclose()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def plotly_js(request: Request) -> Response:
        return FileResponse(_plotly_js(), media_type="text/javascript", headers=_CACHE)

    routes = [
        Route("/healthz", healthz),
        Route("/events", events),
        Route("/static/plotly.min.js", plotly_js),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        *_pages_loop.routes(),
        *_pages_models.routes(),
        *_pages_outcomes.routes(),
    ]
    middleware = [Middleware(ServerTiming), Middleware(GZipMiddleware, minimum_size=2048)]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: no_such_page},
    )


async def no_such_page(request: Request, exc: Exception) -> Response:
    """A path no route serves: the console's own page, naming the path (escaped)."""
    return not_found(request, f"there is no page at {request.url.path}", active="")


_CACHE = {"cache-control": "public, max-age=86400"}


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


async def events(request: Request) -> Response:
    """Server-sent events: the live part of a page, re-rendered after each refresh."""
    page = request.query_params.get("page", "overview")
    render: Callable[[Request], Awaitable[str]] = (
        _pages_loop.drift_live if page == "drift" else _pages_loop.overview_live
    )
    collector: Collector = request.app.state.collector

    async def stream() -> AsyncIterator[str]:
        seen = collector.snapshot.version
        while True:
            async with collector.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(collector.changed.wait(), SSE_KEEPALIVE_S)
            if await request.is_disconnected():
                return
            if collector.snapshot.version == seen:
                yield ": keep-alive\n\n"
                continue
            seen = collector.snapshot.version
            html = await render(request)
            data = "".join(f"data: {line}\n" for line in html.splitlines())
            yield f"event: {page}\n{data}\n"

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def run(settings: ConsoleSettings | None = None) -> None:
    """Serve the console until SIGTERM/SIGINT (uvicorn handles both)."""
    import uvicorn

    from mlbus.telemetry import setup_telemetry

    chosen = discover(settings or load_settings(ConsoleSettings))
    if "sample_ratio" not in chosen.telemetry.model_fields_set:
        # The console's own reads (every refresh) would bury the loop's traces: not traced
        # unless MLBUS_TELEMETRY_SAMPLE_RATIO asks for it.
        telemetry_settings = chosen.telemetry.model_copy(update={"sample_ratio": 0.0})
        chosen = chosen.model_copy(update={"telemetry": telemetry_settings})
    telemetry = setup_telemetry("console", chosen)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # one line per topic assignment
    try:
        log.info("console on http://%s:%d/", chosen.http_host, chosen.http_port)
        uvicorn.run(
            build_app(chosen),
            host=chosen.http_host,
            port=chosen.http_port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,  # an open live-update stream never holds a stop
        )
    finally:
        telemetry.shutdown()
