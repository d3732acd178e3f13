"""A real uvicorn server (tiny random ViT) driven by tritonclient.http and plain HTTP.

One server for the module: KServe v2 through unmodified tritonclient (health, metadata,
config, BYTES and UINT8 binary inputs, JSON inputs, classification, parameters, stats),
the native endpoint, batching under concurrency, every bad input of the issue, metrics.
"""
from __future__ import annotations

import base64
import concurrent.futures
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from svc_helpers import TINY, jpeg_bytes, metric_value, png_bomb, png_bytes, running_server
from tritonclient.utils import InferenceServerException

MAX_BODY = 2_000_000


@pytest.fixture(scope="module")
def server():
    # A generous default budget: on a shared 2-core runner a tiny batch can take a second.
    with running_server(max_body_bytes=MAX_BODY, max_queue_delay_ms=30, max_batch_size=8,
                        default_budget_ms=60_000) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.hostport, concurrency=4, connection_timeout=30, network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


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
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=True),
               triton.InferRequestedOutput("probabilities", class_count=3)]
    res = client.infer(TINY, [inp], outputs=outputs[:1], parameters={"density": "l050", "latency_budget_ms": 5000},
                       request_id="req-7")
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
    js = client.infer(TINY, [inp], outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)],
                      parameters={"density": "dense"})
    np.testing.assert_allclose(js.as_numpy("probabilities")[0], binary.as_numpy("probabilities")[0], atol=1e-6)


def test_infer_json_bytes_base64(http):
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(jpeg_bytes(seed=3)).decode()]}],
            "parameters": {"top_k": 2, "priority": 1, "timeout": 5_000_000}}
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


@pytest.mark.parametrize("case,params,message", [
    ("density out of range", {"density": 2.0}, "out of range"),
    ("unknown level", {"density": "l001"}, "unknown level"),
    ("budget out of range", {"latency_budget_ms": -1}, "out of range"),
    ("accuracy without a card", {"min_accuracy": 0.5}, "level card"),
    ("accuracy out of range", {"min_accuracy": 3}, "out of range"),
])
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
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8",
                                   "parameters": {"binary_data_size": 150528}}]}).encode()
    r = http.post(f"/v2/models/{TINY}/infer", content=head + b"\0" * 1000,
                  headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]
    r = http.post(f"/v2/models/{TINY}/infer", content=b'{"inputs": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    bad = base64.b64encode(b"not an image").decode()
    r = http.post(f"/v2/models/{TINY}/infer",
                  json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [bad]}]})
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    assert http.get("/v2/models/unknown/config").status_code == 404


# -- native API -------------------------------------------------------------------------------------
def test_v1_raw_body_and_multipart(http):
    r = http.post("/v1/classify", content=jpeg_bytes(seed=5), headers={"Content-Type": "image/jpeg"},
                  params={"top_k": 3, "latency_budget_ms": 10_000})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert len(doc["predictions"]) == 3 and doc["deadline_met"] is True
    assert {"index", "label", "probability"} <= set(doc["predictions"][0])
    assert doc["level"] in ("dense", "l090", "l080", "l070", "l060", "l050") and doc["reason"] == "budget"
    assert {"queue_ms", "compute_ms", "total_ms", "budget_ms"} <= set(doc["timing"])
    assert doc["level_info"]["gflops_ratio"] <= 1.0
    r = http.post("/v1/classify", files={"file": ("x.png", png_bytes(), "image/png")}, params={"density": "0.6"})
    assert r.status_code == 200 and r.json()["level"] == "l060" and r.json()["reason"] == "density"


@pytest.mark.parametrize("case,body,params,status,message", [
    ("non-image bytes", b"GET / HTTP/1.1 pretending", {}, 400, "not an image"),
    ("truncated JPEG", jpeg_bytes()[:4000], {}, 400, "truncated"),
    ("empty body", b"", {}, 400, "empty image"),
    ("huge dimensions", png_bomb(), {}, 400, "SAIT_MAX_IMAGE_PIXELS"),
    ("body over the limit", b"\xff" * (MAX_BODY + 1), {}, 413, "SAIT_MAX_BODY_BYTES"),
    ("density out of range", None, {"density": "0"}, 400, "out of range"),
    ("budget not a number", None, {"latency_budget_ms": "soon"}, 400, "must be a number"),
    ("accuracy out of range", None, {"min_accuracy": "-0.1"}, 400, "out of range"),
    ("top_k out of range", None, {"top_k": "5000"}, 400, "top_k"),
    ("budget nobody can meet", None, {"latency_budget_ms": "0.01"}, 429, "cannot meet"),
])
def test_v1_bad_input_gets_clear_4xx(http, case, body, params, status, message):
    r = http.post("/v1/classify", content=png_bytes() if body is None else body, params=params,
                  headers={"Content-Type": "image/jpeg"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    if status == 429:
        assert int(r.headers["Retry-After"]) >= 1
    assert http.get("/v2/health/ready").status_code == 200  # and the server keeps serving


def test_multipart_without_a_file(http):
    r = http.post("/v1/classify", files={"note": (None, "no file")})
    assert r.status_code == 400 and "file" in r.json()["error"]


def test_unknown_route_is_a_json_error(http):
    r = http.get("/v3/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_concurrent_requests_form_batches(server, http):
    payload = jpeg_bytes(seed=9)
    before = server.engine.worker.batches_run

    def one(_):
        return httpx.post(f"{server.url}/v1/classify", content=payload, params={"density": "dense"}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(16)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    sizes = [r.json()["batch_size"] for r in responses]
    batches = server.engine.worker.batches_run - before
    assert max(sizes) > 1 and batches < 16, (sizes, batches)


def test_metric_families(http):
    text = http.get("/metrics").text
    for family in ("sait_requests_total", "sait_request_duration_seconds_bucket", "sait_queue_duration_seconds_bucket",
                   "sait_compute_duration_seconds_bucket", "sait_batch_size_bucket", "sait_deadline_total",
                   "sait_queue_depth", "sait_level_chosen_total", "sait_ready", "sait_inflight_requests",
                   "sait_cuda_graph_capture_seconds", "sait_cuda_graph_memory_bytes",
                   "sait_arrival_rate_images_per_second"):
        assert f"\n{family}" in text, family
    assert metric_value(text, "sait_ready") == 1.0
    assert metric_value(text, "sait_requests_total", api="v1", outcome="ok") > 0
    assert metric_value(text, "sait_requests_total", api="v2", outcome="ok") > 0
    assert metric_value(text, "sait_requests_total", level="none", outcome="bad_request") > 0
    assert metric_value(text, "sait_level_chosen_total", reason="density") > 0
    assert metric_value(text, "sait_deadline_total", result="met") > 0
    assert "sait_gpu_memory_used_bytes{" not in text  # CUDA only
