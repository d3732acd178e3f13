"""SIGTERM drain of a real `python -m service` process: readiness false, new requests refused,
in-flight requests finish, exit code 0."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from svc_helpers import TINY, free_port, jpeg_bytes, metric_value

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SAIT_MODEL": TINY, "SAIT_DEVICE": "cpu", "SAIT_PORT": str(port),
           "SAIT_MAX_BATCH_SIZE": "32", "SAIT_DEFAULT_BUDGET_MS": "60000",
           # In-flight requests wait 1.5 s for a fuller batch: long enough to SIGTERM them mid-way.
           "SAIT_MAX_QUEUE_DELAY_MS": "1500", "SAIT_DRAIN_TIMEOUT_S": "30"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "server not ready in 120 s"
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            payload = jpeg_bytes(seed=2)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                inflight = [pool.submit(httpx.post, f"{url}/v1/classify", content=payload, timeout=60) for _ in range(4)]
                wait_until = time.monotonic() + 20
                while metric_value(client.get("/metrics").text, "sait_inflight_requests") < 4:
                    assert time.monotonic() < wait_until, "requests never got in flight"
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                assert client.get("/v2/health/ready").status_code == 503
                late = client.post("/v1/classify", content=payload)
                assert late.status_code == 503 and "shutting down" in late.json()["error"]
                results = [f.result(timeout=60) for f in inflight]
        assert [r.status_code for r in results] == [200] * 4
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_failed_warm_up_never_turns_ready_and_liveness_fails():
    import threading

    import uvicorn

    from models import load_model
    from service.app import create_app
    from service.engine import Engine
    from service.runner import create_runner
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
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=port,
                                           log_level="critical"))
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
            r = client.post("/v1/classify", content=b"x")
            assert r.status_code == 503 and "not ready" in r.json()["error"]
    finally:
        server.should_exit = True
        thread.join(30)
