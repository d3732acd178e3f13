"""Helpers shared by the deployment tests: repository paths, chart scenarios, PromQL name
extraction, the contract's tables, and the scrape config the end-to-end test runs.

A module of its own, not conftest.py, so that `from deploy_support import ...` cannot pick up
another directory's conftest."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm"
DEPLOY = REPO / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sait-serve.json"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
KSERVE = DEPLOY / "kserve" / "inferenceservice.yaml"
RELEASE = "demo"
NAMESPACE = "ml"

# Chart values exercised by the tests: defaults and the non-default cases users deploy.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu-off": {"gpu": {"enabled": False}, "config": {"device": "cpu", "precision": "fp32"}},
    "autoscaling": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}},
    "pvc-weights": {
        "weights": {"source": "pvc", "pvc": {"existingClaim": "sait-weights", "path": "deit/model.safetensors"}}
    },
    "hf-cache-claim": {"weights": {"hfCache": {"existingClaim": "hf-cache", "offline": True}}},
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "sait.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "sait-tls", "hosts": ["sait.example.com"]}],
        }
    },
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}}},
    "secure": {
        "auth": {"enabled": True, "existingSecret": "sait-api-keys"},
        "tls": {"enabled": True, "existingSecret": "sait-tls"},
        "metrics": {"port": 9090},
        "serviceMonitor": {"enabled": True},
        "config": {"openapi": False, "max_connections": 256},
    },
    "scheduling": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "sait-serve"}},
                        },
                    }
                ]
            }
        },
    },
}

# Metric names in PromQL: the service's own (sait_*) and recording rules (sait:*).
METRIC_RE = re.compile(r"\b(sait_[a-z0-9_]+|sait:[a-z0-9_:]+)\b")


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, panels and template variables."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            # label_values(metric, label) is Grafana's, not PromQL: keep the metric selector.
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
            exprs.append(match.group(1) if match else var["definition"])
    return exprs


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables by values Prometheus accepts."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package `prometheus`; .ci/system-deps installs it)")
    return path


# Labels Prometheus or the scrape config attach, not the service.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "le"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def sample_names(families: dict[str, str]) -> dict[str, str]:
    """{family: type} -> {sample name as PromQL sees it: family}."""
    return {family + suffix: family for family, kind in families.items() for suffix in SUFFIXES[kind]}


def contract_metrics() -> dict[str, tuple[str, set[str]]]:
    """docs/contract.md's metrics table: {family: (type, labels)}."""
    rows = re.findall(r"^\| `(sait_\w+)` \| (\w+) \|(.*)\|$", (REPO / "docs" / "contract.md").read_text(), re.M)
    # prometheus-client names a counter's family without `_total` and its sample with it.
    return {
        name.removesuffix("_total") if kind == "counter" else name: (kind, set(re.findall(r"`(\w+)`", labels)))
        for name, kind, labels in rows
    }


def contract_settings() -> set[str]:
    """The SAIT_ variables named in docs/contract.md's settings table."""
    text = (REPO / "docs" / "contract.md").read_text()
    return set(re.findall(r"`(SAIT_[A-Z_]+)`", text))


def promql_sources() -> dict[str, list[str]]:
    """Every PromQL expression the deployment uses, by where it comes from."""
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    return {
        "rules": [r["expr"] for g in rule_groups() for r in g["rules"]],
        "dashboard": dashboard_exprs(),
        "adapter": [rule["seriesQuery"] for rule in adapter["rules"]["custom"]],
    }


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched) for each `metric{...}` selector in a PromQL expression."""
    found = []
    for name, body in re.findall(r"\b(sait_[a-z0-9_]+)\{([^}]*)\}", expr):
        found.append((name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))))
    return found


def simulated_pod_scrape_config(*, address: str, namespace: str, pod: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with Kubernetes pod discovery replaced by one static
    target carrying the labels discovery would attach for a chart-rendered pod, so that the
    real relabelling rules run (Debian's Prometheus is built without Kubernetes discovery)."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    host = address.rsplit(":", 1)[0]
    port = address.rsplit(":", 1)[1]
    (job,) = config["scrape_configs"]
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [
        {
            # Discovery reports the pod IP with the first container port; the relabelling
            # replaces the port with the prometheus.io/port annotation's.
            "targets": [f"{host}:1"],
            "labels": {
                "__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_pod_name": pod,
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "sait-serve",
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
                "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
                "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            },
        }
    ]
    config["rule_files"] = [str(RULES_DIR / "*.yml")]
    return config
