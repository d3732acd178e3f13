"""End to end on loopback: the real service (tiny random ViT on CPU) scraped by a real
Prometheus server (Debian's package) running the repository's scrape job and rules. Traffic
goes in; Prometheus' HTTP API must show the service's metrics, the HPA's recording rule and
the prometheus-adapter query moving, and answer every dashboard query."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    ADAPTER_VALUES,
    METRIC_RE,
    REPO,
    container,
    dashboard_exprs,
    grafana_to_promql,
    one,
    recorded_names,
    simulated_pod_scrape_config,
    tool,
)

httpx = pytest.importorskip("httpx")
pytest.importorskip("service.frontend.app", reason="service not yet landed (service.frontend.app)")
server_module = pytest.importorskip("bench.loadgen.server")

NAMESPACE, POD = "e2e", "sait-serve-e2e-0"
HPA_RULE = "sait:queue_wait_seconds:mean1m"
SELECTOR = f'{{namespace="{NAMESPACE}",pod="{POD}"}}'


def wait_for(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Poll check() every 0.25 s until it returns something truthy; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


class PrometheusServer:
    """`prometheus` on 127.0.0.1 with a config file, its data in a temp directory.

    Args:
        config: the Prometheus configuration to run.
        workdir: where the config, the TSDB and the log go.
    """

    def __init__(self, *, config: dict[str, Any], workdir: Path) -> None:
        self.port = server_module.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrometheusServer:
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self._ready, timeout_s=30, what="Prometheus /-/ready")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited: {self.log_tail()}")
        try:
            return httpx.get(self.url + "/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(self.url + "/api/v1/" + path, params=params, timeout=5)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def scalar(self, expr: str) -> float | None:
        """The one sample's value of an instant query, None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def log_tail(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def jpeg_bytes(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def send_burst(url: str, *, requests: int, concurrency: int) -> int:
    """POST /v1/classify `requests` times from `concurrency` threads; returns how many got 200.

    429 (shed) and 504 (deadline passed in the queue) are legitimate answers on a loaded
    machine; anything else fails the test."""
    images = [jpeg_bytes(i) for i in range(4)]

    def one(i: int) -> int:
        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.post(
                "/v1/classify", content=images[i % len(images)], headers={"content-type": "image/jpeg"}
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        statuses = list(pool.map(one, range(requests)))
    assert set(statuses) <= {200, 429, 504}, statuses
    return statuses.count(200)


def adapter_query() -> str:
    """The PromQL prometheus-adapter sends for the HPA's metric, for this test's pod."""
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    (series,) = METRIC_RE.findall(rule["seriesQuery"])
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
        .replace("<<.GroupBy>>", "pod")
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(service, prometheus), both running; stopped after the module's tests."""
    tool("prometheus")
    workdir = tmp_path_factory.mktemp("e2e")
    service = server_module.ServerProcess(
        # fixed:dense keeps one level series, so the warm-up burst creates every series.
        settings={
            "MODEL": "vit_tiny_test",
            "DEVICE": "cpu",
            "DRAIN_TIMEOUT_S": "2",
            "POLICY": "fixed:dense",
            "MAX_QUEUE_DELAY_MS": "5",
            "MAX_BATCH_SIZE": "8",
        },
        ready_timeout_s=120,
        log_path=workdir / "service.log",
    )
    config = simulated_pod_scrape_config(address=f"127.0.0.1:{service.port}", namespace=NAMESPACE, pod=POD)
    # Short intervals keep the test within seconds; everything else is the repository's.
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    prometheus = PrometheusServer(config=config, workdir=workdir)
    try:
        service.start()
        prometheus.start()
        yield service, prometheus
    finally:
        prometheus.stop()
        service.stop(timeout_s=15)


def test_scrape_job_finds_the_pod_and_rules_load(stack):
    service, prometheus = stack

    def healthy_target():
        targets = prometheus.api("targets")["activeTargets"]
        return [t for t in targets if t["health"] == "up"]

    (target,) = wait_for(healthy_target, timeout_s=15, what="the sait-serve target to be up")
    # The relabelling replaced the discovered port with the prometheus.io/port annotation's.
    assert target["scrapeUrl"] == f"{service.url}/metrics"
    assert target["labels"]["namespace"] == NAMESPACE and target["labels"]["pod"] == POD
    assert target["labels"]["job"] == "sait-serve"
    groups = prometheus.api("rules")["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert recorded_names() <= loaded
    assert {"SaitDeadlineMissBurnRateFast", "SaitShedding", "SaitNotReady"} <= loaded
    wait_for(lambda: prometheus.scalar(f"sait_ready{SELECTOR}") == 1.0, timeout_s=10, what="sait_ready == 1")


def test_traffic_moves_the_metrics_and_the_hpa_signal(stack):
    service, prometheus = stack
    wait_for(lambda: prometheus.scalar(f"up{SELECTOR}") == 1.0, timeout_s=15, what="a first scrape")
    # One warm-up request: a labelled series first appears with its count already 1, and
    # rate() sees no increase in a series' first sample, so the HPA signal still reads 0. (A
    # larger warm-up could straddle a scrape and move it already.) The measured burst comes
    # after Prometheus has scraped the series once.
    count_expr = f"sum(sait_queue_duration_seconds_count{SELECTOR})"
    assert send_burst(service.url, requests=1, concurrency=1) == 1
    wait_for(lambda: prometheus.scalar(count_expr), timeout_s=15, what="the warm-up request to be scraped")
    wait_for(
        lambda: prometheus.scalar(HPA_RULE + SELECTOR) is not None, timeout_s=10, what=f"{HPA_RULE} to be evaluated"
    )
    assert prometheus.scalar(HPA_RULE + SELECTOR) == 0.0

    requests_expr = f'sum(sait_requests_total{{namespace="{NAMESPACE}",pod="{POD}",outcome="ok"}})'
    before = prometheus.scalar(requests_expr)
    ok = send_burst(service.url, requests=48, concurrency=8)
    assert ok > 0
    # Counters move by exactly what the client saw answered.
    wait_for(
        lambda: prometheus.scalar(requests_expr) >= before + ok,
        timeout_s=15,
        what=f"sait_requests_total to grow by {ok}",
    )
    assert prometheus.scalar(requests_expr) == before + ok

    # The recording rule behind the HPA moves from 0 to the mean queue wait of the burst.
    queue_wait = wait_for(lambda: prometheus.scalar(HPA_RULE + SELECTOR), timeout_s=15, what=f"{HPA_RULE} > 0")
    assert 0 < queue_wait < 30 and math.isfinite(queue_wait)
    # prometheus-adapter's query for the HPA returns it for this pod.
    served = prometheus.query(adapter_query())
    assert [s["metric"] for s in served] == [{"pod": POD}]
    assert float(served[0]["value"][1]) > 0

    goodput = wait_for(
        lambda: prometheus.scalar(f"sait:goodput:rate1m{SELECTOR}"), timeout_s=10, what="sait:goodput:rate1m > 0"
    )
    assert goodput > 0
    attainment = prometheus.scalar(f'sait:deadline_attainment:ratio_rate5m{{namespace="{NAMESPACE}"}}')
    assert attainment is not None and 0 < attainment <= 1
    levels = prometheus.query(f'sait:requests_by_level:rate1m{{namespace="{NAMESPACE}"}}')
    assert [s["metric"]["level"] for s in levels if float(s["value"][1]) > 0] == ["dense"]


def test_every_dashboard_query_runs(stack):
    _, prometheus = stack
    for expr in dashboard_exprs():
        prometheus.query(grafana_to_promql(expr))


def test_chart_probes_and_image_healthcheck_pass_on_the_running_service(stack, render):
    service, _ = stack
    c = container(render())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        response = httpx.get(service.url + c[probe]["httpGet"]["path"], timeout=5)
        assert response.status_code == 200, probe
    # The Dockerfile's HEALTHCHECK command, verbatim, with the service's SAIT_PORT.
    (line,) = re.findall(r"^\s+CMD (\[.*\])$", (REPO / "Dockerfile").read_text(), re.M)
    command = json.loads(line)
    assert command[0] == "python"
    env = {**os.environ, "SAIT_PORT": str(service.port)}
    result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    # ... and it fails when nothing answers (a port nobody listens on).
    env["SAIT_PORT"] = str(server_module.free_port())
    result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode != 0
    # Scraping is what the pod annotations promise.
    annotations = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    metrics = httpx.get(service.url + annotations["prometheus.io/path"], timeout=5)
    assert metrics.status_code == 200 and "sait_ready 1.0" in metrics.text


def test_helm_test_hook_passes_against_the_running_service(stack, render):
    service, _ = stack
    objects = render({"config": {"model": "vit_tiny_test"}})
    (hook,) = [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    (c,) = hook["spec"]["containers"]
    assert c["command"] == ["python", "-c"]
    service_dns = (
        f"http://{one(objects, 'Service')['metadata']['name']}:{one(objects, 'Service')['spec']['ports'][0]['port']}"
    )
    script = c["args"][0]
    assert service_dns in script
    result = subprocess.run(
        [sys.executable, "-c", script.replace(service_dns, service.url)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "ready: vit_tiny_test" in result.stdout
