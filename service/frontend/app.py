"""The FastAPI application: `create_app(settings)` builds it; the lifespan brings it up.

Start-up: load the model, card and runner (unless an engine is handed in), then warm up and
profile in a thread while /v2/health/live already answers; readiness turns true only when
the worker runs. Shutdown: close the queues, let the worker finish, stop the decoders.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engine.core import Engine
from service.errors import ServiceError
from service.frontend import page, v1, v2
from service.frontend.decode import ImageDecoder
from service.frontend.http_metrics import HttpMetrics
from service.frontend.inference import error_response
from service.frontend.safe_json import JsonLimits
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, *, engine: Engine | None = None, exit_on_failure: bool = False, process: int = 0
) -> FastAPI:
    """Build the app.

    Args:
        settings: validated settings.
        engine: an already loaded engine (service.__main__ loads it first so that a missing
            weights file ends the process with one line); loaded in the lifespan when None.
        exit_on_failure: when warm-up fails, SIGTERM this process (the CLI) instead of only
            staying unready (tests).
        process: the API process's index, for the HTTP layer's metrics (0 when one process serves).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        eng = engine or await asyncio.to_thread(Engine.load, settings)
        await eng.open()
        app.state.engine = eng
        app.state.decoder = ImageDecoder(
            cfg=eng.describe().data_config,
            max_pixels=settings.max_image_pixels,
            max_request_pixels=settings.max_request_pixels,
        )
        app.state.warm_task = asyncio.create_task(_warm(eng, exit_on_failure))
        try:
            yield
        finally:
            eng.begin_drain()
            app.state.warm_task.cancel()
            # The server lowers this to what is left of its shutdown time (service.frontend.server).
            await eng.shutdown(app.state.close_timeout_s)
            app.state.decoder.close()

    # SAIT_OPENAPI=false: no /docs, /redoc or /openapi.json (the routes stay, unlisted).
    docs = {} if settings.openapi else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        title="sait-serve",
        version=_version(),
        summary="One weight-shared sparse ViT; token density is a per-request dial.",
        lifespan=lifespan,
        **docs,
    )
    app.state.settings = settings
    app.state.close_timeout_s = settings.drain_timeout_s
    app.state.json_limits = JsonLimits.from_settings(settings)
    app.state.http_metrics = HttpMetrics(process=process)
    # The routes themselves, not a lazily included router: probes, drift tests and the
    # OpenAPI page all see every path in app.routes.
    app.router.routes.extend([*v1.router.routes, *v2.router.routes, *page.router.routes])

    if not settings.metrics_port:  # else on its own port only (service.frontend.server)

        @app.get("/metrics", include_in_schema=True, tags=["ops"], summary="Prometheus metrics")
        async def metrics(request: Request) -> Response:
            return await render_metrics(request.app)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Triton's error body everywhere, also for unknown paths and wrong methods.
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request {where}: {first.get('msg', 'invalid')}"}, status_code=400)

    return app


async def render_metrics(app) -> Response:
    """The engine's exposition followed by the HTTP layer's (one text format, no family in both)."""
    body, content_type = await app.state.engine.render_metrics()
    return Response(body + app.state.http_metrics.render(), media_type=content_type)


async def _warm(engine: Engine, exit_on_failure: bool) -> None:
    try:
        await asyncio.to_thread(engine.warm)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        engine.failed = f"{type(exc).__name__}: {exc}"
        log.critical("warm-up failed, the server will not become ready: %s", engine.failed)
        if exit_on_failure:  # drain (nothing is in flight) and exit non-zero: see service.__main__
            os.kill(os.getpid(), signal.SIGTERM)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sait-serve")
    except Exception:
        return "0.0.0"
