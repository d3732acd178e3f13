"""The native API, POST /v1/classify: raw bodies, multipart forms, every bad input of the issue."""

from __future__ import annotations

import pytest
from svc_helpers import MAX_BODY, jpeg_bytes, png_bomb, png_bytes


# -- native API -------------------------------------------------------------------------------------
def test_v1_raw_body_and_multipart(http):
    r = http.post(
        "/v1/classify",
        content=jpeg_bytes(seed=5),
        headers={"Content-Type": "image/jpeg"},
        params={"top_k": 3, "latency_budget_ms": 10_000},
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert len(doc["predictions"]) == 3 and doc["deadline_met"] is True
    assert {"index", "label", "probability"} <= set(doc["predictions"][0])
    assert doc["level"] in ("dense", "l090", "l080", "l070", "l060", "l050") and doc["reason"] == "budget"
    assert {"queue_ms", "compute_ms", "total_ms", "budget_ms"} <= set(doc["timing"])
    assert doc["level_info"]["gflops_ratio"] <= 1.0
    r = http.post("/v1/classify", files={"file": ("x.png", png_bytes(), "image/png")}, params={"density": "0.6"})
    assert r.status_code == 200 and r.json()["level"] == "l060" and r.json()["reason"] == "density"


@pytest.mark.parametrize(
    "case,body,params,status,message",
    [
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
    ],
)
def test_v1_bad_input_gets_clear_4xx(http, case, body, params, status, message):
    r = http.post(
        "/v1/classify",
        content=png_bytes() if body is None else body,
        params=params,
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    if status == 429:
        assert int(r.headers["Retry-After"]) >= 1
    assert http.get("/v2/health/ready").status_code == 200  # and the server keeps serving


def test_multipart_without_a_file(http):
    r = http.post("/v1/classify", files={"note": (None, "no file")})
    assert r.status_code == 400 and "file" in r.json()["error"]
