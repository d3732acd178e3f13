"""service.frontend.fast_path: the inference routes without FastAPI answer as the FastAPI routes do."""

import asyncio
import json

import httpx
import numpy as np
import pytest
from svc_helpers import TINY, jpeg_bytes, running_server

from service.frontend import v1
from service.frontend.fast_path import FastInference, _handler, route_path


@pytest.mark.parametrize(
    "path, routed",
    [
        ("/v1/classify", True),
        ("/v2/models/m/infer", True),
        ("/v2/models/m/versions/1/infer", True),
        ("/v2/models/m/ready", False),
        ("/v2/models/a/b/infer", False),
        ("/v1/classify/extra", False),
        ("/metrics", False),
    ],
)
def test_only_the_inference_paths_are_routed(path, routed):
    assert (_handler(path) is not None) is routed
    assert _handler("/v1/classify") is v1.classify_request


def test_route_path_drops_the_root_path():
    assert route_path({"path": "/api/v1/classify", "root_path": "/api"}) == "/v1/classify"
    assert route_path({"path": "/v1/classify", "root_path": ""}) == "/v1/classify"


def _uint8_body(n: int, params: dict) -> tuple[bytes, dict]:
    x = np.random.default_rng(0).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "top_k_indices", "parameters": {"binary_data": False}}],
            "parameters": params,
        }
    ).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def _cases():
    jpeg = jpeg_bytes()
    ok_body, ok_headers = _uint8_body(2, {"density": "dense", "top_k": 3})
    bad_body, bad_headers = _uint8_body(1, {"density": "nonsense"})
    return [
        ("POST", "/v1/classify?density=dense&top_k=3&top_k=2", jpeg, {"Content-Type": "image/jpeg"}),
        ("POST", "/v1/classify?latency_budget_ms=-5", jpeg, {"Content-Type": "image/jpeg"}),
        ("POST", "/v1/classify", b"not an image", {"Content-Type": "image/jpeg"}),
        ("POST", f"/v2/models/{TINY}/infer", ok_body, ok_headers),
        ("POST", f"/v2/models/{TINY}/versions/1/infer", ok_body, ok_headers),
        ("POST", f"/v2/models/{TINY}/versions/7/infer", ok_body, ok_headers),
        ("POST", "/v2/models/other/infer", ok_body, ok_headers),
        ("POST", f"/v2/models/{TINY}/infer", bad_body, bad_headers),
        ("POST", f"/v2/models/{TINY}/infer", b"{not json", {}),
        ("GET", f"/v2/models/{TINY}/infer", b"", {}),  # not routed: FastAPI answers 405
    ]


_VARYING = {"queue_ms", "compute_ms", "total_ms", "predicted_ms", "batch_size", "timing"}


def _comparable(response: httpx.Response):
    """Status and body, less what differs between two runs of the same request (timings)."""
    try:
        doc = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.status_code, response.content
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k not in _VARYING}
        if isinstance(doc.get("parameters"), dict):
            doc["parameters"] = {k: v for k, v in doc["parameters"].items() if k not in _VARYING}
    return response.status_code, doc


def test_fast_path_and_fastapi_answer_alike():
    with running_server() as srv:  # served through FastInference, as `python -m service` serves
        cases = _cases()
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            fast = [http.request(m, path, content=body, headers=headers) for m, path, body, headers in cases]

        async def through_fastapi():
            # The same app object, its lifespan already run by the server: the FastAPI routes.
            transport = httpx.ASGITransport(app=srv.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
                return [
                    await client.request(m, path, content=body, headers=headers) for m, path, body, headers in cases
                ]

        slow = asyncio.run(through_fastapi())
    statuses = [r.status_code for r in fast]
    assert statuses == [200, 400, 400, 200, 200, 404, 404, 400, 400, 405], [r.text[:200] for r in fast]
    for case, a, b in zip(cases, fast, slow):
        assert _comparable(a) == _comparable(b), case[:2]
    assert len(fast[0].json()["predictions"]) == 2  # the last of repeated query keys, as FastAPI takes it
    assert fast[3].json()["outputs"][0]["shape"] == [2, 3]


def test_an_unexpected_error_is_a_json_500_and_the_app_serves_on(monkeypatch):
    calls = []

    async def broken(request, model, version):
        calls.append(model)
        raise RuntimeError("a bug")

    async def inner(scope, receive, send):  # what FastAPI would answer for the other routes
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    monkeypatch.setattr("service.frontend.v2.infer", broken)
    app = FastInference(inner)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            failed = await client.post("/v2/models/m/infer", content=b"{}")
            other = await client.get("/v2/health/ready")
            return failed, other

    failed, other = asyncio.run(go())
    assert failed.status_code == 500 and failed.json() == {"error": "internal error: RuntimeError"}
    assert calls == ["m"] and other.status_code == 204
