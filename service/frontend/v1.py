"""Native API: POST /v1/classify with an image body (or a multipart form) and the dial as query.

    curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' \
         'http://127.0.0.1:8000/v1/classify?latency_budget_ms=100&top_k=3'
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.dial import DIAL_FIELDS, parse_dial
from service.engine.core import Engine, RequestResult
from service.errors import BadRequest, UnsupportedMediaType
from service.frontend.body import read_body
from service.frontend.inference import serve_inference

router = APIRouter(tags=["native"])

_FORM_FIELDS = ("file", "image")
# v1 takes the dial without priority (one image: nothing to break ties against in its request).
V1_QUERY = {name: text for name, text in DIAL_FIELDS.items() if name != "priority"}
# Content-Types /v1/classify takes. Not text/plain, form-urlencoded or none at all: a web page
# may send those cross-origin without asking (a CORS "simple" request) and burn capacity.
CONTENT_TYPES = ("image/", "multipart/form-data", "application/octet-stream")


def content_type(request: Request) -> str:
    """The request's Content-Type (lower case); UnsupportedMediaType unless /v1/classify takes it."""
    value = request.headers.get("content-type", "").lower()
    if not value.startswith(CONTENT_TYPES):
        raise UnsupportedMediaType(
            f"Content-Type {value[:60]!r} is not accepted: send the image as image/jpeg, image/png, "
            f"image/webp or application/octet-stream, or as a multipart/form-data file"
        )
    return value


async def image_bytes(request: Request, *, limit: int, timeout_s: float | None = None) -> bytes:
    """The encoded image: the raw body, or the first file part of a multipart form."""
    kind = content_type(request)
    body = await read_body(request, limit=limit, timeout_s=timeout_s)
    if not kind.startswith("multipart/form-data"):
        return body
    try:
        form = await request.form(max_files=4, max_fields=16)
    except Exception as exc:  # malformed multipart
        raise BadRequest(f"malformed multipart form: {exc}") from None
    for name in _FORM_FIELDS:
        part = form.get(name)
        if part is not None and hasattr(part, "read"):
            return await part.read()
    for _, part in form.multi_items():
        if hasattr(part, "read"):
            return await part.read()
    raise BadRequest(f"multipart form holds no file part (send the image as field {_FORM_FIELDS[0]!r})")


@router.post(
    "/v1/classify",
    summary="Classify one image at a per-request token density",
    responses={
        400: {"description": "bad image or dial"},
        408: {"description": "body not received in time"},
        413: {"description": "body too large"},
        415: {"description": "Content-Type not an image or multipart"},
        429: {"description": "shed: cannot meet the budget (Retry-After)"},
        503: {"description": "not ready or draining"},
        504: {"description": "deadline passed in the queue"},
    },
    # The dial's query parameters, from the one table that classify_request reads too.
    openapi_extra={
        "parameters": [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in V1_QUERY.items()
        ]
    },
)
async def classify(request: Request) -> JSONResponse:
    """Body: the JPEG/PNG/WebP bytes (Content-Type image/*), or multipart with a `file` field.

    service.frontend.fast_path serves this route in production with the same function.
    """
    return await classify_request(request)


async def classify_request(request: Request) -> JSONResponse:
    """POST /v1/classify on a plain Starlette request: the dials from the query string."""
    query = request.query_params
    raw = {name: query.get(name) for name in V1_QUERY}  # the last of repeated keys, as FastAPI takes it
    settings = request.app.state.settings

    async def work(engine: Engine, arrival_s: float) -> RequestResult:
        dial = parse_dial(**raw, num_classes=engine.describe().num_classes)
        data = await image_bytes(request, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
        deadline_s = arrival_s + dial.budget_ms(settings.default_budget_ms) / 1e3
        image = await request.app.state.decoder.decode(data, deadline_s=deadline_s)
        return await engine.infer([image], dial, arrival_s=arrival_s)

    return await serve_inference(request, "v1", work, _respond)


def _respond(engine: Engine, result: RequestResult) -> JSONResponse:
    info = engine.describe()
    level = result.decision.level
    values, indices = result.items[0].top(result.top_k)
    return JSONResponse(
        {
            "model": info.name,
            "level": level,
            "reason": result.decision.reason,
            "level_info": info.facts[level].as_dict(),
            "predictions": [
                {"index": i, "label": info.labels[i], "probability": round(v, 6)} for v, i in zip(values, indices)
            ],
            "timing": result.timing_ms(),
            "deadline_met": result.deadline_met,
            "batch_size": result.batch_size,
        }
    )
