"""Build, send and read one request for either API; one Result per scheduled request.

Native API: POST /v1/classify, the JPEG as the body, dials as query parameters.
KServe v2 (Open Inference Protocol): POST /v2/models/{m}/infer with the binary tensor data
extension: a JSON header of `Inference-Header-Content-Length` bytes, then the raw tensor.
Inputs are either encoded images (datatype BYTES, each element a 4-byte little-endian length
then the bytes) or a preprocessed UINT8 [1,3,224,224] tensor. Dials travel in the request's
`parameters`.

Latency is measured from the request's *scheduled* send time, not from when it was sent, so
a slow server (or a saturated client) cannot hide queueing (no coordinated omission).
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import httpx

from bench.loadgen.http1 import Http1Client
from bench.loadgen.payloads import Payload, PayloadKind
from bench.loadgen.scenario import Dials

Api = Literal["v1", "v2"]
APIS: tuple[str, ...] = ("v1", "v2")
OUTCOMES: tuple[str, ...] = ("ok", "shed", "expired", "bad_request", "error", "timeout", "unsent")
HEADER_LENGTH = "Inference-Header-Content-Length"

# The generator's own lean client (bench/loadgen/http1.py), or an httpx one (tests mock
# servers with httpx's MockTransport): both have get/post, and raise httpx's exceptions.
HttpClient = Http1Client | httpx.AsyncClient


@dataclass
class Result:
    """What happened to one scheduled request. Times in ms; NaN where not known."""

    index: int
    cls: str
    scheduled_s: float
    budget_ms: float
    outcome: str = "unsent"
    status: int = 0
    send_lag_ms: float = math.nan
    latency_ms: float = math.nan
    level: str = ""
    server_deadline_met: bool | None = None
    queue_ms: float = math.nan
    compute_ms: float = math.nan
    server_total_ms: float = math.nan
    predicted_ms: float = math.nan
    top1: int = -1
    batch_size: int = 0  # images in the server batch that computed it; 0 when not reported
    error: str = ""

    @property
    def deadline_met(self) -> bool:
        """Answered OK within budget, timed by the client from the scheduled send time."""
        return self.outcome == "ok" and self.latency_ms <= self.budget_ms

    def row(self) -> dict:
        return {**asdict(self), "deadline_met": self.deadline_met}


@dataclass
class ServerInfo:
    """Fields the server reports about a served request."""

    level: str = ""
    deadline_met: bool | None = None
    queue_ms: float = math.nan
    compute_ms: float = math.nan
    total_ms: float = math.nan
    predicted_ms: float = math.nan
    top1: int = -1
    batch_size: int = 0
    extra: dict = field(default_factory=dict)


def outcome_for_status(status: int) -> str:
    """The contract's status codes: 429 shed, 504 expired in queue, other 4xx bad, 5xx error."""
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "shed"
    if status == 504:
        return "expired"
    if 400 <= status < 500:
        return "bad_request"
    return "error"


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def read_server_info(doc: dict) -> ServerInfo:
    """Pick the serving facts out of a response (native body, or v2 `parameters`).

    Tolerates absent fields, so a server that reports less still yields a usable Result.
    """
    timing = doc.get("timing") if isinstance(doc.get("timing"), dict) else doc
    met = doc.get("deadline_met")
    batch = doc.get("batch_size")
    top1 = -1
    preds = doc.get("predictions") or doc.get("top_k") or []
    if isinstance(preds, list) and preds and isinstance(preds[0], dict):
        first = preds[0].get("index", preds[0].get("class_index", -1))
        top1 = int(first) if isinstance(first, (int, float)) else -1
    return ServerInfo(
        level=str(doc.get("level", "")),
        deadline_met=met if isinstance(met, bool) else None,
        queue_ms=_float(timing.get("queue_ms")),
        compute_ms=_float(timing.get("compute_ms")),
        total_ms=_float(timing.get("total_ms")),
        predicted_ms=_float(timing.get("predicted_ms")),
        top1=top1,
        batch_size=int(batch) if isinstance(batch, (int, float)) and not isinstance(batch, bool) else 0,
    )


# ---- native API -------------------------------------------------------------------------


def v1_request(dials: Dials, payload: Payload) -> tuple[str, dict, dict, bytes]:
    """(path, query params, headers, body) of a native classify request."""
    return "/v1/classify", dials.query(), {"Content-Type": "image/jpeg"}, payload.jpeg


def v1_info(response: httpx.Response) -> ServerInfo:
    return read_server_info(response.json())


# ---- KServe v2 --------------------------------------------------------------------------


def encode_bytes_element(data: bytes) -> bytes:
    """One BYTES tensor element in the binary extension: uint32 LE length, then the bytes."""
    return struct.pack("<I", len(data)) + data


def v2_request(
    dials: Dials,
    payload: Payload,
    *,
    model: str,
    input_name: str,
    kind: PayloadKind,
    output_name: str | None = None,
) -> tuple[str, dict, bytes]:
    """(path, headers, body) of a v2 infer request using the binary tensor data extension.

    With output_name, only that output is asked for, as JSON (as a client that needs the
    class indices would; the full probability vector is not shipped back).
    """
    if kind == "uint8":
        if payload.uint8 is None:
            raise ValueError(f"payload {payload.name} has no UINT8 tensor (prepare with kind='uint8')")
        blob = payload.uint8
        side = math.isqrt(len(blob) // 3)
        tensor = {"name": input_name, "shape": [1, 3, side, side], "datatype": "UINT8"}
    else:
        blob = encode_bytes_element(payload.jpeg)
        tensor = {"name": input_name, "shape": [1], "datatype": "BYTES"}
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header: dict = {"inputs": [tensor]}
    if output_name:
        header["outputs"] = [{"name": output_name, "parameters": {"binary_data": False}}]
    params = dials_parameters(dials)
    if params:
        header["parameters"] = params
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return f"/v2/models/{model}/infer", headers, head + blob


def dials_parameters(dials: Dials) -> dict:
    """Dials as typed v2 request parameters (numbers stay numbers)."""
    raw = {
        "density": dials.density,
        "latency_budget_ms": dials.latency_budget_ms,
        "min_accuracy": dials.min_accuracy,
        "top_k": dials.top_k,
    }
    return {k: v for k, v in raw.items() if v is not None}


def v2_response_json(response: httpx.Response) -> dict:
    """The JSON part of a v2 response (which may be followed by binary output data)."""
    length = response.headers.get(HEADER_LENGTH)
    body = response.content[: int(length)] if length else response.content
    return json.loads(body)


def v2_info(response: httpx.Response) -> ServerInfo:
    doc = v2_response_json(response)
    info = read_server_info(doc.get("parameters") or {})
    if info.top1 < 0:
        info.top1 = _v2_top1(doc)
    return info


def _v2_top1(doc: dict) -> int:
    """The first returned class index, from an output named like indices (JSON outputs only)."""
    for out in doc.get("outputs") or []:
        if "ind" in str(out.get("name", "")).lower() and isinstance(out.get("data"), list) and out["data"]:
            first = out["data"][0]
            return int(first) if isinstance(first, (int, float)) else -1
    return -1


@dataclass(frozen=True)
class Target:
    """Where and how requests are sent.

    Args:
        api: "v1" (native) or "v2" (KServe v2).
        kind: payload kind, "jpeg" or "uint8" (v2 only; the native API takes JPEGs).
        model: served model name, for v2 paths.
        input_name: the v2 input tensor name (see discover_v2_io).
        output_name: the one v2 output to ask for; None asks for all.
    """

    api: Api = "v1"
    kind: PayloadKind = "jpeg"
    model: str = "deit_tiny_patch16_224"
    input_name: str = "input"
    output_name: str | None = None


async def discover_v2_io(client: HttpClient, model: str, kind: PayloadKind) -> tuple[str, str | None]:
    """From the model's v2 metadata: the input that takes this payload's datatype, and the
    integer output (class indices) to ask for, or None to ask for all outputs."""
    response = await client.get(f"/v2/models/{model}")
    response.raise_for_status()
    meta = response.json()
    inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
    if not inputs:
        raise ValueError(f"model {model!r} metadata lists no inputs")
    want = "UINT8" if kind == "uint8" else "BYTES"
    input_name = next(
        (str(i["name"]) for i in inputs if str(i.get("datatype", "")).upper() == want), str(inputs[0]["name"])
    )
    output_name = next((str(o["name"]) for o in outputs if str(o.get("datatype", "")).upper().startswith("INT")), None)
    return input_name, output_name


async def send(
    client: HttpClient, target: Target, dials: Dials, payload: Payload, result: Result, *, start_s: float
) -> Result:
    """Send one request now and fill `result` in. Never raises for server/transport failures.

    Args:
        start_s: the run's time origin on time.perf_counter(); result.scheduled_s is relative.
    """
    scheduled = start_s + result.scheduled_s
    result.send_lag_ms = (time.perf_counter() - scheduled) * 1e3
    try:
        if target.api == "v1":
            path, params, headers, body = v1_request(dials, payload)
            response = await client.post(path, params=params, headers=headers, content=body)
        else:
            path, headers, body = v2_request(
                dials,
                payload,
                model=target.model,
                input_name=target.input_name,
                kind=target.kind,
                output_name=target.output_name,
            )
            response = await client.post(path, headers=headers, content=body)
        result.latency_ms = (time.perf_counter() - scheduled) * 1e3
        result.status = response.status_code
        result.outcome = outcome_for_status(response.status_code)
        if result.outcome == "ok":
            info = v1_info(response) if target.api == "v1" else v2_info(response)
            result.level, result.server_deadline_met = info.level, info.deadline_met
            result.queue_ms, result.compute_ms = info.queue_ms, info.compute_ms
            result.server_total_ms, result.top1 = info.total_ms, info.top1
            result.predicted_ms, result.batch_size = info.predicted_ms, info.batch_size
        else:
            result.error = _error_text(response)
    except httpx.TimeoutException:
        result.latency_ms = (time.perf_counter() - scheduled) * 1e3
        result.outcome, result.error = "timeout", "client timeout"
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        result.latency_ms = (time.perf_counter() - scheduled) * 1e3
        result.outcome, result.error = "error", f"{type(exc).__name__}: {exc}"[:200]
    return result


def _error_text(response: httpx.Response) -> str:
    try:
        doc = response.json()
        msg = doc.get("error") or doc.get("detail") or doc
    except ValueError:
        msg = response.text
    return str(msg)[:200]
