"""KServe v2 through unmodified tritonclient (health, metadata, config, BYTES and UINT8 binary inputs, JSON inputs,
classification, parameters, statistics) and its errors, against the real server of conftest.py."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tritonclient.http as triton
from svc_helpers import TINY, jpeg_bytes, png_bytes
from tritonclient.utils import InferenceServerException


# -- KServe v2 through tritonclient ---------------------------------------------------------------
def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(TINY)
    assert not client.is_model_ready("unknown_model")
    meta = client.get_server_metadata()
    assert {"classification", "binary_tensor_data", "statistics"} <= set(meta["extensions"])
    model = client.get_model_metadata(TINY)
    assert {(i["name"], i["datatype"]) for i in model["inputs"]} == {("image", "BYTES"), ("pixels", "UINT8")}
    assert model["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}
    config = client.get_model_config(TINY)
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 30_000


def test_infer_bytes_binary_with_classification_and_parameters(client):
    data = np.array([jpeg_bytes(seed=1), png_bytes()], dtype=object)
    inp = triton.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(data, binary_data=True)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("probabilities", class_count=3),
    ]
    res = client.infer(
        TINY, [inp], outputs=outputs[:1], parameters={"density": "l050", "latency_budget_ms": 5000}, request_id="req-7"
    )
    probs = res.as_numpy("probabilities")
    assert probs.shape == (2, 1000) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    response = res.get_response()
    assert response["id"] == "req-7"
    params = response["parameters"]
    assert params["level"] == "l050" and params["reason"] == "density" and params["budget_ms"] == 5000
    assert params["compute_ms"] > 0 and params["total_ms"] >= params["compute_ms"]
    cls = client.infer(TINY, [inp], outputs=outputs[1:], parameters={"density": "l050"}).as_numpy("probabilities")
    assert cls.shape == (2, 3)
    value, index, label = cls[0, 0].decode().split(":", 2)
    assert int(index) == int(probs[0].argmax()) and abs(float(value) - probs[0].max()) < 1e-5 and label


def test_infer_uint8_binary_and_json(client):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    inp = triton.InferInput("pixels", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=True)
    binary = client.infer(TINY, [inp], parameters={"density": "dense"})
    assert binary.as_numpy("probabilities").shape == (3, 1000)
    top = binary.as_numpy("top_k_indices")
    assert top.shape == (3, 5) and np.array_equal(top[:, 0], binary.as_numpy("probabilities").argmax(1))
    one = x[:1]
    inp = triton.InferInput("pixels", list(one.shape), "UINT8")
    inp.set_data_from_numpy(one, binary_data=False)
    js = client.infer(
        TINY,
        [inp],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)],
        parameters={"density": "dense"},
    )
    np.testing.assert_allclose(js.as_numpy("probabilities")[0], binary.as_numpy("probabilities")[0], atol=1e-6)


def test_infer_json_bytes_base64(http):
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(jpeg_bytes(seed=3)).decode()],
            }
        ],
        "parameters": {"top_k": 2, "priority": 1, "timeout": 5_000_000},
    }
    r = http.post(f"/v2/models/{TINY}/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["parameters"]["budget_ms"] == 5000.0  # Triton's timeout (µs) is the budget
    topk = next(o for o in doc["outputs"] if o["name"] == "top_k_indices")
    assert topk["shape"] == [1, 2]


def test_statistics_extension(client):
    stats = client.get_inference_statistics(TINY)["model_stats"][0]
    assert stats["name"] == TINY and stats["inference_count"] > 0 and stats["execution_count"] > 0
    assert stats["inference_stats"]["success"]["count"] > 0
    assert all({"batch_size", "compute_infer"} <= set(b) for b in stats["batch_stats"])


@pytest.mark.parametrize(
    "case,params,message",
    [
        ("density out of range", {"density": 2.0}, "out of range"),
        ("unknown level", {"density": "l001"}, "unknown level"),
        ("budget out of range", {"latency_budget_ms": -1}, "out of range"),
        ("accuracy without a card", {"min_accuracy": 0.5}, "level card"),
        ("accuracy out of range", {"min_accuracy": 3}, "out of range"),
    ],
)
def test_v2_bad_dials(client, case, params, message):
    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png_bytes()], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        client.infer(TINY, [inp], parameters=params)
    assert info.value.status() == "400" and message in info.value.message()


def test_v2_errors(client, http):
    x = np.zeros((1, 3, 100, 100), np.uint8)
    inp = triton.InferInput("pixels", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="unexpected shape") as info:
        client.infer(TINY, [inp])
    assert info.value.status() == "400"
    f = np.zeros((1, 3, 224, 224), np.float32)
    inp = triton.InferInput("pixels", list(f.shape), "FP32")
    inp.set_data_from_numpy(f)
    with pytest.raises(InferenceServerException, match="datatype"):
        client.infer(TINY, [inp])
    with pytest.raises(InferenceServerException, match="unknown model") as info:
        client.infer("resnet50", [inp])
    assert info.value.status() == "404"
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 3, 224, 224],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 150528},
                }
            ]
        }
    ).encode()
    r = http.post(
        f"/v2/models/{TINY}/infer",
        content=head + b"\0" * 1000,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]
    r = http.post(f"/v2/models/{TINY}/infer", content=b'{"inputs": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    bad = base64.b64encode(b"not an image").decode()
    r = http.post(
        f"/v2/models/{TINY}/infer",
        json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [bad]}]},
    )
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    assert http.get("/v2/models/unknown/config").status_code == 404
