"""yamllint over every YAML file of deploy/ and the chart's values, and the structure of the
Grafana dashboard, the compose file and the KServe manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import DASHBOARD, DEPLOY, KSERVE, REPO, load_yaml_docs, one

YAMLLINT_CONFIG = Path(__file__).with_name("yamllint.yml")


def test_yamllint_is_clean():
    pytest.importorskip("yamllint")
    targets = [DEPLOY, REPO / "helm" / "values.yaml", REPO / "helm" / "Chart.yaml"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-f",
            "parsable",
            "-c",
            str(YAMLLINT_CONFIG),
            *map(str, targets),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_grafana_json_with_unique_panels():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "sait-serve" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dash["panels"]}
    # What the dashboard is for (issue 5): each must have a panel.
    for needed in (
        "Goodput",
        "Deadline attainment",
        "Requests by level (share)",
        "Request latency percentiles",
        "Mean batch size by level",
        "Queue depth by level",
        "GPU memory used",
        "GPU utilization",
    ):
        assert needed in titles
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_compose_mounts_files_that_exist():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"sait-serve", "prometheus", "grafana"}
    build = services["sait-serve"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            host, _container_path = volume.split(":")[:2]
            assert (DEPLOY / host).exists(), f"{service} mounts missing {host}"
    config = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    assert (DEPLOY / "prometheus" / Path(config.split("=", 1)[1]).name).exists()
    # Prometheus reaches the service by its compose name and the contract's port.
    local = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-local.yml").read_text())
    assert local["scrape_configs"][0]["static_configs"][0]["targets"] == ["sait-serve:8000"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_kserve_inference_service_speaks_v2_with_the_runtime():
    docs = load_yaml_docs(KSERVE)
    runtime = one(docs, "ServingRuntime")
    isvc = one(docs, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in c["env"]} | {e["name"]: e["value"] for e in model["env"]}
    assert int(env["SAIT_PORT"]) == c["ports"][0]["containerPort"] == c["readinessProbe"]["httpGet"]["port"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # /v2/models/{name} is the InferenceService's name.
    assert env["SAIT_SERVED_MODEL_NAME"] == isvc["metadata"]["name"]
    assert env["SAIT_WEIGHTS"].startswith("/mnt/models/")


def test_kserve_hpa_validates_and_targets_the_predictor():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = load_yaml_docs(KSERVE)
    hpa = one(docs, "HorizontalPodAutoscaler")
    kubernetes_validate.validate(hpa, kubernetes_validate.latest_version(), strict=True)
    isvc = one(docs, "InferenceService")
    assert hpa["spec"]["scaleTargetRef"]["name"] == isvc["metadata"]["name"] + "-predictor"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    chart_values = yaml.safe_load((REPO / "helm" / "values.yaml").read_text())
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == chart_values["autoscaling"]["metricName"]
