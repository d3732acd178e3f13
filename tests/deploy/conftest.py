"""Fixtures for the deployment tests: the chart rendered by the real Helm engine and promtool
from Debian's `prometheus` package. Helpers live in deploy_support.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from deploy_support import CHART_DIR, NAMESPACE, RELEASE, tool


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


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")
