"""Request building and response reading for both APIs, against the KServe v2 binary extension."""

import asyncio
import json
import struct

import httpx
import numpy as np
import pytest

from bench.loadgen.client import (
    HEADER_LENGTH,
    Result,
    Target,
    discover_v2_io,
    outcome_for_status,
    read_server_info,
    send,
    v1_request,
    v2_request,
)
from bench.loadgen.payloads import synthetic
from bench.loadgen.scenario import Dials

PAYLOAD = synthetic(count=1, kind="uint8")[0]


def split_v2(body: bytes, headers) -> tuple[dict, bytes]:
    n = int(headers[HEADER_LENGTH])
    return json.loads(body[:n]), body[n:]


def test_v1_request_sends_jpeg_and_dials_as_query():
    path, params, headers, body = v1_request(Dials(density=0.7, latency_budget_ms=120.0), PAYLOAD)
    assert path == "/v1/classify" and headers["Content-Type"] == "image/jpeg"
    assert params == {"density": "0.7", "latency_budget_ms": "120"}
    assert body[:2] == b"\xff\xd8"  # JPEG start-of-image


def test_v2_uint8_request_follows_binary_extension():
    dials = Dials(density=0.5, latency_budget_ms=200.0, min_accuracy=0.7)
    path, headers, body = v2_request(dials, PAYLOAD, model="m", input_name="pixels", kind="uint8")
    assert path == "/v2/models/m/infer" and headers["Content-Type"] == "application/octet-stream"
    header, blob = split_v2(body, headers)
    (tensor,) = header["inputs"]
    assert tensor == {
        "name": "pixels",
        "shape": [1, 3, 224, 224],
        "datatype": "UINT8",
        "parameters": {"binary_data_size": 3 * 224 * 224},
    }
    assert header["parameters"] == {"density": 0.5, "latency_budget_ms": 200.0, "min_accuracy": 0.7}
    assert len(blob) == 3 * 224 * 224
    assert np.frombuffer(blob, np.uint8).reshape(3, 224, 224).shape == (3, 224, 224)


def test_v2_bytes_request_length_prefixes_each_element():
    _, headers, body = v2_request(Dials(), PAYLOAD, model="m", input_name="image", kind="jpeg")
    header, blob = split_v2(body, headers)
    assert header["inputs"][0]["datatype"] == "BYTES" and header["inputs"][0]["shape"] == [1]
    assert "parameters" not in header  # no dials, nothing sent
    (length,) = struct.unpack("<I", blob[:4])
    assert length == len(PAYLOAD.jpeg) and blob[4:] == PAYLOAD.jpeg
    assert header["inputs"][0]["parameters"]["binary_data_size"] == len(blob)


@pytest.mark.parametrize(
    "status, outcome",
    [
        (200, "ok"),
        (429, "shed"),
        (504, "expired"),
        (400, "bad_request"),
        (413, "bad_request"),
        (422, "bad_request"),
        (500, "error"),
        (503, "error"),
    ],
)
def test_status_codes_map_to_outcomes(status, outcome):
    assert outcome_for_status(status) == outcome


def run_send(handler, target, dials=Dials()):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://t") as client:
            import time

            result = Result(index=0, cls="c", scheduled_s=0.0, budget_ms=100.0)
            return await send(client, target, dials, PAYLOAD, result, start_s=time.perf_counter())

    return asyncio.run(go())


def test_send_reads_native_response_fields():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["top_k"] == "3"
        return httpx.Response(
            200,
            json={
                "level": "l070",
                "deadline_met": True,
                "queue_ms": 2.5,
                "compute_ms": 7.0,
                "total_ms": 11.0,
                "batch_size": 12,
                "predictions": [{"index": 42, "score": 0.9}],
            },
        )

    r = run_send(handler, Target(api="v1"), Dials(top_k=3))
    assert (r.outcome, r.status, r.level, r.server_deadline_met, r.top1) == ("ok", 200, "l070", True, 42)
    assert (r.queue_ms, r.compute_ms, r.server_total_ms, r.batch_size) == (2.5, 7.0, 11.0, 12)
    assert 0 <= r.latency_ms < 1000 and r.deadline_met


def test_send_reads_v2_parameters_and_json_outputs():
    def handler(request: httpx.Request) -> httpx.Response:
        header, _ = split_v2(request.content, request.headers)
        assert header["inputs"][0]["datatype"] == "UINT8"
        doc = {
            "model_name": "m",
            "parameters": {"level": "l050", "deadline_met": False, "batch_size": 5},
            "outputs": [{"name": "topk_indices", "shape": [1, 1], "datatype": "INT64", "data": [7]}],
        }
        return httpx.Response(200, json=doc)

    r = run_send(handler, Target(api="v2", kind="uint8", model="m"))
    assert (r.outcome, r.level, r.server_deadline_met, r.top1, r.batch_size) == ("ok", "l050", False, 7, 5)


def test_batch_size_absent_or_malformed_reads_as_unknown():
    for value in (None, "12", True):
        info = read_server_info({"level": "dense", "batch_size": value})
        assert info.batch_size == 0, value


def test_send_records_shed_and_transport_errors_without_raising():
    r = run_send(lambda req: httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "queue full"}), Target())
    assert (r.outcome, r.error, r.deadline_met) == ("shed", "queue full", False)

    def refuse(request):
        raise httpx.ConnectError("refused")

    r = run_send(refuse, Target())
    assert r.outcome == "error" and "ConnectError" in r.error


def test_discover_v2_io_picks_by_datatype():
    meta = {
        "name": "m",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, 224, 224]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32"}, {"name": "top_k_indices", "datatype": "INT64"}],
    }

    async def go(kind):
        transport = httpx.MockTransport(lambda req: httpx.Response(200, json=meta))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await discover_v2_io(client, "m", kind)

    assert asyncio.run(go("uint8")) == ("pixels", "top_k_indices")
    assert asyncio.run(go("jpeg")) == ("image", "top_k_indices")


def test_v2_request_asks_for_one_json_output():
    _, headers, body = v2_request(
        Dials(), PAYLOAD, model="m", input_name="image", kind="jpeg", output_name="top_k_indices"
    )
    header, _ = split_v2(body, headers)
    assert header["outputs"] == [{"name": "top_k_indices", "parameters": {"binary_data": False}}]
