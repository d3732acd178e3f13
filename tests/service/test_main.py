"""`python -m service`: start-up errors are one line and exit 2; SIGTERM drains, then exit 0."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from svc_helpers import JPEG, TINY, free_port, jpeg_bytes, metric_value

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SAIT_MODEL": TINY,
        "SAIT_DEVICE": "cpu",
        "SAIT_PORT": str(port),
        "SAIT_MAX_BATCH_SIZE": "32",
        "SAIT_DEFAULT_BUDGET_MS": "60000",
        # In-flight requests wait 1.5 s for a fuller batch: long enough to SIGTERM them mid-way.
        "SAIT_MAX_QUEUE_DELAY_MS": "1500",
        "SAIT_DRAIN_TIMEOUT_S": "30",
    }
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
                inflight = [
                    pool.submit(httpx.post, f"{url}/v1/classify", content=payload, headers=JPEG, timeout=60)
                    for _ in range(4)
                ]
                wait_until = time.monotonic() + 20
                while metric_value(client.get("/metrics").text, "sait_inflight_requests") < 4:
                    assert time.monotonic() < wait_until, "requests never got in flight"
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                assert client.get("/v2/health/ready").status_code == 503
                late = client.post("/v1/classify", content=payload, headers=JPEG)
                assert late.status_code == 503 and "shutting down" in late.json()["error"]
                results = [f.result(timeout=60) for f in inflight]
        assert [r.status_code for r in results] == [200] * 4
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def _run_cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=120, env=env
    )


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


def test_cli_card_for_other_weights_exits_with_one_line(capsys, tmp_path, tiny_model):
    from safetensors.torch import save_file

    from models.card import card_beside
    from service.__main__ import main

    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.timm_model.state_dict().items()}, str(weights))
    card_beside(weights).write_text(
        '{"model": "vit_tiny_test", "weights_sha256": "' + "0" * 64 + '", "levels": '
        '[{"name": "dense", "gflops": 0.1, "gflops_ratio": 1.0, "top1": 80.0}]}'
    )
    assert main(["--model", "vit_tiny_test", "--weights", str(weights)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "measured with weights sha256 000000000000" in lines[0]
    assert "SAIT_LEVEL_CARD=none" in lines[0]


def test_cli_unusable_keys_or_tls_files_exit_with_one_line(capsys, tmp_path):
    from service.__main__ import main

    keys = tmp_path / "keys"
    keys.write_text("too-short\n")
    for argv, message in [
        (["--api-keys-file", str(keys)], "SAIT_API_KEYS_FILE"),
        (["--tls-cert-file", str(tmp_path / "c.pem"), "--tls-key-file", str(tmp_path / "k.pem")], "SAIT_TLS"),
    ]:
        assert main(["--model", "vit_tiny_test", "--device", "cpu", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
