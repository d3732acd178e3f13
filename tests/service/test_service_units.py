"""Pure pieces: v2 codec byte for byte, image decoding guards, dial parsing, settings, body limits."""
from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from svc_helpers import jpeg_bytes, png_bomb, png_bytes, running_server

from models.preprocess import DataConfig
from service.decode import decode_image
from service.errors import BadRequest, PayloadTooLarge
from service.http_body import decompress
from service.params import parse_dial
from service.settings import SettingsError, load_settings
from service.v2_codec import (
    HEADER_LENGTH, InferRequest, RequestedOutput, build_infer_response, deserialize_bytes, parse_infer_request,
    serialize_bytes,
)

CFG = DataConfig()
SIZE = (3, 224, 224)


def binary_request(header: dict, blob: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + blob, str(len(head))


# -- v2 codec ---------------------------------------------------------------------------------------
def test_bytes_input_binary_round_trip():
    imgs = [b"abc", b"", b"\x00\x01"]
    blob = serialize_bytes(imgs)
    assert deserialize_bytes(blob) == imgs
    body, n = binary_request({"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES",
                                          "parameters": {"binary_data_size": len(blob)}}],
                              "parameters": {"density": "l050"}}, blob)
    req = parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)
    assert req.images == imgs and req.batch == 3 and req.parameters == {"density": "l050"}


def test_pixels_input_binary_and_json():
    x = np.arange(2 * 3 * 224 * 224, dtype=np.uint64).astype(np.uint8).reshape(2, 3, 224, 224)
    body, n = binary_request({"inputs": [{"name": "pixels", "shape": [2, 3, 224, 224], "datatype": "UINT8",
                                          "parameters": {"binary_data_size": x.nbytes}}]}, x.tobytes())
    req = parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)
    assert torch.equal(req.pixels, torch.from_numpy(x))
    small = {"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8",
                         "data": x[:1].reshape(-1).tolist()}]}
    req = parse_infer_request(json.dumps(small).encode(), None, input_size=SIZE, max_batch_size=8)
    assert torch.equal(req.pixels, torch.from_numpy(x[:1]))


BAD_REQUESTS = [
    ("malformed JSON", b"{nope", None, "malformed JSON"),
    ("not an object", b"[1]", None, "JSON object"),
    ("no inputs", b"{}", None, "no 'inputs'"),
    ("unknown input", json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": []}]}).encode(),
     None, "unexpected inference input"),
    ("wrong datatype", json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                               "data": []}]}).encode(), None, "datatype 'FP32'"),
    ("wrong shape", json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3, 100, 100], "datatype": "UINT8",
                                            "data": []}]}).encode(), None, "unexpected shape"),
    ("batch too large", json.dumps({"inputs": [{"name": "pixels", "shape": [9, 3, 224, 224], "datatype": "UINT8",
                                                "data": []}]}).encode(), None, "batch-size must be <= 8"),
    ("pixel values out of range", json.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 1, 1], "datatype": "UINT8",
                                                          "data": [300]}]}).encode(), None, "unexpected shape"),
    ("JSON BYTES not base64", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                      "data": ["%%%"]}]}).encode(), None, "base64"),
    ("header length past body", b"{}", "99", "body has 2 bytes"),
    ("header length not a number", b"{}", "x", "must be an integer"),
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
    body, n = binary_request({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                          "parameters": {"binary_data_size": len(blob)}}]}, blob)
    with pytest.raises(BadRequest, match="claims 50 bytes"):
        parse_infer_request(body, n, input_size=SIZE, max_batch_size=8)


def test_response_binary_json_and_classification():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    top = torch.tensor([[1, 2], [0, 2]])
    labels = ["cat", "dog", "eel"]
    req = InferRequest(id="r1", input_name="image", images=[b"", b""],
                       outputs=[RequestedOutput("probabilities", binary=True),
                                RequestedOutput("probabilities", binary=False, classification=2)])
    body, headers, media = build_infer_response(model_name="m", request=req, probs=probs, top_k_indices=top,
                                                labels=labels, parameters={"level": "dense"})
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
    body, headers, media = build_infer_response(model_name="m", request=req, probs=probs, top_k_indices=top,
                                                labels=labels, parameters={})
    doc = json.loads(body)
    assert not headers and media == "application/json"
    assert [o["name"] for o in doc["outputs"]] == ["probabilities", "top_k_indices"]
    assert doc["outputs"][1]["data"] == [1, 2, 0, 2]


# -- decoding ---------------------------------------------------------------------------------------
def test_decode_formats():
    assert decode_image(jpeg_bytes(), CFG, max_pixels=10**7).shape == (3, 224, 224)
    out = decode_image(png_bytes(), CFG, max_pixels=10**7)
    assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)


@pytest.mark.parametrize("case,data,message", [
    ("empty", b"", "empty image"),
    ("not an image", b"hello, this is text", "not an image"),
    ("truncated JPEG", jpeg_bytes()[:3000], "truncated or corrupt"),
    ("bomb", png_bomb(), "over the limit"),
    ("gif is not accepted", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "not an image"),
])
def test_decode_refuses(case, data, message):
    with pytest.raises(BadRequest, match=message):
        decode_image(data, CFG, max_pixels=40_000_000)


def test_decompress_guards_against_zip_bombs():
    assert decompress(gzip.compress(b"x" * 100), "gzip", limit=1000) == b"x" * 100
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b"\0" * 2_000_000), "gzip", limit=1_000_000)
    with pytest.raises(BadRequest, match="Content-Encoding"):
        decompress(b"x", "br", limit=10)


# -- dial and settings --------------------------------------------------------------------------------------
def test_parse_dial():
    p = parse_dial(density="0.7", latency_budget_ms="50", min_accuracy="0.7", top_k="3", priority=1)
    assert (p.density, p.latency_budget_ms, p.min_accuracy, p.top_k, p.priority) == (0.7, 50.0, 0.7, 3, 1)
    assert parse_dial(timeout_us=250_000).latency_budget_ms == 250.0  # Triton's timeout is microseconds
    assert parse_dial(density="l050").density == "l050"


@pytest.mark.parametrize("kwargs,message", [
    ({"latency_budget_ms": "0"}, "out of range"), ({"latency_budget_ms": "abc"}, "must be a number"),
    ({"latency_budget_ms": "nan"}, "finite"), ({"min_accuracy": "1.2"}, "out of range"),
    ({"density": "-1"}, "out of range"), ({"density": True}, "density"), ({"top_k": "0"}, "top_k"),
    ({"top_k": "2.5"}, "integer"), ({"priority": -1}, "priority"),
])
def test_parse_dial_refuses(kwargs, message):
    with pytest.raises(BadRequest, match=message):
        parse_dial(**kwargs)


def test_settings_flags_over_env_over_defaults(monkeypatch):
    monkeypatch.setenv("SAIT_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SAIT_POLICY", "fixed:0.6")
    s = load_settings(["--max-batch-size", "4", "--no-cuda-graphs", "--levels", "dense, l050"])
    assert s.max_batch_size == 4 and s.policy == "fixed:0.6" and s.fixed_density == "0.6"
    assert s.cuda_graphs is False and s.level_names == ("dense", "l050") and s.model_name == s.model
    assert load_settings(["--policy", "fixed:dense"]).fixed_density == "dense"


@pytest.mark.parametrize("argv,message", [
    (["--max-batch-size", "0"], "SAIT_MAX_BATCH_SIZE (--max-batch-size)"),
    (["--policy", "fastest"], "SAIT_POLICY"),
    (["--policy", "fixed:1.5"], "outside (0, 1]"),
    (["--device", "tpu"], "SAIT_DEVICE"),
    (["--safety-margin", "1"], "SAIT_SAFETY_MARGIN"),
    (["--levels", "dense,,l050"], "SAIT_LEVELS"),
    (["--port", "http"], "SAIT_PORT"),
    (["--torch-threads", "-1"], "SAIT_TORCH_THREADS"),
])
def test_settings_refused_with_one_line(argv, message):
    with pytest.raises(SettingsError) as info:
        load_settings(argv)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_torch_threads_setting_reaches_the_worker_thread():
    before = torch.get_num_threads()
    try:
        with running_server(torch_threads=1, default_budget_ms=60_000) as s:
            assert s.engine.torch_threads == 1
            r = httpx.post(f"{s.url}/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}, timeout=60)
            assert r.status_code == 200, r.text
        torch.set_num_threads(before)  # the count is process-wide: undo it for the next server
        with running_server(default_budget_ms=60_000) as s:  # 0: torch's default, left alone
            assert s.engine.torch_threads == before
    finally:
        torch.set_num_threads(before)  # MKL's count is process-wide: leave the next test as it was


def _run_cli(*args, env_extra=None):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_bad_setting_exits_with_one_line(capsys):
    from service.__main__ import main

    assert main(["--max-queue-delay-ms", "-5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "SAIT_MAX_QUEUE_DELAY_MS" in lines[0]


def test_cli_missing_weights_file_exits_with_one_line(capsys, tmp_path):
    from service.__main__ import main

    assert main(["--model", "vit_tiny_test", "--weights", str(tmp_path / "absent.safetensors")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "weights file not found" in lines[0]


def test_cli_without_any_weights_says_how_to_provide_them(tmp_path):
    # A fresh process: the Hugging Face cache location is read at import time.
    proc = _run_cli("--model", "deit_tiny_patch16_224", env_extra={"HF_HOME": str(tmp_path / "empty-cache")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "HF_HOME" in lines[0] and "--weights" in lines[0]


def test_throughput_check_sends_what_the_server_parses():
    from service.throughput_check import infer_body

    body, headers = infer_body("m", "l050", 3, SIZE)
    req = parse_infer_request(body, headers[HEADER_LENGTH], input_size=SIZE, max_batch_size=8)
    assert req.pixels.shape == (3, *SIZE) and req.parameters["density"] == "l050"
    assert req.outputs == [RequestedOutput("probabilities", binary=True)]


def test_queue_depth_is_read_at_scrape_time():
    from service.metrics import Metrics

    metrics = Metrics(levels=("dense", "l040"))
    body, _ = metrics.render()
    assert b'sait_queue_depth{level="l040"} 0.0' in body  # zeros before any queue exists
    depth = {"dense": 3}
    metrics.read_queue_depth(lambda: depth)
    depth["l040"] = 7  # changed after the hook was set: the scrape sees the queues now
    body, _ = metrics.render()
    assert b'sait_queue_depth{level="dense"} 3.0' in body and b'sait_queue_depth{level="l040"} 7.0' in body
