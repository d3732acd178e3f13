"""The two inference routes, served without FastAPI's per-request machinery.

Per request FastAPI runs five middleware layers, matches every route in turn and resolves the
endpoint's dependencies and parameters. The inference routes need none of it: they take the
plain request and validate their own input (service.dial, service.frontend.v2_codec), and they are
where the requests per second are. The event loop that runs this work is one thread: on a CPU
host it shares the model's cores (and the GIL with the worker that dispatches the model's
ops), on a GPU host it bounds the requests per second of the process. `python -m
bench.request_cost` measures its CPU per request (docs/benchmarks.md).

`FastInference(app)` is the ASGI app the server runs: a POST to `/v1/classify` or
`/v2/models/{model}[/versions/{version}]/infer` goes straight to the handler FastAPI itself
would call (the same function); everything else — other routes, other methods, the
lifespan — goes to the FastAPI app, which keeps every route registered, so the OpenAPI page
and the drift tests still see them.
"""

from __future__ import annotations

import asyncio
import logging
import re

from starlette.requests import Request
from starlette.responses import JSONResponse

from service.frontend import v1, v2

log = logging.getLogger(__name__)

_V2_INFER = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


class FastInference:
    """ASGI app: the inference routes directly, the rest through `app` (a FastAPI app)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = _handler(route_path(scope))
            if handler is not None:
                scope["app"] = self.app  # request.app.state, as under FastAPI
                try:
                    response = await handler(Request(scope, receive, send))
                except asyncio.CancelledError:
                    # Only the server's shutdown cancels a handler, once its time is up; the
                    # connection has been answered 503 (service.frontend.protocol) and the
                    # request counted. Ending quietly keeps uvicorn from logging a traceback.
                    return
                except Exception as exc:  # a bug, not a bad request: every ServiceError is answered inside
                    log.exception("inference handler failed")
                    response = JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _handler(path: str):
    """The handler coroutine function for an inference path (bound to its path parameters), else None."""
    if path == "/v1/classify":
        return v1.classify_request
    match = _V2_INFER.fullmatch(path)
    if match is None:
        return None
    model, version = match["model"], match["version"]
    return lambda request: v2.infer(request, model, version)


def route_path(scope) -> str:
    """The path the routes see: without the root path a proxy mounted the app under (as Starlette)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
