"""KServe v2 / Open Inference Protocol routes, as Triton serves them over HTTP.

Health, server and model metadata, model config (max_batch_size, dynamic_batching), the
statistics extension and infer (JSON tensors and the binary tensor data extension, the
classification extension). Errors are {"error": "..."} with Triton's status codes.
"""

from __future__ import annotations

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.dial import DIAL_FIELDS, parse_dial
from service.engine.core import Engine, ModelInfo, RequestResult
from service.errors import NotFound
from service.frontend.body import decompress, read_body
from service.frontend.inference import serve_inference
from service.frontend.v2_codec import (
    HEADER_LENGTH,
    INPUT_IMAGE,
    INPUT_PIXELS,
    OUTPUT_PROBS,
    OUTPUT_TOPK,
    InferRequest,
    build_infer_response,
    parse_infer_request,
)

router = APIRouter(tags=["kserve-v2"])

EXTENSIONS = ["classification", "model_configuration", "binary_tensor_data", "parameters", "statistics"]
VERSION = "1"


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _model(request: Request, model: str, version: str | None = None) -> ModelInfo:
    info = _engine(request).describe()
    if model != info.name:
        raise NotFound(f"Request for unknown model: '{model}' is not found (this server serves '{info.name}')")
    if version not in (None, "", VERSION):
        raise NotFound(f"Request for unknown model: '{model}' version {version} is not found")
    return info


def _status(ok: bool) -> Response:
    return Response(status_code=200 if ok else 503)


@router.get("/v2", summary="Server metadata")
async def server_metadata(request: Request) -> JSONResponse:
    return JSONResponse({"name": "sait-serve", "version": request.app.version, "extensions": EXTENSIONS})


@router.get("/v2/health/live", summary="Liveness (200 while the process serves HTTP)")
async def live(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    return _status(engine is None or engine.health().live)


@router.get("/v2/health/ready", summary="Readiness (200 once warmed up; 503 while loading or draining)")
async def ready(request: Request) -> Response:
    return _status(_engine(request).health().ready)


@router.get("/v2/models/stats", summary="Statistics of all models (statistics extension)")
async def all_stats(request: Request) -> JSONResponse:
    return JSONResponse({"model_stats": [await _engine(request).stats(VERSION)]})


@router.get("/v2/models/{model}/ready", summary="Model readiness")
@router.get("/v2/models/{model}/versions/{version}/ready", include_in_schema=False)
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    _model(request, model, version)
    return _status(_engine(request).health().ready)


@router.get("/v2/models/{model}", summary="Model metadata: inputs and outputs")
@router.get("/v2/models/{model}/versions/{version}", include_in_schema=False)
async def model_metadata(request: Request, model: str, version: str | None = None) -> JSONResponse:
    info = _model(request, model, version)
    return JSONResponse(
        {
            "name": info.name,
            "versions": [VERSION],
            "platform": "pytorch_libtorch",
            "inputs": [
                {"name": INPUT_IMAGE, "datatype": "BYTES", "shape": [-1]},
                {"name": INPUT_PIXELS, "datatype": "UINT8", "shape": [-1, *info.input_size]},
            ],
            "outputs": [
                {"name": OUTPUT_PROBS, "datatype": "FP32", "shape": [-1, info.num_classes]},
                {"name": OUTPUT_TOPK, "datatype": "INT64", "shape": [-1, -1]},
            ],
            "parameters": {"levels": ",".join(info.levels)},
        }
    )


@router.get("/v2/models/{model}/config", summary="Model configuration (Triton's model_configuration extension)")
@router.get("/v2/models/{model}/versions/{version}/config", include_in_schema=False)
async def model_config(request: Request, model: str, version: str | None = None) -> JSONResponse:
    info = _model(request, model, version)
    s = request.app.state.settings
    return JSONResponse(
        {
            "name": info.name,
            "platform": "pytorch_libtorch",
            "backend": "pytorch",
            "max_batch_size": s.max_batch_size,
            "input": [
                # One encoded image per batch element: dims [1] reshaped to [] makes the shape [-1].
                {
                    "name": INPUT_IMAGE,
                    "data_type": "TYPE_STRING",
                    "dims": [1],
                    "reshape": {"shape": []},
                    "optional": True,
                },
                {
                    "name": INPUT_PIXELS,
                    "data_type": "TYPE_UINT8",
                    "format": "FORMAT_NCHW",
                    "dims": list(info.input_size),
                    "optional": True,
                },
            ],
            "output": [
                {"name": OUTPUT_PROBS, "data_type": "TYPE_FP32", "dims": [info.num_classes]},
                {"name": OUTPUT_TOPK, "data_type": "TYPE_INT64", "dims": [-1]},
            ],
            "dynamic_batching": {
                "preferred_batch_size": [s.max_batch_size],
                "max_queue_delay_microseconds": int(s.max_queue_delay_ms * 1000),
                "preserve_ordering": False,
                "priority_levels": 0,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": int(s.default_budget_ms * 1000),
                    "allow_timeout_override": True,
                    "max_queue_size": s.queue_limit,
                },
            },
            "instance_group": [
                {"name": info.name, "kind": "KIND_GPU" if info.device == "cuda" else "KIND_CPU", "count": 1}
            ],
            "parameters": {
                "levels": {"string_value": ",".join(info.levels)},
                "policy": {"string_value": s.policy},
                "safety_margin": {"string_value": str(s.safety_margin)},
                "degrade_from": {"string_value": str(s.degrade_from)},
                "max_utilization": {"string_value": str(s.max_utilization)},
                "overload_wait_share": {"string_value": str(s.overload_wait_share)},
                "ladder": {"string_value": ",".join(info.ladder)},
                "level_card": {"string_value": "yes" if info.has_card else "no"},
            },
        }
    )


@router.get("/v2/models/{model}/stats", summary="Model statistics (statistics extension)")
@router.get("/v2/models/{model}/versions/{version}/stats", include_in_schema=False)
async def model_stats(request: Request, model: str, version: str | None = None) -> JSONResponse:
    _model(request, model, version)
    return JSONResponse({"model_stats": [await _engine(request).stats(VERSION)]})


@router.post("/v2/models/{model}/infer", summary="Inference (JSON or binary tensor data)")
@router.post("/v2/models/{model}/versions/{version}/infer", include_in_schema=False)
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    """Inputs: `image` BYTES [N] (encoded) or `pixels` UINT8 [N,3,224,224]. Parameters: density,
    latency_budget_ms, min_accuracy, top_k, priority, timeout (µs), binary_data_output."""
    state = {}
    settings = request.app.state.settings

    async def work(engine: Engine, arrival_s: float) -> RequestResult:
        info = _model(request, model, version)
        limit = settings.max_body_bytes
        raw = await read_body(request, limit=limit, timeout_s=settings.body_timeout_s)
        body = decompress(raw, request.headers.get("content-encoding"), limit=limit)
        req = state["request"] = parse_infer_request(
            body,
            request.headers.get(HEADER_LENGTH),
            input_size=info.input_size,
            max_batch_size=settings.max_batch_size,
            json_limits=request.app.state.json_limits,
        )
        p = req.parameters
        dial = parse_dial(
            **{name: p.get(name) for name in DIAL_FIELDS}, timeout_us=p.get("timeout"), num_classes=info.num_classes
        )
        if req.input_name == INPUT_IMAGE:
            deadline_s = arrival_s + dial.budget_ms(settings.default_budget_ms) / 1e3
            images = await request.app.state.decoder.decode_many(req.images, deadline_s=deadline_s)
        else:
            images = list(req.pixels.unbind(0))
        return await engine.infer(images, dial, arrival_s=arrival_s)

    def respond(engine: Engine, result: RequestResult) -> Response:
        return _infer_response(engine, state["request"], result)

    return await serve_inference(request, "v2", work, respond)


def _infer_response(engine: Engine, req: InferRequest, result: RequestResult) -> Response:
    info = engine.describe()
    probs = torch.stack([it.probs for it in result.items])
    top = torch.tensor([it.top(result.top_k)[1] for it in result.items], dtype=torch.int64)
    level = result.decision.level
    facts = info.facts[level].as_dict()
    parameters = {
        "level": level,
        "reason": result.decision.reason,
        "gflops_ratio": facts["gflops_ratio"],
        **result.timing_ms(),
        "deadline_met": result.deadline_met,
        "batch_size": result.batch_size,
    }
    # v2 parameters are scalars: a level without a card value simply has no such key.
    for key in ("top1", "agreement"):
        if facts[key] is not None:
            parameters[key] = facts[key]
    body, headers, media_type = build_infer_response(
        model_name=info.name, request=req, probs=probs, top_k_indices=top, labels=info.labels, parameters=parameters
    )
    return Response(body, headers=headers, media_type=media_type)
