"""Native API: POST /v1/classify with an image body (or a multipart form) and the dial as query.

    curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' \
         'http://127.0.0.1:8000/v1/classify?latency_budget_ms=100&top_k=3'
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from service.api_common import serve_inference
from service.engine import Engine, RequestResult
from service.errors import BadRequest
from service.http_body import read_body
from service.params import parse_dial

router = APIRouter(tags=["native"])

_FORM_FIELDS = ("file", "image")


async def image_bytes(request: Request, *, limit: int) -> bytes:
    """The encoded image: the raw body, or the first file part of a multipart form."""
    body = await read_body(request, limit=limit)
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
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
    responses={400: {"description": "bad image or dial"}, 413: {"description": "body too large"},
               429: {"description": "shed: cannot meet the budget (Retry-After)"},
               503: {"description": "not ready or draining"}, 504: {"description": "deadline passed in the queue"}},
)
async def classify(
    request: Request,
    density: Annotated[str | None, Query(description="level name (dense, l070, ...) or a number in (0, 1]")] = None,
    latency_budget_ms: Annotated[str | None, Query(description="end-to-end budget in ms")] = None,
    min_accuracy: Annotated[str | None, Query(description="accuracy floor in (0, 1], via the level card")] = None,
    top_k: Annotated[str | None, Query(description="classes to return (default 5)")] = None,
) -> JSONResponse:
    """Body: the JPEG/PNG/WebP bytes (Content-Type image/*), or multipart with a `file` field.

    The dials are declared for the OpenAPI page; `classify_request` reads the same values from
    the query string (FastAPI's and Starlette's `get` both take the last of repeated keys), so
    this route and service.fast_path, which serves it in production, answer alike.
    """
    return await classify_request(request)


async def classify_request(request: Request) -> JSONResponse:
    """POST /v1/classify on a plain Starlette request: the dials from the query string."""
    query = request.query_params
    density, latency_budget_ms = query.get("density"), query.get("latency_budget_ms")
    min_accuracy, top_k = query.get("min_accuracy"), query.get("top_k")

    async def work(engine: Engine, arrival_s: float) -> RequestResult:
        params = parse_dial(density=density, latency_budget_ms=latency_budget_ms, min_accuracy=min_accuracy,
                            top_k=top_k, num_classes=engine.num_classes)
        data = await image_bytes(request, limit=engine.settings.max_body_bytes)
        image = await request.app.state.decoder.decode(data)
        return await engine.infer([image], params, arrival_s=arrival_s)

    return await serve_inference(request, "v1", work, _respond)


def _respond(engine: Engine, result: RequestResult) -> JSONResponse:
    values, indices = engine.top_k(result.items[0], result.top_k)
    level = result.decision.level
    return JSONResponse({
        "model": engine.model_name,
        "level": level,
        "reason": result.decision.reason,
        "level_info": engine.level_facts(level),
        "predictions": [
            {"index": i, "label": engine.labels[i], "probability": round(v, 6)} for v, i in zip(values, indices)
        ],
        "timing": {
            "queue_ms": round(result.queue_ms, 3),
            "compute_ms": round(result.compute_ms, 3),
            "total_ms": round(result.total_ms, 3),
            "budget_ms": result.decision.budget_ms,
            "predicted_ms": round(result.decision.predicted_ms, 3),
        },
        "deadline_met": result.deadline_met,
        "batch_size": result.batch_size,
    })
