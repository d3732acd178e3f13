"""KServe v2 / Open Inference Protocol infer bodies, as Triton reads and writes them.

Request: a JSON header, optionally followed by raw tensor bytes (binary tensor data
extension): the header's length is in `Inference-Header-Content-Length`, and each input
whose `parameters.binary_data_size` is set takes that many bytes, in input order. BYTES
elements in binary form are a 4-byte little-endian length followed by the bytes.

Response: JSON outputs, or binary ones appended after the JSON (an output's `binary_data`
parameter, else the request's `binary_data_output`). The classification extension turns an
output into BYTES [N, count] of "value:index:label" strings, highest first.

Pure functions: no I/O, no model, so the protocol is tested byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from service.errors import BadRequest
from service.frontend.safe_json import JsonLimits, loads_bounded

INPUT_IMAGE = "image"  # BYTES [-1]: encoded JPEG/PNG/WebP, one per image
INPUT_PIXELS = "pixels"  # UINT8 [-1,3,H,W]: preprocessed (resized, centre-cropped), not normalized
OUTPUT_PROBS = "probabilities"  # FP32 [-1,num_classes]
OUTPUT_TOPK = "top_k_indices"  # INT64 [-1,top_k]: class indices, most probable first
OUTPUTS = (OUTPUT_PROBS, OUTPUT_TOPK)
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: follow the request's binary_data_output
    classification: int = 0


@dataclass
class InferRequest:
    """A parsed infer request.

    Args:
        id: the request id to echo, or None.
        input_name: INPUT_IMAGE or INPUT_PIXELS.
        images: for INPUT_IMAGE, the encoded images.
        pixels: for INPUT_PIXELS, uint8 [N,3,H,W].
        outputs: requested outputs; None means all, per binary_data_output.
        parameters: the request's parameters (dial, priority, timeout, ...).
    """

    id: str | None
    input_name: str
    images: list[bytes] = field(default_factory=list)
    pixels: torch.Tensor | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return len(self.images) if self.input_name == INPUT_IMAGE else int(self.pixels.shape[0])

    @property
    def binary_data_output(self) -> bool:
        return bool(self.parameters.get("binary_data_output", False))


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) per Inference-Header-Content-Length."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < n <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
    return body[:n], body[n:]


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    *,
    input_size: tuple[int, int, int],
    max_batch_size: int,
    json_limits: JsonLimits = JsonLimits(),
) -> InferRequest:
    """Validate and decode an infer body. Raises BadRequest with Triton-like messages."""
    head, tail = split_body(body, header_length)
    doc = loads_bounded(head, json_limits)
    if not isinstance(doc, dict):
        raise BadRequest("the request header must be a JSON object with 'inputs'")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("the request has no 'inputs'")
    if len(inputs) != 1:
        raise BadRequest(
            f"expected exactly one input ({INPUT_IMAGE!r} BYTES or {INPUT_PIXELS!r} UINT8), got {len(inputs)}"
        )
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise BadRequest("each input must be a JSON object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if name not in (INPUT_IMAGE, INPUT_PIXELS):
        raise BadRequest(
            f"unexpected inference input {name!r}: the model takes {INPUT_IMAGE!r} (BYTES) or {INPUT_PIXELS!r} (UINT8)"
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    expected_type = "BYTES" if name == INPUT_IMAGE else "UINT8"
    if datatype != expected_type:
        raise BadRequest(f"input {name!r}: datatype {datatype!r} does not match the model's {expected_type}")
    raw = _binary_part(spec, tail, name)
    req = InferRequest(id=_request_id(doc), input_name=name, outputs=_outputs(doc), parameters=params)
    if name == INPUT_IMAGE:
        req.images = _bytes_input(shape, raw, spec.get("data"), max_batch_size)
    else:
        req.pixels = _pixels_input(shape, raw, spec.get("data"), input_size, max_batch_size)
    return req


def _request_id(doc: dict) -> str | None:
    rid = doc.get("id")
    if rid is None:
        return None
    if not isinstance(rid, str):
        raise BadRequest("'id' must be a string")
    return rid


def _binary_part(spec: dict, tail: bytes, name: str) -> bytes | None:
    sp = spec.get("parameters") or {}
    if not isinstance(sp, dict):
        raise BadRequest(f"input {name!r}: 'parameters' must be a JSON object")
    size = sp.get("binary_data_size")
    if size is None:
        if tail:
            raise BadRequest(f"the body has {len(tail)} bytes of binary data but no input sets binary_data_size")
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if size != len(tail):
        raise BadRequest(
            f"input {name!r}: binary_data_size is {size} but {len(tail)} bytes of binary data follow the header"
        )
    if "data" in spec:
        raise BadRequest(f"input {name!r} has both JSON 'data' and binary data")
    return tail


def _check_batch(name: str, n: int, max_batch_size: int) -> None:
    if n < 1:
        raise BadRequest(f"input {name!r}: the batch is empty")
    if n > max_batch_size:
        raise BadRequest(f"inference request batch-size must be <= {max_batch_size}, got {n}")


def _bytes_input(shape: list[int], raw: bytes | None, data, max_batch_size: int) -> list[bytes]:
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadRequest(f"unexpected shape for input {INPUT_IMAGE!r}: expected [-1] (or [-1,1]), got {shape}")
    n = shape[0]
    _check_batch(INPUT_IMAGE, n, max_batch_size)
    if raw is not None:
        items = deserialize_bytes(raw)
    else:
        if data is None:
            raise BadRequest(f"input {INPUT_IMAGE!r} has neither 'data' nor binary_data_size")
        items = [_b64(x) for x in _flatten(data)]
    if len(items) != n:
        raise BadRequest(f"input {INPUT_IMAGE!r}: shape {shape} needs {n} elements, got {len(items)}")
    return items


def _b64(x) -> bytes:
    if not isinstance(x, str):
        raise BadRequest(f"input {INPUT_IMAGE!r}: JSON BYTES elements must be base64 strings")
    try:
        return base64.b64decode(x, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"input {INPUT_IMAGE!r}: JSON BYTES elements must be base64-encoded images "
            f"(or send them with the binary data extension)"
        ) from None


def _pixels_input(
    shape: list[int], raw: bytes | None, data, input_size: tuple[int, int, int], max_batch_size: int
) -> torch.Tensor:
    if len(shape) != 4 or tuple(shape[1:]) != tuple(input_size):
        want = [-1, *input_size]
        raise BadRequest(f"unexpected shape for input {INPUT_PIXELS!r}: expected {want}, got {shape}")
    _check_batch(INPUT_PIXELS, shape[0], max_batch_size)
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count:
            raise BadRequest(f"input {INPUT_PIXELS!r}: shape {shape} needs {count} UINT8 bytes, got {len(raw)}")
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(*shape)
    if data is None:
        raise BadRequest(f"input {INPUT_PIXELS!r} has neither 'data' nor binary_data_size")
    try:
        arr = np.asarray(data, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError):  # ragged, not numbers, or past int64
        raise BadRequest(f"input {INPUT_PIXELS!r}: 'data' must hold integers 0..255") from None
    if arr.size != count:
        raise BadRequest(f"input {INPUT_PIXELS!r}: shape {shape} needs {count} elements, got {arr.size}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise BadRequest(f"input {INPUT_PIXELS!r}: UINT8 values must lie in 0..255")
    return torch.from_numpy(arr.astype(np.uint8)).view(*shape)


def _flatten(data) -> list:
    """The leaves of nested lists, in order; a loop, not recursion (the depth is the client's)."""
    out, stack = [], [iter([data])]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _outputs(doc: dict) -> list[RequestedOutput] | None:
    outs = doc.get("outputs")
    if outs is None:
        return None
    if not isinstance(outs, list):
        raise BadRequest("'outputs' must be a list")
    parsed = []
    for o in outs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest("each requested output needs a 'name'")
        if o["name"] not in OUTPUTS:
            raise BadRequest(f"unexpected inference output {o['name']!r}: the model has {', '.join(OUTPUTS)}")
        # Each output once: repeats would only multiply the response (a small request, a huge answer).
        if any(p.name == o["name"] for p in parsed):
            raise BadRequest(f"output {o['name']!r} is requested twice")
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise BadRequest(f"output {o['name']!r}: 'parameters' must be a JSON object")
        binary = p.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise BadRequest(f"output {o['name']!r}: binary_data must be true or false")
        count = p.get("classification", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise BadRequest(f"output {o['name']!r}: classification must be a non-negative integer")
        parsed.append(RequestedOutput(name=o["name"], binary=binary, classification=count))
    return parsed


# -- BYTES elements ---------------------------------------------------------------------------------
def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def deserialize_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest("binary BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise BadRequest(f"binary BYTES element claims {n} bytes but only {len(raw) - offset} remain")
        items.append(raw[offset : offset + n])
        offset += n
    return items


# -- responses ------------------------------------------------------------------------------------------
def classification_strings(values: torch.Tensor, indices: torch.Tensor, labels: list[str]) -> list[list[str]]:
    """Triton's "value:index:label" per class, highest value first, for each image."""
    return [[f"{v:f}:{i}:{labels[i]}" for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())]


def build_infer_response(
    *,
    model_name: str,
    request: InferRequest,
    probs: torch.Tensor,
    top_k_indices: torch.Tensor,
    labels: list[str],
    parameters: dict,
) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, media type) for a served request."""
    wanted = request.outputs if request.outputs is not None else [RequestedOutput(name=n) for n in OUTPUTS]
    header_outputs, blobs = [], []
    for out in wanted:
        binary = request.binary_data_output if out.binary is None else out.binary
        tensor = probs if out.name == OUTPUT_PROBS else top_k_indices
        if out.classification:
            k = min(out.classification, tensor.shape[1])
            source = tensor.float()
            values, indices = source.topk(k, dim=1)
            strings = classification_strings(values, indices, labels)
            spec = {"name": out.name, "datatype": "BYTES", "shape": [len(strings), k]}
            if binary:
                blob = serialize_bytes([s.encode() for row in strings for s in row])
            else:
                spec["data"] = [s for row in strings for s in row]
        else:
            datatype = "FP32" if out.name == OUTPUT_PROBS else "INT64"
            arr = tensor.numpy().astype(np.float32 if datatype == "FP32" else np.int64, copy=False)
            spec = {"name": out.name, "datatype": datatype, "shape": list(arr.shape)}
            if binary:
                blob = np.ascontiguousarray(arr).tobytes()
            else:
                spec["data"] = arr.reshape(-1).tolist()
        if binary:
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        header_outputs.append(spec)
    doc = {"model_name": model_name, "model_version": "1"}
    if request.id is not None:
        doc["id"] = request.id
    doc["parameters"] = parameters
    doc["outputs"] = header_outputs
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {}, "application/json"
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head))}, "application/octet-stream"
