"""The v2 codec byte for byte: binary and JSON tensors, BYTES elements, bad requests, responses."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from service.errors import BadRequest
from service.frontend.v2_codec import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    build_infer_response,
    deserialize_bytes,
    parse_infer_request,
    serialize_bytes,
)

SIZE = (3, 224, 224)


def binary_request(header: dict, blob: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + blob, str(len(head))


# -- v2 codec ---------------------------------------------------------------------------------------
def test_bytes_input_binary_round_trip():
    imgs = [b"abc", b"", b"\x00\x01"]
    blob = serialize_bytes(imgs)
    assert deserialize_bytes(blob) == imgs
    body, n = binary_request(
        {
            "inputs": [
                {"name": "image", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
            ],
            "parameters": {"density": "l050"},
        },
        blob,
    )
    req = parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)
    assert req.images == imgs and req.batch == 3 and req.parameters == {"density": "l050"}


def test_pixels_input_binary_and_json():
    x = np.arange(2 * 3 * 224 * 224, dtype=np.uint64).astype(np.uint8).reshape(2, 3, 224, 224)
    body, n = binary_request(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [2, 3, 224, 224],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        },
        x.tobytes(),
    )
    req = parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)
    assert torch.equal(req.pixels, torch.from_numpy(x))
    small = {
        "inputs": [
            {"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8", "data": x[:1].reshape(-1).tolist()}
        ]
    }
    req = parse_infer_request(json.dumps(small).encode(), None, input_size=SIZE, max_batch_size=8)
    assert torch.equal(req.pixels, torch.from_numpy(x[:1]))


BAD_REQUESTS = [
    ("malformed JSON", b"{nope", None, "malformed JSON"),
    ("not an object", b"[1]", None, "JSON object"),
    ("no inputs", b"{}", None, "no 'inputs'"),
    (
        "unknown input",
        json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": []}]}).encode(),
        None,
        "unexpected inference input",
    ),
    (
        "wrong datatype",
        json.dumps(
            {"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": []}]}
        ).encode(),
        None,
        "datatype 'FP32'",
    ),
    (
        "wrong shape",
        json.dumps(
            {"inputs": [{"name": "pixels", "shape": [1, 3, 100, 100], "datatype": "UINT8", "data": []}]}
        ).encode(),
        None,
        "unexpected shape",
    ),
    (
        "batch too large",
        json.dumps(
            {"inputs": [{"name": "pixels", "shape": [9, 3, 224, 224], "datatype": "UINT8", "data": []}]}
        ).encode(),
        None,
        "batch-size must be <= 8",
    ),
    (
        "pixel values out of range",
        json.dumps(
            {"inputs": [{"name": "pixels", "shape": [1, 1, 1, 1], "datatype": "UINT8", "data": [300]}]}
        ).encode(),
        None,
        "unexpected shape",
    ),
    (
        "JSON BYTES not base64",
        json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}).encode(),
        None,
        "base64",
    ),
    ("header length past body", b"{}", "99", "body has 2 bytes"),
    ("header length not a number", b"{}", "x", "must be an integer"),
    # Issue 20, item 1: each was a 500.
    ("nested 100000 deep", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "SAIT_MAX_JSON_DEPTH"),
    (
        "BYTES data nested 985 deep",
        json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}).encode()[:-3]
        + b', "data": '
        + b"[" * 985
        + b'"eA=="'
        + b"]" * 985
        + b"}]}",
        None,
        "SAIT_MAX_JSON_DEPTH",
    ),
    ("a 5000-digit top_k", b'{"parameters": {"top_k": ' + b"9" * 5000 + b"}}", None, "SAIT_MAX_NUMBER_DIGITS"),
    (
        "a UINT8 value of 2**70",
        json.dumps(
            {"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8", "data": [2**70]}]}
        ).encode(),
        None,
        "integers 0..255",
    ),
    (
        "an output twice",
        json.dumps(
            {
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}],
                "outputs": [{"name": "probabilities"}] * 400,
            }
        ).encode(),
        None,
        "requested twice",
    ),
]


@pytest.mark.parametrize("case,body,n,message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests(case, body, n, message):
    with pytest.raises(BadRequest, match=message) as info:
        parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)
    assert info.value.status == 400


def test_binary_size_mismatches():
    x = bytes(3 * 224 * 224)
    spec = {"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8", "parameters": {"binary_data_size": 10}}
    body, n = binary_request({"inputs": [spec]}, x)
    with pytest.raises(BadRequest, match="binary_data_size is 10"):
        parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)
    spec["parameters"]["binary_data_size"] = 100
    body, n = binary_request({"inputs": [spec]}, x[:100])
    with pytest.raises(BadRequest, match="needs 150528 UINT8 bytes, got 100"):
        parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)
    blob = struct.pack("<I", 50) + b"short"
    body, n = binary_request(
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
            ]
        },
        blob,
    )
    with pytest.raises(BadRequest, match="claims 50 bytes"):
        parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)


def test_response_binary_json_and_classification():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    top = torch.tensor([[1, 2], [0, 2]])
    labels = ["cat", "dog", "eel"]
    req = InferRequest(
        id="r1",
        input_name="image",
        images=[b"", b""],
        outputs=[
            RequestedOutput("probabilities", binary=True),
            RequestedOutput("probabilities", binary=False, classification=2),
        ],
    )
    body, headers, media = build_infer_response(
        model_name="m", request=req, probs=probs, top_k_indices=top, labels=labels, parameters={"level": "dense"}
    )
    n = int(headers[HEADER_LENGTH])
    doc = json.loads(body[:n])
    assert doc["id"] == "r1" and doc["model_name"] == "m" and doc["parameters"] == {"level": "dense"}
    binary_out, class_out = doc["outputs"]
    assert binary_out["parameters"]["binary_data_size"] == 24 and binary_out["datatype"] == "FP32"
    assert np.array_equal(np.frombuffer(body[n:], dtype=np.float32).reshape(2, 3), probs.numpy())
    assert class_out["datatype"] == "BYTES" and class_out["shape"] == [2, 2]
    assert class_out["data"] == ["0.700000:1:dog", "0.200000:2:eel", "0.500000:0:cat", "0.300000:2:eel"]
    assert media == "application/octet-stream"
    # No outputs listed and no binary_data_output: every output as JSON.
    req = InferRequest(id=None, input_name="image", images=[b"", b""])
    body, headers, media = build_infer_response(
        model_name="m", request=req, probs=probs, top_k_indices=top, labels=labels, parameters={}
    )
    doc = json.loads(body)
    assert not headers and media == "application/json"
    assert [o["name"] for o in doc["outputs"]] == ["probabilities", "top_k_indices"]
    assert doc["outputs"][1]["data"] == [1, 2, 0, 2]


def test_nested_data_is_flattened_without_recursion():
    from service.frontend.v2_codec import _flatten

    deep: list = ["leaf"]
    for _ in range(5000):  # far past Python's recursion limit
        deep = [deep, 1]
    flat = _flatten(deep)
    assert flat[0] == "leaf" and flat[1:] == [1] * 5000
    assert _flatten([[1, [2, [3]]], 4, [], [[5]]]) == [1, 2, 3, 4, 5]
    ok = b'{"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [["eA=="]]}]}'
    assert parse_infer_request(ok, None, input_size=SIZE, max_batch_size=8).images == [b"x"]
