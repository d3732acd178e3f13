"""The end-to-end bench's closed loop: bounded, summarized."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench.e2e_bench import closed_loop, summarize
from bench.loadgen.client import Target
from bench.loadgen.payloads import synthetic
from bench.loadgen.scenario import Dials
from bench.report import e2e_markdown


def _fake_server(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(
            200,
            json={"inputs": [{"name": "image_bytes", "datatype": "BYTES"}, {"name": "pixels", "datatype": "UINT8"}]},
        )
    head_len = int(request.headers["Inference-Header-Content-Length"])
    header = json.loads(request.content[:head_len])
    assert header["inputs"][0]["name"] == "pixels" and header["parameters"]["density"] == "l050"
    return httpx.Response(200, json={"outputs": [], "parameters": {"level": "l050", "compute_ms": 1.5}})


def test_closed_loop_runs_bounded_and_summarizes(model_result):
    dials = Dials(name="l050", density="l050", latency_budget_ms=60_000)
    results, elapsed = asyncio.run(
        closed_loop(
            "http://test",
            Target(api="v2", kind="uint8", model="m"),
            dials,
            synthetic(count=2, kind="uint8", side=32),
            concurrency=3,
            duration_s=0.2,
            budget_ms=60_000,
            transport=httpx.MockTransport(_fake_server),
        )
    )
    assert 0.2 <= elapsed < 5.0 and len(results) >= 3
    s = summarize(results, elapsed)
    assert s["ok"] == s["requests"] == len(results) and s["levels_answered"] == {"l050": len(results)}
    assert s["images_per_s"] == pytest.approx(len(results) / elapsed) and s["server_compute_ms_p50"] == 1.5
    e2e = {
        "settings": {"model": "m", "max_batch_size": 2, "concurrency": 3, "duration_s": 0.2, "api": "v2"},
        "environment": model_result["environment"],
        "rows": [{"level": "l050", "input": "uint8", **s}],
    }
    md = e2e_markdown(e2e, "cmd", model_only=model_result)
    ref = next(t for t in model_result["throughput"] if t["level"] == "l050" and t["batch"] == 2)
    assert f"{ref['images_per_s']:.1f} (batch 2)" in md
