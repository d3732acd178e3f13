"""No drift between the deployment and the service: the SAIT_ variables, ports, probe paths
and metric names used by the chart, KServe manifest, Dockerfile, compose file, rules and
dashboard exist in the service's code (service.settings, service.frontend.app, service.engine.metrics,
service.frontend.http_metrics)."""

from __future__ import annotations

import json
import os
import re
import typing

import pytest
import yaml
from deploy_support import (
    CHART_DIR,
    DEPLOY,
    KSERVE,
    METRIC_RE,
    REPO,
    SCENARIOS,
    TARGET_LABELS,
    container,
    contract_metrics,
    load_yaml_docs,
    one,
    promql_sources,
    sample_names,
    selectors,
)

settings_module = pytest.importorskip("service.settings", reason="service not yet landed")
Settings = settings_module.Settings
FIELDS = set(Settings.model_fields)
SERVICE_ENV = {settings_module.ENV_PREFIX + name.upper() for name in FIELDS}
# Set by the chart itself (.Values.weights, containerPort, .Values.auth, .Values.tls,
# .Values.metrics), not through .Values.config.
CHART_OWNED = {"host", "port", "weights", "api_keys_file", "tls_cert_file", "tls_key_file", "metrics_port"}


def deployment_env_names(render) -> dict[str, set[str]]:
    """Every SAIT_ variable each deployment artefact sets, by artefact."""
    names: dict[str, set[str]] = {}
    for scenario, values in SCENARIOS.items():
        objects = render(values)
        env = set(one(objects, "ConfigMap")["data"])
        env |= {e["name"] for e in container(objects).get("env", [])}
        names[f"chart[{scenario}]"] = env
    kserve = load_yaml_docs(KSERVE)
    runtime, isvc = one(kserve, "ServingRuntime"), one(kserve, "InferenceService")
    names["kserve"] = {e["name"] for e in runtime["spec"]["containers"][0]["env"]} | {
        e["name"] for e in isvc["spec"]["predictor"]["model"]["env"]
    }
    names["Dockerfile"] = set(re.findall(r"\b(SAIT_[A-Z_]+)=", (REPO / "Dockerfile").read_text()))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    names["compose"] = set(compose["services"]["sait-serve"]["environment"])
    return {where: {n for n in env if n.startswith("SAIT_")} for where, env in names.items()}


def test_every_sait_variable_is_a_setting(render):
    for where, env in deployment_env_names(render).items():
        assert env, where
        unknown = env - SERVICE_ENV
        assert not unknown, f"{where} sets {sorted(unknown)}, which service.settings.Settings does not read"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_service_accepts_the_rendered_configmap(render, monkeypatch, scenario):
    data = one(render(SCENARIOS[scenario]), "ConfigMap")["data"]
    for name in list(os.environ):
        if name.startswith("SAIT_"):
            monkeypatch.delenv(name)
    for name, value in data.items():
        if name.startswith("SAIT_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    chart_config = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["config"]
    merged = chart_config | SCENARIOS[scenario].get("config", {})
    for key, value in merged.items():
        assert getattr(settings, key) == value, key
    assert settings.host == "0.0.0.0" and settings.port == 8000


def test_chart_schema_covers_every_setting_with_the_same_choices():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    properties = schema["properties"]["config"]["properties"]
    assert set(properties) == FIELDS - CHART_OWNED
    for name, prop in properties.items():
        annotation = Settings.model_fields[name].annotation
        if typing.get_origin(annotation) is typing.Literal:
            assert set(prop["enum"]) == set(typing.get_args(annotation)), name


def test_default_port_is_the_charts_and_the_images():
    assert Settings.model_fields["port"].default == 8000
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["containerPort"] == values["service"]["port"] == 8000
    assert "EXPOSE 8000" in (REPO / "Dockerfile").read_text()


def test_probe_paths_are_routes_of_the_app(render):
    app_module = pytest.importorskip("service.frontend.app", reason="service not yet landed (service.frontend.app)")
    app = app_module.create_app(Settings(model="vit_tiny_test", device="cpu"))
    paths = {getattr(route, "path", None) for route in app.routes}
    c = container(render())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in paths, probe
    kserve = one(load_yaml_docs(KSERVE), "ServingRuntime")["spec"]["containers"][0]
    assert kserve["readinessProbe"]["httpGet"]["path"] in paths
    assert "/metrics" in paths or any(p and p.startswith("/metrics") for p in paths)


def service_metric_families() -> dict[str, tuple[str, set[str]]]:
    """{family: (type, label names)} registered by the engine's Metrics (service/engine/metrics.py)
    and the HTTP layer's HttpMetrics (service/frontend/http_metrics.py): /metrics serves both."""
    metrics_module = pytest.importorskip(
        "service.engine.metrics", reason="service not yet landed (service.engine.metrics)"
    )
    http_module = pytest.importorskip("service.frontend.http_metrics", reason="service.frontend.http_metrics absent")
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    families = {}
    for make in (metrics_module.Metrics, http_module.HttpMetrics):
        registry = CollectorRegistry()
        metrics = make(registry=registry)
        # Families (name, type) as the registry exposes them; label names from the wrappers.
        labels = {m._name: set(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
        found = {family.name: (family.type, labels.get(family.name, set())) for family in registry.collect()}
        assert found and set(labels) <= set(found) and not set(found) & set(families)
        families.update(found)
    return families


def test_every_metric_used_is_registered_by_the_service():
    families = service_metric_families()
    samples = sample_names({name: kind for name, (kind, _) in families.items()})
    used = set()
    for source, exprs in promql_sources().items():
        for expr in exprs:
            for name in METRIC_RE.findall(expr):
                if ":" not in name:
                    assert name in samples, f"{source} uses {name}, which service/engine/metrics.py does not register"
                    used.add(samples[name])
            for name, labels in selectors(expr):
                unknown = labels - families[samples[name]][1] - TARGET_LABELS
                assert not unknown, f"{source}: {name} has no label {sorted(unknown)} in service/engine/metrics.py"
    # The dashboard shows every family the service exports.
    assert used == set(families)


def test_contract_lists_what_the_service_registers():
    families = service_metric_families()
    contract = {name: (kind, labels) for name, (kind, labels) in contract_metrics().items()}
    assert families == contract
