"""The app: lifespan (warm-up in a thread; a failed warm-up never turns ready), routes outside the two APIs, metrics."""

from __future__ import annotations

import base64
import concurrent.futures
import time

import httpx
from svc_helpers import JPEG, TINY, free_port, jpeg_bytes, metric_value


def test_failed_warm_up_never_turns_ready_and_liveness_fails():
    import threading

    import uvicorn

    from models import load_model
    from service.device.factory import create_runner
    from service.engine.core import Engine
    from service.frontend.app import create_app
    from service.settings import Settings

    class BrokenRunner:
        def __init__(self, runner):
            self.inner = runner
            self.device = runner.device

        def warmup(self):
            raise RuntimeError("CUDA out of memory (simulated)")

    port = free_port()
    settings = Settings(model=TINY, device="cpu", port=port)
    model = load_model(TINY)
    runner = BrokenRunner(create_runner(model, device="cpu", cuda_graphs=False, max_batch_size=2))
    engine = Engine(settings=settings, model=model, runner=runner, card=None)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 60
            while engine.failed is None:
                assert time.monotonic() < deadline, "warm-up failure not reported"
                time.sleep(0.05)
            assert "simulated" in engine.failed
            assert client.get("/v2/health/ready").status_code == 503
            assert client.get("/v2/health/live").status_code == 503
            r = client.post("/v1/classify", content=b"x", headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 503 and "not ready" in r.json()["error"]
    finally:
        server.should_exit = True
        thread.join(30)


def test_unknown_route_is_a_json_error(http):
    r = http.get("/v3/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_concurrent_requests_form_batches(server, http):
    payload = jpeg_bytes(seed=9)
    before = server.engine.worker.batches_run

    def one(_):
        return httpx.post(
            f"{server.url}/v1/classify", content=payload, params={"density": "dense"}, headers=JPEG, timeout=60
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(16)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    sizes = [r.json()["batch_size"] for r in responses]
    batches = server.engine.worker.batches_run - before
    assert max(sizes) > 1 and batches < 16, (sizes, batches)


def test_metric_families(http):
    # One request of each kind, so that the counters below hold whatever ran before.
    photo = jpeg_bytes(seed=4)
    assert http.post("/v1/classify", content=photo, params={"density": "dense"}, headers=JPEG).status_code == 200
    v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(photo).decode()]}]}
    assert http.post(f"/v2/models/{TINY}/infer", json=v2).status_code == 200
    assert http.post("/v1/classify", content=b"not an image", headers=JPEG).status_code == 400
    text = http.get("/metrics").text
    for family in (
        "sait_requests_total",
        "sait_request_duration_seconds_bucket",
        "sait_queue_duration_seconds_bucket",
        "sait_compute_duration_seconds_bucket",
        "sait_batch_size_bucket",
        "sait_deadline_total",
        "sait_queue_depth",
        "sait_level_chosen_total",
        "sait_ready",
        "sait_inflight_requests",
        "sait_cuda_graph_capture_seconds",
        "sait_cuda_graph_memory_bytes",
        "sait_arrival_rate_images_per_second",
    ):
        assert f"\n{family}" in text, family
    assert metric_value(text, "sait_ready") == 1.0
    assert metric_value(text, "sait_requests_total", api="v1", outcome="ok") > 0
    assert metric_value(text, "sait_requests_total", api="v2", outcome="ok") > 0
    assert metric_value(text, "sait_requests_total", level="none", outcome="bad_request") > 0
    assert metric_value(text, "sait_level_chosen_total", reason="density") > 0
    assert metric_value(text, "sait_deadline_total", result="met") > 0
    assert "sait_gpu_memory_used_bytes{" not in text  # CUDA only
