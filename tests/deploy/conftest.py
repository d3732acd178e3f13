"""Shared fixtures for the deployment tests: the chart rendered by the real Helm engine,
the repository's deploy/ files, and the Prometheus tools from Debian's `prometheus` package."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

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


@pytest.fixture(scope="session")
def chart():
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev dependency) not installed")
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart) -> Callable[..., list[dict[str, Any]]]:
    """render(values) -> the chart's Kubernetes objects, as the Helm engine renders them."""

    def _render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
        objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if not path.endswith((".yaml", ".yml")):
                continue
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return objects

    return _render


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


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")
