"""The server around the app (service.frontend.server): the shutdown ends within the drain's
bound whatever clients do (issue item 5), and the locked-down posture: TLS, API keys, the
metrics port, no OpenAPI pages, an allowed-Host list."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from svc_helpers import JPEG, TINY, free_port, jpeg_bytes, metric_value, running_server

REPO = Path(__file__).resolve().parents[3]
KEY = "k-" + "a" * 30
OTHER_KEY = "k-" + "b" * 30


def self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl (to make a test certificate) is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("locked")
    cert, key = self_signed(folder)
    keys = folder / "api-keys"
    keys.write_text(f"# one key a line\n{KEY}\n\n{OTHER_KEY}\n")
    metrics_port = free_port()
    with running_server(
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        api_keys_file=str(keys),
        metrics_port=metrics_port,
        openapi=False,
        allowed_hosts="sait.example.com,127.0.0.1",
        default_budget_ms=60_000,
    ) as s:
        s.metrics_url = f"http://127.0.0.1:{metrics_port}"
        s.cert = cert
        yield s


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- TLS and keys -----------------------------------------------------------------------------------
def test_https_with_a_key_serves_and_plain_http_does_not(locked):
    assert locked.url.startswith("https://")
    with httpx.Client(base_url=locked.url, verify=False, timeout=30) as c:
        r = c.post("/v1/classify", content=jpeg_bytes(seed=4), headers={**JPEG, **bearer(OTHER_KEY)})
        assert r.status_code == 200, r.text
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{locked.port}/v2/health/live", timeout=5)


def test_without_a_valid_key_every_route_but_the_probes_is_401(locked):
    rejected = metric_value(
        httpx.get(f"{locked.metrics_url}/metrics").text, "sait_http_rejections_total", reason="unauthorized"
    )
    with httpx.Client(base_url=locked.url, verify=False, timeout=30) as c:
        for headers in ({}, bearer("k-" + "c" * 30), {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}):
            for method, path in (("GET", "/v2"), ("GET", f"/v2/models/{TINY}/config"), ("POST", "/v1/classify")):
                r = c.request(method, path, headers={**JPEG, **headers}, content=b"x" if method == "POST" else None)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]
        assert c.get("/v2/health/live").status_code == 200  # probes need no key
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2", headers=bearer()).status_code == 200
    after = metric_value(
        httpx.get(f"{locked.metrics_url}/metrics").text, "sait_http_rejections_total", reason="unauthorized"
    )
    assert after == rejected + 12


def test_tritonclient_works_over_tls_with_a_key(locked):
    client = triton.InferenceServerClient(
        locked.hostport, ssl=True, ssl_options={"ca_certs": str(locked.cert)}, network_timeout=60
    )
    try:
        assert client.is_server_ready()  # a probe
        x = np.zeros((1, 3, 224, 224), dtype=np.uint8)
        inp = triton.InferInput("pixels", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x, binary_data=True)
        probs = client.infer(TINY, [inp], headers=bearer()).as_numpy("probabilities")
        assert probs.shape == (1, 1000)
    finally:
        client.close()


# -- the metrics port, the OpenAPI switch, the Host list -----------------------------------------------
def test_metrics_are_on_their_own_port_only(locked):
    r = httpx.get(f"{locked.metrics_url}/metrics")
    assert r.status_code == 200
    assert "sait_requests_total" in r.text and "sait_http_open_connections" in r.text
    assert httpx.get(f"{locked.metrics_url}/v2").status_code == 404
    assert httpx.get(f"{locked.url}/metrics", headers=bearer(), verify=False).status_code == 404


def test_openapi_pages_can_be_switched_off(locked):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{locked.url}{path}", headers=bearer(), verify=False).status_code == 404


def test_only_listed_hosts_are_answered(locked):
    with httpx.Client(base_url=locked.url, verify=False, timeout=30) as c:
        assert c.get("/v2", headers={**bearer(), "Host": "sait.example.com"}).status_code == 200
        r = c.get("/v2", headers={**bearer(), "Host": "rebind.attacker.example:8000"})
        assert r.status_code == 400 and "SAIT_ALLOWED_HOSTS" in r.json()["error"]
        assert c.get("/v2/health/ready", headers={"Host": "10.1.2.3:8000"}).status_code == 200  # probes


def test_a_loopback_server_answers_loopback_names_only(server, http):
    # The session server binds 127.0.0.1 with SAIT_ALLOWED_HOSTS=auto.
    for host in ("127.0.0.1", f"127.0.0.1:{server.port}", "localhost", "LOCALHOST:1"):
        assert http.get("/v2", headers={"Host": host}).status_code == 200, host
    r = http.get("/v2", headers={"Host": "attacker.example"})
    assert r.status_code == 400 and "attacker.example" in r.json()["error"]
    r = http.post(
        "/v1/classify", headers={**JPEG, "Host": "attacker.example"}, content=jpeg_bytes(seed=1)
    )  # before any work
    assert r.status_code == 400


# -- item 5: the shutdown is bounded -----------------------------------------------------------------
def test_sigterm_with_a_stalled_upload_exits_within_the_drain_bound(tmp_path):
    drain_s = 3.0
    port = free_port()
    env = {
        **os.environ,
        "SAIT_MODEL": TINY,
        "SAIT_DEVICE": "cpu",
        "SAIT_PORT": str(port),
        "SAIT_DRAIN_TIMEOUT_S": str(drain_s),
        "SAIT_BODY_TIMEOUT_S": "60",  # the drain, not the body timeout, must end the stalled upload
        "SAIT_HEADER_TIMEOUT_S": "60",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    socks = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server not ready in 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n\xff\xd8"
        )
        slow_head = socket.create_connection(("127.0.0.1", port))
        slow_head.sendall(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        idle = socket.create_connection(("127.0.0.1", port))
        socks = [stalled, slow_head, idle]
        time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=drain_s + 30)
        took = time.monotonic() - start
        stalled.settimeout(5)
        answer = stalled.recv(65536)
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log_path.read_text()
    assert returncode == 0, text
    assert took < drain_s + 2.0, (took, text)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert "shut down" in json.loads(body)["error"]
    assert "Traceback" not in text, text
