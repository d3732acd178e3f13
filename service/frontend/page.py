"""The page for people: `GET /` and its two assets, and the two JSON routes it reads.

The page (service/frontend/static/: one HTML file, one script, one style sheet; no build
step, no framework, nothing fetched from elsewhere) lets a person try the dial on their own
image, run it at every level side by side, and watch the controller work. It reads:

    GET /v1/model            the served model: levels with GFLOPs and the card's figures,
                             the ladder, the policy and the default budget
    GET /v1/live?since_s=T   the engine's timeline: one sample per second of the last minutes

and classifies through `POST /v1/classify` like any client. Every fetch carries the API key
the page asked for after a 401 (kept in the tab's sessionStorage), so it works behind auth;
`/` and `/ui/*` hold no data and should stay open, or the page cannot load to ask for a key.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.errors import BadRequest, NotFound

router = APIRouter()

# The only files served under /ui/ (a fixed table: no path from the request reaches the disk).
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE = "index.html"
# Everything from this origin only; blob: for the preview of the chosen image, data: for the
# empty favicon (without it the browser asks for /favicon.ico and logs the 404).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def asset_bytes(name: str) -> bytes:
    """A file of the page, read once from the package (service/frontend/static/)."""
    return resources.files("service.frontend").joinpath("static", name).read_bytes()


@router.get("/", include_in_schema=False)
async def page() -> Response:
    return Response(asset_bytes(PAGE), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no such page asset: {name!r}")
    return Response(asset_bytes(name), media_type=ASSETS[name], headers=_HEADERS)


@router.get("/v1/model", tags=["native"], summary="The served model: levels, GFLOPs, card figures, ladder")
async def model(request: Request) -> JSONResponse:
    info = request.app.state.engine.describe()
    settings = request.app.state.settings
    return JSONResponse(
        {
            "model": info.name,
            "device": info.device,
            "num_classes": info.num_classes,
            "has_card": info.has_card,
            "levels": [{"name": name, **info.facts[name].as_dict()} for name in info.levels],
            "ladder": list(info.ladder),
            "policy": settings.policy,
            "default_budget_ms": settings.default_budget_ms,
            "max_batch_size": settings.max_batch_size,
        }
    )


@router.get("/v1/live", tags=["native"], summary="The last minutes of traffic, one sample per second")
async def live(request: Request) -> JSONResponse:
    """Samples from second `since_s` (epoch seconds) on, all kept ones without it.

    Each sample: `t_s`, `arrived` (requests reaching the controller, shed ones included),
    `arrived_images`, `served` (requests answered per level), `met`, `missed`, `shed`,
    `expired`, `bad_request`, `error`, `queue_max` (deepest queue seen, images).
    """
    text = request.query_params.get("since_s")
    since_s = None
    if text is not None:
        try:
            since_s = float(text)
        except ValueError:
            raise BadRequest(f"since_s must be a number of epoch seconds, got {text!r}") from None
        if not math.isfinite(since_s):
            raise BadRequest(f"since_s must be finite, got {text!r}")
    engine = request.app.state.engine
    return JSONResponse({"levels": list(engine.describe().levels), "samples": await engine.timeline(since_s)})
