"""The multi-process server (SAIT_API_PROCESSES=2): real processes on loopback.

tritonclient against it; batches that form across API processes; /metrics totals from any
process; shared-memory slots all free again after 10,000 requests; a killed API process is
replaced while the other serves; a killed engine turns every API process to 503 and the server
exits non-zero; SIGTERM under load answers every accepted request and exits 0.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from svc_helpers import JPEG, TINY, jpeg_bytes, metric_value

from bench.loadgen.server import ServerProcess
from bench.throughput_check import infer_body
from service.engine.client import RECORD_DELAY_S
from service.settings import Settings
from service.supervisor import resolve_api_processes

SLOTS = 16
SETTINGS = {
    "MODEL": TINY,
    "DEVICE": "cpu",
    "API_PROCESSES": "2",
    "SHM_SLOTS": str(SLOTS),
    "MAX_BATCH_SIZE": "8",
    "MAX_QUEUE_DELAY_MS": "20",
    "DEFAULT_BUDGET_MS": "60000",
    "IDLE_PROBE_S": "0",
    "TORCH_THREADS": "1",
}
PIXELS = np.random.default_rng(0).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)


@pytest.fixture(scope="module")
def server():
    with ServerProcess(settings=SETTINGS, ready_timeout_s=180) as s:
        deadline = time.monotonic() + 30
        while len(s.processes()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield s


def v2_pixels(client: httpx.Client, **parameters) -> httpx.Response:
    body = {
        "inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "UINT8", "data": PIXELS.ravel().tolist()}],
        "parameters": parameters,
    }
    return client.post(f"/v2/models/{TINY}/infer", json=body)


def metrics(server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=30).text


def wait_until(condition, timeout_s: float, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    return condition()


def test_auto_is_in_process_on_a_cpu():
    assert resolve_api_processes(Settings(device="cpu")) == 0
    assert resolve_api_processes(Settings(device="cpu", api_processes=3)) == 3


def test_the_processes_are_an_engine_and_two_api_processes(server):
    assert set(server.processes()) == {"main", "sait-engine", "sait-api-0", "sait-api-1"}


def test_tritonclient_works_unchanged(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(TINY)
    assert client.get_model_metadata(TINY)["name"] == TINY
    assert client.get_model_config(TINY)["max_batch_size"] == 8
    pixels = triton.InferInput("pixels", [2, 3, 224, 224], "UINT8")
    pixels.set_data_from_numpy(np.repeat(PIXELS, 2, axis=0))
    result = client.infer(TINY, [pixels], parameters={"density": "l050"})
    assert result.as_numpy("probabilities").shape == (2, 1000)
    assert result.get_response()["parameters"]["level"] == "l050"
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([jpeg_bytes()], dtype=object))
    out = triton.InferRequestedOutput("probabilities", class_count=3)
    labels = client.infer(TINY, [image], outputs=[out]).as_numpy("probabilities")
    assert labels.shape == (1, 3)
    stats = client.get_inference_statistics(TINY)["model_stats"][0]
    assert stats["inference_count"] >= 3
    client.close()


def test_batches_form_across_api_processes_and_metrics_add_up(server):
    before = metrics(server)
    requests = 48

    def one(_):
        # A connection of its own each: the kernel spreads them over both API processes.
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return v2_pixels(c, density="dense")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(requests)))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200][:3]
    # Records reach the engine with the next message or within RECORD_DELAY_S: the totals may lag that long.
    wait_until(
        lambda: (
            sum(
                metric_value(metrics(server), "sait_api_requests_total", process=str(i))
                - metric_value(before, "sait_api_requests_total", process=str(i))
                for i in (0, 1)
            )
            >= requests
        ),
        timeout_s=5 * RECORD_DELAY_S,
    )
    after = metrics(server)
    per_process = [
        metric_value(after, "sait_api_requests_total", process=str(i))
        - metric_value(before, "sait_api_requests_total", process=str(i))
        for i in (0, 1)
    ]
    assert sum(per_process) == requests and min(per_process) > 0, per_process  # both processes answered
    batches = metric_value(after, "sait_batch_size_count", level="dense") - metric_value(
        before, "sait_batch_size_count", level="dense"
    )
    assert batches < requests and max(r.json()["parameters"]["batch_size"] for r in answers) > 1
    # One scrape through either process is the whole server's truth.
    ok = metric_value(after, "sait_requests_total", api="v2", level="dense", outcome="ok")
    assert ok - metric_value(before, "sait_requests_total", api="v2", level="dense", outcome="ok") == requests


def test_errors_are_counted_once_wherever_they_happen(server):
    before = metrics(server)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.post("/v1/classify", content=b"not an image", headers=JPEG).status_code == 400  # front end
        assert v2_pixels(c, density="l001").status_code == 400  # engine: unknown level
        assert v2_pixels(c, latency_budget_ms=0.001).status_code == 429  # engine: shed
    time.sleep(2 * RECORD_DELAY_S)  # every record has reached the engine (one connection: one process)
    after = metrics(server)
    delta = {
        outcome: metric_value(after, "sait_requests_total", outcome=outcome)
        - metric_value(before, "sait_requests_total", outcome=outcome)
        for outcome in ("bad_request", "shed")
    }
    assert delta == {"bad_request": 2, "shed": 1}


def test_the_page_and_its_timeline_see_every_api_process(server):
    """The timeline lives in the engine: GET /v1/live through either process counts both."""

    def totals() -> tuple[int, int]:
        samples = httpx.get(f"{server.url}/v1/live", timeout=30).json()["samples"]
        return sum(s["arrived"] for s in samples), sum(s["served"].get("l050", 0) for s in samples)

    assert httpx.get(f"{server.url}/", timeout=30).text.startswith("<!doctype html>")
    assert httpx.get(f"{server.url}/v1/model", timeout=30).json()["levels"][0]["name"] == "dense"
    arrived_before, served_before = totals()
    requests = 24

    def one(_):
        with httpx.Client(base_url=server.url, timeout=60) as c:  # its own connection: either process
            return v2_pixels(c, density="l050").status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(requests))) == [200] * requests
    # Each API process sends its accounting record after answering: it reaches the engine soon after.
    done = wait_until(lambda: totals()[1] - served_before >= requests, 10)
    arrived, served = totals()
    assert done and arrived - arrived_before >= requests and served - served_before == requests


def test_shared_memory_slots_are_all_free_after_10000_requests(server):
    # The cheapest request there is (binary UINT8 pixels, no decoding), so that 10,000 fit the
    # suite; every 50th asks for an unknown level, so the engine's error path releases slots too.
    good, headers = infer_body(TINY, "l040", 1, (3, 224, 224))
    bad, _ = infer_body(TINY, "l001", 1, (3, 224, 224))
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + 240

    def worker(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60, headers=headers) as c:
            for j in range(i, 10_000, 8):
                if time.monotonic() > deadline:
                    return
                r = c.post(f"/v2/models/{TINY}/infer", content=bad if j % 50 == 0 else good)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert sum(statuses.values()) == 10_000, f"only {sum(statuses.values())} requests in 240 s: {statuses}"
    assert statuses == {200: 9800, 400: 200}, statuses
    time.sleep(2 * RECORD_DELAY_S)  # the last records, which carry the free-slot counts
    text = metrics(server)
    assert [metric_value(text, "sait_shm_free_slots", process=str(i)) for i in (0, 1)] == [SLOTS, SLOTS]


def test_a_killed_api_process_is_replaced_and_the_other_serves_on(server):
    victim = server.processes()["sait-api-0"]
    os.kill(victim, signal.SIGKILL)
    served = 0
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for _ in range(20):  # new connections go to the live process at once
            try:
                served += (
                    c.post("/v1/classify", content=jpeg_bytes(), headers={**JPEG, "connection": "close"}).status_code
                    == 200
                )
            except httpx.TransportError:
                pass
    assert served >= 18
    replaced = wait_until(lambda: server.processes().get("sait-api-0", victim) != victim, timeout_s=60)
    assert replaced
    assert wait_until(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200, timeout_s=60)


def test_a_killed_engine_turns_every_api_process_to_503_and_the_server_exits_non_zero():
    with ServerProcess(settings=SETTINGS, ready_timeout_s=180) as s:
        engine = wait_until(lambda: s.processes().get("sait-engine"), timeout_s=30)
        os.kill(engine, signal.SIGKILL)
        killed_at = time.monotonic()

        def unready() -> bool:
            try:
                return httpx.get(f"{s.url}/v2/health/ready", timeout=2).status_code == 503
            except httpx.TransportError:
                return False

        assert wait_until(unready, timeout_s=1.0)
        assert time.monotonic() - killed_at <= 1.0
        answers = []
        for _ in range(6):
            try:
                answers.append(
                    httpx.post(f"{s.url}/v1/classify", content=jpeg_bytes(), headers=JPEG, timeout=5).status_code
                )
            except httpx.TransportError:
                break  # the supervisor has started to stop the API processes
        assert answers and set(answers) == {503}, answers
        assert s.proc.wait(timeout=30) not in (0, None)


def test_sigterm_under_load_answers_every_accepted_request_then_exits_0():
    with ServerProcess(settings={**SETTINGS, "MAX_QUEUE_DELAY_MS": "200"}, ready_timeout_s=180) as s:
        outcomes: list[tuple[float, str]] = []  # (when the request was sent, how it ended)
        stop_at = time.monotonic() + 10

        def load(_):
            with httpx.Client(base_url=s.url, timeout=30) as c:
                while time.monotonic() < stop_at:
                    sent = time.monotonic()
                    try:
                        status = c.post(
                            "/v1/classify", content=jpeg_bytes(), params={"density": "l040"}, headers=JPEG
                        ).status_code
                        outcomes.append((sent, str(status)))
                        if status != 200:
                            return  # the server is draining: a load balancer stops sending here
                    except httpx.TransportError as exc:
                        outcomes.append((sent, type(exc).__name__))
                        return

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            running = [pool.submit(load, i) for i in range(6)]
            time.sleep(3)
            signalled = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            code = s.proc.wait(timeout=60)
            for f in running:
                f.result()
        before = [how for sent, how in outcomes if sent < signalled]
        # Every request sent before SIGTERM was accepted, and every accepted request is answered.
        assert before and set(before) == {"200"}, sorted(set(before))
        assert code == 0


def test_sigterm_with_a_stalled_upload_exits_within_the_drain_bound():
    drain_s = 3.0
    settings = {**SETTINGS, "DRAIN_TIMEOUT_S": str(drain_s), "BODY_TIMEOUT_S": "60", "HEADER_TIMEOUT_S": "60"}
    with ServerProcess(settings=settings, ready_timeout_s=180) as s:
        stalled = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]  # the kernel spreads them
        for sock in stalled:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 100000\r\n\r\n\xff\xd8"
            )
        time.sleep(0.5)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(timeout=drain_s + 30)
        took = time.monotonic() - start
        answers = []
        for sock in stalled:
            sock.settimeout(5)
            answers.append(sock.recv(65536).split(b"\r\n", 1)[0])
            sock.close()
    assert code == 0 and took < drain_s + 2.0, (code, took)
    assert answers == [b"HTTP/1.1 503 Service Unavailable"] * 4, answers
